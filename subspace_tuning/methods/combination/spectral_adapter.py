"""Spectral Adapter (Zhang and Pilanci, 2024), additive variant: fine-tune the top-r singular vectors."""

from __future__ import annotations

import torch
from torch import nn

from ..base import register
from ..reconstruction.spectral import Factors, SpectralLinear, SpectralMethod


class SpectralAdapterLinear(SpectralLinear):
    """phi(W) = [U_r + A', U_rest] Sigma [V_r + B', V_rest]^T, with U_r, V_r the top-r singular vectors of
    the frozen W (thin SVD computed once at apply time) and A' (out x r), B' (in x r) starting at 0.

    Equivalently phi(W) = W + (U_r + A') Sigma_r (V_r + B')^T - U_r Sigma_r V_r^T, a rank <= 2r update
    that the forward applies LoRA-style, without materialising an out x in matrix. Trainable per module:
    r (in + out), as LoRA.
    """

    def __init__(self, base: nn.Linear, factors: Factors) -> None:
        super().__init__(base, factors)
        self.spectral_A = nn.Parameter(torch.zeros_like(self.U))
        self.spectral_B = nn.Parameter(torch.zeros_like(self.Vh.T))

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(left (out x 2r), scale (2r), right (in x 2r)) with phi(W) - W = left diag(scale) right^T."""
        v = self.Vh.T
        left = torch.cat([self.U + self.spectral_A, self.U], dim=1)
        right = torch.cat([v + self.spectral_B, v], dim=1)
        return left, torch.cat([self.S, -self.S]), right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, scale, right = self.low_rank_factors()
        return self.base_plus(x, (x @ right) * scale, left)

    def delta_weight(self) -> torch.Tensor:
        left, scale, right = self.low_rank_factors()
        return (left * scale) @ right.T


@register
class SpectralAdapter(SpectralMethod):
    """Spectral Adapter^A on all six linear modules of every layer; r comes from the rank group."""

    name = "spectral_adapter"
    display_name = "Spectral Adapter"
    paper_order = 190
    family = "combination"
    linear_class = SpectralAdapterLinear
    uses_rank = True

    @property
    def svd_rank(self) -> int:
        return self.rank
