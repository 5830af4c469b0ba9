"""SSL (the paper's new Mode 2 method): learned scaling of the input features of W."""

from __future__ import annotations

from ..base import register
from .scaling import IN, ScalingMethod


@register
class SSL(ScalingMethod):
    """phi(W) = W diag(l), l starting at 1, on key, value and the FFN input projection (intermediate.dense).
    Trainable per module: in_features."""

    name = "ssl"
    display_name = "SSL"
    paper_order = 40
    sides = {"key": IN, "value": IN, "ffn_in": IN}
