"""LoTR (Bershatsky et al., 2024): a Tucker-2 update across layers, factors shared per module kind."""

from __future__ import annotations

import torch
from torch import nn

from ...architectures import Target
from ..base import AdaptedLinear, AdapterModule, register
from .lora import LoRAConfig
from .shared import SharedHolderMethod


class LoTRFactors(AdapterModule):
    """U (out x r) and V (in x r) of every module kind, shared by all layers; orthonormal columns at init
    (the Tucker convention; any init gives the identity since the cores start at 0)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, weight: torch.Tensor) -> None:
        super().__init__()
        self.U = nn.ParameterDict({kind: self.orthonormal(out, rank, weight) for kind, (out, _) in shapes.items()})
        self.V = nn.ParameterDict({kind: self.orthonormal(inp, rank, weight) for kind, (_, inp) in shapes.items()})

    @staticmethod
    def orthonormal(rows: int, rank: int, weight: torch.Tensor) -> nn.Parameter:
        """A rows x rank matrix with orthonormal columns (empty on the meta device)."""
        factor = torch.empty(rows, rank) if weight.is_meta else torch.linalg.qr(torch.randn(rows, rank))[0]
        return nn.Parameter(factor.to(device=weight.device, dtype=weight.dtype))


class LoTRLinear(AdaptedLinear):
    """phi(W_l) = W_l + s U G_l V^T; U (out x r), V (in x r) shared by this kind's modules in all layers,
    the per-layer core G_l (r x r) = 0, s = alpha / r."""

    def __init__(self, base: nn.Linear, factors: LoTRFactors, kind: str, rank: int, alpha: float,
                 dropout: float) -> None:
        super().__init__(base)
        self.lotr_G = nn.Parameter(torch.zeros(rank, rank, device=base.weight.device, dtype=base.weight.dtype))
        self.factors, self.kind = (factors,), kind  # a tuple: shared, owned (saved, moved) by the model
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def shared(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.factors[0].U[self.kind], self.factors[0].V[self.kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.shared()
        return self.base_plus(x, (self.dropout(x) @ v @ self.lotr_G.T) * self.scaling, u)  # s on the r-wide part

    def merged_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        u, v = self.shared()
        return self.base.weight + self.scaling * (u @ self.lotr_G @ v.T), self.base.bias


@register
class LoTR(SharedHolderMethod):
    """LoTR on all six linear modules: per kind r (out + in) shared parameters plus r^2 per layer."""

    name = "lotr"
    display_name = "LoTR"
    paper_order = 180
    config_class = LoRAConfig  # alpha (s = alpha / r) and dropout, as LoRA
    holder_name = "lotr_factors"

    def build_holder(self, shapes: dict[Target, tuple[int, int]], weight: torch.Tensor) -> LoTRFactors:
        return LoTRFactors({t.kind: shape for t, shape in shapes.items()}, self.rank, weight)

    def wrap(self, linear: nn.Linear, target: Target) -> LoTRLinear:
        return LoTRLinear(linear, self.holder, target.kind, self.rank, self.config.alpha, self.config.dropout)
