"""SAM-PARSER (Peng et al., 2024): fine-tune the singular values of every frozen weight (the paper's Mode 1)."""

from __future__ import annotations

import torch
from torch import nn

from ..base import register
from .spectral import Factors, SpectralLinear, SpectralMethod


class SamParserLinear(SpectralLinear):
    """phi(W) = U diag(sigma') V^T with W = U diag(sigma) V^T (thin SVD, computed once at apply time);
    sigma' is a trainable copy of sigma. Computed as W + U diag(sigma' - sigma) V^T: the same matrix, but
    exactly W at init. Trainable per module: min(in, out)."""

    def __init__(self, base: nn.Linear, factors: Factors) -> None:
        super().__init__(base, factors)
        # Created here, before the optimizer exists, so the optimizer holds it: a sigma built inside forward()
        # would be a new tensor at every step and never train.
        self.sigma = nn.Parameter(self.S.clone())

    def delta_weight(self) -> torch.Tensor:
        return (self.U * (self.sigma - self.S)) @ self.Vh


@register
class SamParser(SpectralMethod):
    """SAM-PARSER on all six linear modules of every layer: only the singular values train."""

    name = "sam_parser"
    display_name = "SAM-PARSER"
    paper_order = 20
    family = "reconstruction"
    linear_class = SamParserLinear
