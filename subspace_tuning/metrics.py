"""GLUE metrics with scikit-learn and scipy (``evaluate.load("glue")`` needs the Hub).

Conventions: CoLA Matthews correlation; STS-B Pearson and Spearman; MRPC and QQP accuracy and F1 of
the positive class; accuracy elsewhere. Scores are fractions in [0, 1] (correlations in [-1, 1]).

``prediction_summary`` says whether an evaluation's predictions were degenerate (one class, or constant): such a
run scores its trivial baseline, and the runner records it (``train.Run.log_eval``) so that the report marks it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError, choices_message

# scipy and scikit-learn are imported where a metric needs them: about a second of every run's start-up otherwise,
# and accuracy needs neither.


def _correlation(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(predictions: np.ndarray, labels: np.ndarray) -> float:
        import scipy.stats

        if np.std(predictions) == 0 or np.std(labels) == 0:
            return 0.0  # undefined for constant input; a collapsed model scores 0, not NaN
        return float(getattr(scipy.stats, name)(predictions, labels)[0])

    return score


def _sklearn(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(predictions: np.ndarray, labels: np.ndarray) -> float:
        import sklearn.metrics

        return float(getattr(sklearn.metrics, name)(labels, predictions))

    return score


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: float(np.mean(np.asarray(p) == np.asarray(y))),
    "f1": _sklearn("f1_score"),
    "matthews": _sklearn("matthews_corrcoef"),
    "pearson": _correlation("pearsonr"),
    "spearman": _correlation("spearmanr"),
}


def check_metrics(names: Sequence[str]) -> None:
    for name in names:
        if name not in METRICS:
            raise ConfigError(choices_message("metric", name, list(METRICS)))


def predictions_from_logits(logits: np.ndarray) -> np.ndarray:
    """Class ids for classification, the single output for regression."""
    return logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1)


def compute_metrics(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: METRICS[name](predictions, labels) for name in names}


# --- degenerate predictions ------------------------------------------------------------------------
# A regression model is "constant" when its predictions spread less than this fraction of the labels' spread:
# float round-off keeps a collapsed network's outputs from being exactly equal.
CONSTANT_RELATIVE_STD = 1e-3


def prediction_summary(predictions: np.ndarray, labels: np.ndarray, regression: bool) -> dict[str, Any]:
    """Whether the predictions are degenerate, with the number that says so.

    Classification: degenerate when every prediction is one class (``majority_class`` and its share of the
    predictions, ``majority_share``); such a model scores exactly the majority-class (or constant) baseline, so
    its score says nothing about what it learned (issue 17, part 7). ``label_majority_share``: the most frequent
    label's share of the split, that baseline's accuracy (the study's trivial baseline). Regression: degenerate
    when the predictions' standard deviation (``prediction_std``) is below ``CONSTANT_RELATIVE_STD`` of the
    labels' (0 when the labels are constant too)."""
    predictions = np.asarray(predictions)
    if predictions.size == 0:
        return {"degenerate": False}
    if regression:
        spread = float(np.std(predictions))
        return {"degenerate": bool(spread <= CONSTANT_RELATIVE_STD * float(np.std(labels))),
                "prediction_std": spread}
    classes, counts = np.unique(predictions, return_counts=True)
    top = int(counts.argmax())
    return {"degenerate": len(classes) == 1, "majority_class": int(classes[top]),
            "majority_share": float(counts[top]) / len(predictions),
            "label_majority_share": float(np.unique(np.asarray(labels), return_counts=True)[1].max()) / len(labels)}


def degenerate_text(summary: dict[str, Any]) -> str:
    """One phrase for logs and reports: what made a ``prediction_summary`` degenerate."""
    if "majority_class" in summary:
        return (f"every dev prediction is class {summary['majority_class']}, so the score is the majority-class "
                f"baseline, not a learned result")
    return (f"the dev predictions are constant (std {summary.get('prediction_std', 0.0):.3g}), so the score is "
            f"the constant baseline, not a learned result")
