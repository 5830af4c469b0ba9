"""PiSSA (Meng et al., 2024, "Principal Singular values and Singular vectors Adaptation") and MiLoRA (Wang et al.,
2024, "Minor singular components LoRA"): LoRA whose factors start as r singular triplets of W, cut out of a frozen
residual weight so that phi(W) = W at init.

Both split W = W_res + U_r S_r V_r^T and train B A in place of the split-off part; PiSSA takes the r largest
triplets (fine-tune the principal subspace), MiLoRA the r smallest (leave it alone). The SVD is the shared one of
``methods/reconstruction/spectral.py`` (batched per shape, float32 or better, cached on disk), computed once
when the method is applied.

What is saved (docs/methods.md): A and B only. W_res is a deterministic function of the pretrained W (the same
SVD, from the cache or recomputed), and the runner rebuilds the backbone and applies the method before loading
a run, so W_res is recomputed there rather than saved as a second copy of every target weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...architectures import replace_module
from ..base import register
from ..extension.lora import LoRAConfig, LowRankLinear, LowRankMethod
from ..reconstruction.spectral import Factors, thin_svds


@dataclass(kw_only=True)
class PiSSAConfig(LoRAConfig):
    alpha: float | None  # s = alpha / r; None: alpha = r (s = 1), the papers' setting


class PiSSALinear(LowRankLinear):
    """phi(W) x = W_res x + s B A x with B = U_r (S_r / s)^(1/2), A = (S_r / s)^(1/2) V_r^T and the frozen
    W_res = W - U_r S_r V_r^T (held as the wrapped base's weight), so s B A = U_r S_r V_r^T and phi(W) = W at
    init up to float32 round-off (max |W - phi(W)| about 1e-7 |W|_max; the test matrix's logit tolerance 1e-5
    holds). Dividing S by s, as PEFT's ``init_lora_weights="pissa"`` does, makes the product independent of
    alpha; at s = 1 (the papers' alpha = r, our default) the factors are the papers' U S^(1/2), S^(1/2) V^T.
    Trainable per module: r (in + out), as LoRA.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, triplets: Factors) -> None:
        super().__init__(base, rank, alpha, dropout)
        u, s, vh = triplets
        if base.weight.is_meta:  # parameter counting: shapes only
            return
        with torch.no_grad():  # the triplets come in float32 or better (PiSSAMethod.adapt), never half precision
            root = (s / self.scaling).sqrt()
            self.lora_A.copy_(root[:, None] * vh)
            self.lora_B.copy_(u * root)
            base.weight.copy_(base.weight.to(s.dtype) - (u * s) @ vh)


class PiSSAMethod(LowRankMethod):
    """Applies one SVD of all targets (batched per shape, cached), then wraps each in ``PiSSALinear`` with the
    r triplets ``select`` picks.

    MPC_o and MPC_d compose (they constrain A and B as for LoRA, as loss terms). MPC_n is refused: a
    nonlinearity between A and B would make W_res + B act(A x) differ from W x at init, losing the method's
    defining property."""

    family = "combination"
    config_class = PiSSAConfig
    mpc_support = ("o", "d")
    linear_class = PiSSALinear
    largest: ClassVar[bool]  # True: the r largest singular triplets (PiSSA); False: the r smallest (MiLoRA)

    def select(self, factors: Factors) -> Factors:
        """The r largest or the r smallest of a full thin SVD (singular values in descending order)."""
        u, s, vh = factors
        k = s.shape[0]
        keep = slice(0, self.rank) if self.largest else slice(k - self.rank, k)
        return u[:, keep], s[keep], vh[keep]

    def adapt(self, model: nn.Module) -> None:
        targets = self.targets(model)
        linears = [model.get_submodule(t.name) for t in targets]
        for target, linear in zip(targets, linears, strict=True):
            self.check_rank(target, linear)
        alpha = self.config.alpha if self.config.alpha is not None else float(self.rank)
        # all triplets (None): MiLoRA needs the tail; the cache keeps full SVDs either way. thin_svds returns them in
        # the dtype it is given: float32 or better, so that W_res = W - U_r S_r V_r^T is exact to float32 round-off
        weights = [lin.weight.to(torch.promote_types(lin.weight.dtype, torch.float32)) for lin in linears]
        for target, linear, factors in zip(targets, linears, thin_svds(weights), strict=True):
            replace_module(model, target.name, self.linear_class(linear, self.rank, alpha, self.config.dropout,
                                                                 self.select(factors)))


@register
class PiSSA(PiSSAMethod):
    """PiSSA on all six linear modules: phi(W) = W_res + s B A from the r largest singular triplets of W.

    Counterpart: PEFT's LoRA with ``init_lora_weights="pissa"`` (exact SVD), tested in lockstep
    (tests/test_pissa.py). Identity at init within float32 SVD round-off (logits within 1e-5)."""

    name = "pissa"
    display_name = "PiSSA"
    paper_order = 210
    peft_type = "LORA"
    largest = True


@register
class MiLoRA(PiSSAMethod):
    """MiLoRA on all six linear modules: phi(W) = W_res + s B A from the r smallest singular triplets of W.

    PEFT has no MiLoRA init. The authors' Subspace-Tuning toolkit builds MiLoRA's factors in the first forward,
    after the optimizer exists, so they never train; here they are parameters from ``apply`` on, as in the
    paper. Identity at init within float32 SVD round-off (logits within 1e-5)."""

    name = "milora"
    display_name = "MiLoRA"
    paper_order = 220
    largest = False
