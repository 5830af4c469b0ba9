"""GLUE metrics with scikit-learn and scipy (``evaluate.load("glue")`` needs the Hub).

Conventions: CoLA Matthews correlation; STS-B Pearson and Spearman; MRPC and QQP accuracy and F1 of
the positive class; accuracy elsewhere. Scores are fractions in [0, 1] (correlations in [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .errors import ConfigError, choices_message


def _correlation(fn: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(predictions: np.ndarray, labels: np.ndarray) -> float:
        if np.std(predictions) == 0 or np.std(labels) == 0:
            return 0.0  # undefined for constant input; a collapsed model scores 0, not NaN
        return float(fn(predictions, labels)[0])

    return score


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: float(accuracy_score(y, p)),
    "f1": lambda p, y: float(f1_score(y, p)),
    "matthews": lambda p, y: float(matthews_corrcoef(y, p)),
    "pearson": _correlation(pearsonr),
    "spearman": _correlation(spearmanr),
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
