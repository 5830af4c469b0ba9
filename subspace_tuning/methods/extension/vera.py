"""VeRA (Kopiczko et al., 2024): frozen random projections shared by all layers, trained scaling vectors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...architectures import Target
from ..base import AdaptedLinear, AdapterModule, LinearConfig, register
from .shared import SharedHolderMethod


@dataclass(kw_only=True)
class VeRAConfig(LinearConfig):
    d_initial: float  # initial value of every entry of d
    projection_seed: int  # seed of the frozen shared A and B, independent of the run's seed
    dropout: float


class VeRAProjections(AdapterModule):
    """The frozen A_shared (r x max in) and B_shared (max out x r), kaiming-uniform from ``seed`` on the CPU
    (so every device gets the same matrices). Persistent buffers: saved with the run, and regenerated
    identically from the seed when the method is applied again."""

    def __init__(self, rank: int, max_in: int, max_out: int, seed: int, weight: torch.Tensor) -> None:
        super().__init__()
        a, b = torch.empty(rank, max_in), torch.empty(max_out, rank)
        if not weight.is_meta:
            generator = torch.Generator().manual_seed(seed)
            nn.init.kaiming_uniform_(a, a=5 ** 0.5, generator=generator)
            nn.init.kaiming_uniform_(b, a=5 ** 0.5, generator=generator)
        self.register_buffer("A", a.to(device=weight.device, dtype=weight.dtype))
        self.register_buffer("B", b.to(device=weight.device, dtype=weight.dtype))


class VeRALinear(AdaptedLinear):
    """phi(W) = W + diag(b) B diag(d) A with A = A_shared[:, :in], B = B_shared[:out, :] frozen; d = 0.1, b = 0."""

    def __init__(self, base: nn.Linear, projections: VeRAProjections, d_initial: float, dropout: float) -> None:
        super().__init__(base)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.vera_d = nn.Parameter(torch.full((projections.A.shape[0],), float(d_initial), **factory))
        self.vera_b = nn.Parameter(torch.zeros(base.out_features, **factory))
        self.projections = (projections,)  # a tuple: shared, owned (saved, moved) by the model, not by this layer
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def frozen_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.projections[0]
        return shared.A[:, : self.in_features], shared.B[: self.out_features, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.frozen_factors()
        # diag(b) folded into the (out x r) B rather than applied to the (tokens x out) output (speed)
        return self.base_plus(x, self.dropout(x) @ a.T * self.vera_d, self.vera_b[:, None] * b)

    def merged_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, b = self.frozen_factors()
        return self.base.weight + self.vera_b[:, None] * b @ (self.vera_d[:, None] * a), self.base.bias


@register
class VeRA(SharedHolderMethod):
    """VeRA on all six linear modules: only d (r per module) and b (out per module) train."""

    name = "vera"
    display_name = "VeRA"
    paper_order = 170
    peft_type = "VERA"
    config_class = VeRAConfig
    holder_name = "vera_projections"

    def build_holder(self, shapes: dict[Target, tuple[int, int]], weight: torch.Tensor) -> VeRAProjections:
        """Sized by the largest layer; each layer uses its top-left block."""
        return VeRAProjections(self.rank, max(i for _, i in shapes.values()), max(o for o, _ in shapes.values()),
                               self.config.projection_seed, weight)

    def wrap(self, linear: nn.Linear, target: Target) -> VeRALinear:
        return VeRALinear(linear, self.holder, self.config.d_initial, self.config.dropout)
