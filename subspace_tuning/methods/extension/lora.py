"""LoRA (Hu et al., 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...architectures import Target
from ..base import AdaptedLinear, LinearMethod, MethodConfig, register


@dataclass
class LoRAConfig(MethodConfig):
    alpha: float = 16.0  # s = alpha / r; the paper gives no alpha, 16 is the common GLUE choice
    dropout: float = 0.0  # dropout on the input of the low-rank branch


class LoRALinear(AdaptedLinear):
    """phi(W) = W + s B A, A (r x in) kaiming-uniform, B (out x r) zero, s = alpha / r."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__(base)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        if not self.lora_A.is_meta:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.base.weight + self.scaling * (self.lora_B @ self.lora_A), self.base.bias


@register
class LoRA(LinearMethod):
    """LoRA on all six linear modules of every layer: phi(W) = W + (alpha / r) B A."""

    name = "lora"
    family = "extension"
    config_class = LoRAConfig

    def wrap(self, linear: nn.Linear, target: Target) -> LoRALinear:
        return LoRALinear(linear, self.rank, self.config.alpha, self.config.dropout)
