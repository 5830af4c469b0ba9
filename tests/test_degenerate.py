"""Degenerate runs (issue 17 part 7): dev predictions that are all one class, or constant for regression, are
flagged in every evaluation record, in metrics.json (best and last), in the log and in the report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import run_in_process

from subspace_tuning import metrics
from subspace_tuning.metrics import degenerate_text, prediction_summary

LABELS = np.array([0, 1, 1, 0, 1, 0, 0, 0])


# --- detection on constructed predictions ---------------------------------------------------------------------
def test_all_one_class_is_degenerate_and_names_the_class():
    summary = prediction_summary(np.full(8, 1), LABELS, regression=False)
    assert summary == {"degenerate": True, "majority_class": 1, "majority_share": 1.0, "label_majority_share": 0.625}
    assert "every dev prediction is class 1" in degenerate_text(summary)


def test_one_prediction_of_another_class_is_not_degenerate():
    predictions = np.array([0, 0, 0, 0, 0, 0, 0, 2])
    assert prediction_summary(predictions, LABELS, regression=False) == {
        "degenerate": False, "majority_class": 0, "majority_share": 0.875, "label_majority_share": 0.625}


@pytest.mark.parametrize(("noise", "degenerate"), [(0.0, True), (1e-6, True), (1e-2, False)])
def test_regression_is_degenerate_when_constant_to_a_thousandth_of_the_label_spread(noise, degenerate):
    labels = np.linspace(0.0, 5.0, 50)  # std 1.47: the threshold is 1.47e-3
    predictions = 2.5 + noise * np.sin(np.arange(50))
    summary = prediction_summary(predictions, labels, regression=True)
    assert summary["degenerate"] is degenerate
    assert summary["prediction_std"] == pytest.approx(float(np.std(predictions)))
    assert "constant" in degenerate_text({"prediction_std": 0.0})


# --- a run: evaluate -> Recipe.evaluate -> Run.log_eval -> metrics.json, train_log.jsonl and the log -----------
def test_a_run_predicting_one_class_is_flagged(tmp_path: Path, monkeypatch, caplog):
    real = metrics.predictions_from_logits
    monkeypatch.setattr(metrics, "predictions_from_logits", lambda logits: np.zeros_like(real(logits)))
    with caplog.at_level(logging.INFO, logger="subspace_tuning"):
        result = run_in_process(tmp_path, ["method=lora", "train.max_steps=4", "train.eval_steps=2"])
    assert result["status"] == "completed"
    assert result["degenerate"] == {"best": True, "last": True}
    for record in result["history"]:
        assert record["degenerate"] is True
        assert {k: record["predictions"][k] for k in ("majority_class", "majority_share")} == {
            "majority_class": 0, "majority_share": 1.0}
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["degenerate"] == {"best": True, "last": True}
    assert on_disk["last"]["predictions"]["majority_class"] == 0
    log_lines = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [line["degenerate"] for line in log_lines] == [True, True]
    warnings = [r.getMessage() for r in caplog.records if "DEGENERATE at step" in r.getMessage()]
    assert len(warnings) == 2 and "every dev prediction is class 0" in warnings[-1]
    (done,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done:")]
    assert "(DEGENERATE best/last: one class or a constant on dev" in done


def test_a_run_with_mixed_predictions_is_not_flagged(tmp_path: Path, monkeypatch):
    # the tiny random-init model predicts one class on this task whatever it is trained with (that is what the flag
    # is for), so the predictions are made to alternate: 3 of 4 dev examples class 1
    real = metrics.predictions_from_logits
    monkeypatch.setattr(metrics, "predictions_from_logits",
                        lambda logits: (np.arange(len(real(logits))) % 4 != 0).astype(int))
    result = run_in_process(tmp_path, ["method=lora", "train.max_steps=2"])
    last = result["last"]
    assert last["degenerate"] is False and result["degenerate"] == {"best": False, "last": False}
    assert {k: last["predictions"][k] for k in ("majority_class", "majority_share")} == {
        "majority_class": 1, "majority_share": 0.75}
    assert 0.5 <= last["predictions"]["label_majority_share"] <= 1  # the dev labels' own majority (the baseline)
    assert all(type(value) is float for value in last["scores"].values())
