"""TriLoRA (Feng et al., 2024): an SVD-shaped LoRA update without rank allocation."""

from __future__ import annotations

import torch
from torch import nn

from ..base import register
from .lora import LowRankLinear, LowRankMethod


class TriLoRALinear(LowRankLinear):
    """phi(W) = W + s B diag(e) A; A (r x in) and B (out x r) kaiming-uniform, e = 0, s = alpha / r.

    With e = 0 the update starts at zero although both A and B are random, like the singular values of an SVD.
    """

    b_init = "kaiming"

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 activation: nn.Module | None = None) -> None:
        super().__init__(base, rank, alpha, dropout, activation)
        self.lora_E = nn.Parameter(torch.zeros(rank, device=base.weight.device, dtype=base.weight.dtype))

    def core(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.lora_E


@register
class TriLoRA(LowRankMethod):
    """TriLoRA on all six linear modules: phi(W) = W + (alpha / r) B diag(e) A."""

    name = "trilora"
    display_name = "TriLoRA"
    paper_order = 130
    linear_class = TriLoRALinear
