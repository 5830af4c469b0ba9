"""GLUE metrics against values computed by hand."""

import math

import numpy as np
import pytest

from subspace_tuning.errors import ConfigError
from subspace_tuning.metrics import check_metrics, compute_metrics, predictions_from_logits


def test_accuracy_and_f1_by_hand():
    predictions, labels = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    scores = compute_metrics(["accuracy", "f1"], predictions, labels)
    # tp=2 fp=1 fn=1: precision 2/3, recall 2/3
    assert scores == pytest.approx({"accuracy": 3 / 5, "f1": 2 / 3})


def test_matthews_by_hand():
    predictions, labels = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics(["matthews"], predictions, labels)["matthews"] == pytest.approx(expected)


def test_pearson_and_spearman_by_hand():
    predictions, labels = np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.0, 3.0, 2.0, 4.0])
    p, y = predictions - predictions.mean(), labels - labels.mean()
    pearson = (p @ y) / math.sqrt((p @ p) * (y @ y))
    # ranks 1,2,3,4 vs 1,3,2,4: d^2 = 0+1+1+0, rho = 1 - 6*2 / (4*15)
    scores = compute_metrics(["pearson", "spearman"], predictions, labels)
    assert scores == pytest.approx({"pearson": pearson, "spearman": 1 - 12 / 60})


def test_constant_predictions_give_zero_correlation_not_nan():
    assert compute_metrics(["pearson"], np.ones(4), np.arange(4.0))["pearson"] == 0.0


def test_predictions_from_logits():
    assert predictions_from_logits(np.array([[0.1, 0.9], [2.0, -1.0]])).tolist() == [1, 0]
    assert predictions_from_logits(np.array([[3.5], [1.0]])).tolist() == [3.5, 1.0]


def test_unknown_metric_lists_choices():
    with pytest.raises(ConfigError, match="unknown metric 'bleu'; choose one of: accuracy, f1"):
        check_metrics(["bleu"])
