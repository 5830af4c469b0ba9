"""DoRA (Liu et al., 2024): weight-decomposed low-rank adaptation, a magnitude times a LoRA-updated direction."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...architectures import Target
from ..base import AdaptedLinear, LinearMethod, register
from ..extension.lora import LoRAConfig


@dataclass(kw_only=True)
class DoRAConfig(LoRAConfig):
    detach_norm: bool  # treat ||W + sBA|| as a constant in backward (DoRA section 4.3)


class DoRALinear(AdaptedLinear):
    """phi(W) = m * (W + s B A) / ||W + s B A||, the norm taken per output feature (row of W, PyTorch
    orientation); m (out) starts at the row norms of W, A (r x in) kaiming-uniform, B (out x r) zero,
    s = alpha / r. Trainable per module: r (in + out) + out.

    W + s B A is materialised once per forward, only for its norms (without autograd when the norm is
    detached); the output is computed as (m / norm) * (W x + s B A x) + b, so A and B get their
    gradients through the low-rank path, never through a batch-sized product with an out x in matrix.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, detach_norm: bool) -> None:
        super().__init__(base)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        self.magnitude = nn.Parameter(torch.empty(base.out_features, **factory))
        if not base.weight.is_meta:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            with torch.no_grad():
                self.magnitude.copy_(base.weight.norm(dim=1))
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.detach_norm = detach_norm

    def updated_weight(self) -> torch.Tensor:
        """W + s B A (out x in)."""
        return self.base.weight + self.scaling * (self.lora_B @ self.lora_A)

    def row_scale(self, updated: torch.Tensor) -> torch.Tensor:
        """m / ||W + s B A|| per output feature (exactly 1 at init)."""
        norm = updated.norm(dim=1)
        return self.magnitude / (norm.detach() if self.detach_norm else norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_norm):
            updated = self.updated_weight()  # a constant in backward when the norm is detached
        # Speed (docs/benchmarks.md): as in LoRA, s scales the r-wide h and s B A x is added into W x in place;
        # addcmul applies the row scale and the bias in one pass.
        direction = self.base_plus(x, (self.dropout(x) @ self.lora_A.T) * self.scaling, self.lora_B, bias=False)
        scale = self.row_scale(updated)
        return torch.addcmul(self.base.bias, direction, scale) if self.base.bias is not None else direction * scale

    def merged_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        updated = self.updated_weight()
        return updated * self.row_scale(updated)[:, None], self.base.bias


@register
class DoRA(LinearMethod):
    """DoRA on all six linear modules of every layer; r comes from the rank group."""

    name = "dora"
    display_name = "DoRA"
    paper_order = 160
    peft_type = "LORA"  # with use_dora=True
    family = "combination"
    config_class = DoRAConfig

    def wrap(self, linear: nn.Linear, target: Target) -> DoRALinear:
        c = self.config
        return DoRALinear(linear, self.rank, c.alpha, c.dropout, c.detach_norm)
