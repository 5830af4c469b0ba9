"""SVDiff (Han et al., 2023): a spectral shift of the frozen weight's singular values, through a ReLU."""

from __future__ import annotations

import torch
from torch import nn

from ..base import register
from ..reconstruction.spectral import Factors, SpectralLinear, SpectralMethod


class SVDiffLinear(SpectralLinear):
    """phi(W) = U ReLU(diag(sigma) + diag(delta)) V^T, delta starting at 0 (thin SVD computed once at apply
    time). Computed as W + U diag(ReLU(sigma + delta) - sigma) V^T, exactly W at init. Trainable per
    module: min(in, out)."""

    def __init__(self, base: nn.Linear, factors: Factors) -> None:
        super().__init__(base, factors)
        self.delta = nn.Parameter(torch.zeros_like(self.S))

    def delta_weight(self) -> torch.Tensor:
        return (self.U * (torch.relu(self.S + self.delta) - self.S)) @ self.Vh


@register
class SVDiff(SpectralMethod):
    """SVDiff on all six linear modules of every layer: only the spectral shift delta trains."""

    name = "svdiff"
    display_name = "SVDiff"
    paper_order = 200
    family = "combination"
    linear_class = SVDiffLinear
