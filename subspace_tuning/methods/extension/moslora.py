"""MoSLoRA (Wu et al., 2024, "Mixture-of-Subspaces in Low-Rank Adaptation"): LoRA with a learnable r x r mixer
that fuses its rank-one subspaces."""

from __future__ import annotations

from torch import nn

from ..base import register
from .flora import FLoRALinear
from .lora import LowRankMethod, init_


class MoSLoRALinear(FLoRALinear):
    """phi(W) = W + s B M A; A (r x in) and the mixer M (r x r, ``lora_G``) kaiming-uniform, B (out x r) = 0,
    s = alpha / r. Trainable per module: r (in + out) + r^2.

    The same Tucker-2 update as FLoRA (its r x r core is the mixer), initialised the other way round: FLoRA starts
    from random A and B and a zero core, MoSLoRA from LoRA's A and B and a random mixer. A zero mixer would never
    train here (with B = 0 too, neither B nor M gets a gradient), which is why the paper draws it at random; it
    chooses Kaiming-uniform for the mixer after comparing initialisations, and A is LoRA's. The Subspace-Tuning
    toolkit draws A and M from N(0, 0.02) instead and scales by alpha / (r + 1e-5); we follow the paper
    (docs/methods.md).
    """

    a_init = "kaiming"
    b_init = "zeros"

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 activation: nn.Module | None = None) -> None:
        super().__init__(base, rank, alpha, dropout, activation)
        init_(self.lora_G, "kaiming")  # FLoRA's core starts at zero; the mixer must not (see above)


@register
class MoSLoRA(LowRankMethod):
    """MoSLoRA on all six linear modules: phi(W) = W + (alpha / r) B M A. Composes with MPC_o / MPC_d (on A and
    B) and MPC_n (the nonlinearity acts on A x, before the mixer)."""

    name = "moslora"
    display_name = "MoSLoRA"
    paper_order = 230
    linear_class = MoSLoRALinear
