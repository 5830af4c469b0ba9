"""SSB (the paper's new Mode 2 method): learned scaling of both the input and the output features of W."""

from __future__ import annotations

from ..base import register
from .scaling import BOTH, ScalingMethod


@register
class SSB(ScalingMethod):
    """phi(W) = diag(l_out) W diag(l_in), both starting at 1, on key, value and the FFN input projection.
    Trainable per module: in_features + out_features."""

    name = "ssb"
    display_name = "SSB"
    paper_order = 50
    sides = {"key": BOTH, "value": BOTH, "ffn_in": BOTH}
