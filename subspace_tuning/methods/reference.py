"""Full fine-tuning: phi(W) = W', every parameter trains. The reference row of every paper table."""

from __future__ import annotations

from torch import nn

from .base import Method, register


@register
class FullFineTuning(Method):
    """phi(W) = W (every backbone weight is itself trainable); nothing to merge."""

    name = "full"
    display_name = "Fully FT"
    paper_order = 10
    family = "reference"
    uses_rank = False

    def adapt(self, model: nn.Module) -> None:
        model.requires_grad_(True)
