"""Shared part of the scaling-vector methods (IA)3, SSL and SSB (the paper's Mode 2 reconstruction).

Each scales the rows and/or columns of a frozen W by learned vectors that start at 1, i.e. rescales
the singular structure of W without adding a subspace: phi(W) = diag(l_out) W diag(l_in).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ...architectures import Target
from ..base import AdaptedLinear, LinearMethod

IN, OUT, BOTH = "in", "out", "both"


class ScaledLinear(AdaptedLinear):
    """phi(W) = diag(l_out) W diag(l_in), both vectors starting at 1; either may be absent.

    The output scaling multiplies the whole module output, bias included (y = l_out * (W (l_in * x) + b)),
    as (IA)3 rescales activations and as Hugging Face PEFT merges it.
    """

    def __init__(self, base: nn.Linear, side: str) -> None:
        super().__init__(base)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.scale_in = nn.Parameter(torch.ones(base.in_features, **factory)) if side in (IN, BOTH) else None
        self.scale_out = nn.Parameter(torch.ones(base.out_features, **factory)) if side in (OUT, BOTH) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x * self.scale_in if self.scale_in is not None else x)
        return y * self.scale_out if self.scale_out is not None else y

    def merged_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = self.base.weight, self.base.bias
        if self.scale_in is not None:
            weight = weight * self.scale_in
        if self.scale_out is not None:
            weight = weight * self.scale_out[:, None]
            bias = bias * self.scale_out if bias is not None else None
        return weight, bias


class ScalingMethod(LinearMethod):
    """A rank-free method that wraps each target in a ``ScaledLinear``; ``side`` says which side per kind."""

    family = "reconstruction"
    uses_rank = False
    sides: ClassVar[dict[str, str]]  # module kind -> IN / OUT / BOTH; its keys are the default placement

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "sides" in cls.__dict__:
            cls.default_targets = tuple(cls.sides)

    def side(self, kind: str) -> str:
        """The side scaled on a module kind; kinds outside the default placement use the method's main side."""
        return self.sides.get(kind, next(iter(self.sides.values())))

    def wrap(self, linear: nn.Linear, target: Target) -> ScaledLinear:
        return ScaledLinear(linear, self.side(target.kind))
