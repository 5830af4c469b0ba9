"""LieRA (Si et al., 2025, "Generalized Tensor-based Parameter-Efficient Fine-Tuning via Lie Group
Transformations"): a low-rank perturbation that multiplies W element-wise instead of adding to it."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..base import register
from ..extension.lora import LowRankLinear, LowRankMethod


class LieRALinear(LowRankLinear):
    """phi(W) = W + W * (s B A) = W * (1 + s B A), * element-wise; A (r x in) kaiming-uniform, B (out x r) = 0,
    s = alpha / r. Trainable per module: r (in + out).

    W * exp(s B A) is LieRA's Lie-group update of W (the perturbation s B A lives in the Lie algebra and the
    exponential map brings it back); W * (1 + s B A) is its first-order form, as in the authors' Subspace-Tuning
    toolkit, whose init this follows: with B = 0 it is exactly W at init. The update is still linear in x, so it
    merges. Unlike LoRA's, it is full-rank in general (the element-wise product
    of a rank-r matrix with W), so the forward forms the out x in matrix W * (1 + s B A) once (O(r out in),
    like DoRA's norm) and applies it in one GEMM; with dropout on the update's input the update is a second GEMM.
    """

    def delta_weight(self) -> torch.Tensor:
        """W * (s B A) (out x in)."""
        return self.base.weight * (self.scaling * (self.lora_B @ self.lora_A))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.dropout, nn.Identity):
            return F.linear(x, self.base.weight + self.delta_weight(), self.base.bias)
        return self.base(x) + F.linear(self.dropout(x), self.delta_weight())


@register
class LieRA(LowRankMethod):
    """LieRA on all six linear modules: phi(W) = W + W * ((alpha / r) B A).

    MPC_o and MPC_d constrain A and B as for LoRA. MPC_n is refused: it puts a nonlinearity on A x, after which
    the update is no longer a matrix, and W * (.) needs the matrix B A to multiply W element-wise."""

    name = "liera"
    display_name = "LieRA"
    paper_order = 240
    family = "combination"
    mpc_support = ("o", "d")
    linear_class = LieRALinear
