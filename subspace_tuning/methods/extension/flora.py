"""FLoRA (Si et al., 2024): a Tucker-shaped update with a full r x r core between A and B."""

from __future__ import annotations

import torch
from torch import nn

from ..base import register
from .lora import LowRankLinear, LowRankMethod


class FLoRALinear(LowRankLinear):
    """phi(W) = W + s B G A; A (r x in), B (out x r) ~ N(0, 0.02), core G (r x r) = 0, s = alpha / r."""

    a_init = "normal"
    b_init = "normal"

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 activation: nn.Module | None = None) -> None:
        super().__init__(base, rank, alpha, dropout, activation)
        self.lora_G = nn.Parameter(torch.zeros(rank, rank, device=base.weight.device, dtype=base.weight.dtype))

    def core(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.lora_G.T


@register
class FLoRA(LowRankMethod):
    """FLoRA on all six linear modules: phi(W) = W + (alpha / r) B G A (r^2 more parameters than LoRA)."""

    name = "flora"
    display_name = "FLoRA"
    paper_order = 150
    linear_class = FLoRALinear
