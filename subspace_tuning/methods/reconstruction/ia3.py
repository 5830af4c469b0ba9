"""(IA)3 (Liu et al., 2022): learned rescaling of keys, values and the FFN's intermediate activations."""

from __future__ import annotations

from ..base import register
from .scaling import IN, OUT, ScalingMethod


@register
class IA3(ScalingMethod):
    """phi(W) = diag(l) W on key and value (scales their output features) and phi(W) = W diag(l) on the
    FFN output projection (scales its input, the intermediate activations, as the original (IA)3 does);
    every l starts at 1. Trainable per layer: 2 * hidden + intermediate."""

    name = "ia3"
    display_name = "(IA)3"
    paper_order = 30
    peft_type = "IA3"
    sides = {"key": OUT, "value": OUT, "ffn_out": IN}
