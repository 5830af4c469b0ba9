"""Shared part of the methods that work on W's singular value decomposition (SAM-PARSER, SVDiff,
Spectral Adapter).

The thin SVD W = U diag(sigma) V^T of every target is computed once, when the method is applied:
batched over the targets that share a shape, in float32 or better whatever the training dtype, and
never again during training. The factors are stored as buffers in the weight's dtype but are *not*
part of the saved adapter state: they are recomputed, deterministically, from the frozen weights
whenever the method is applied again (so a saved SAM-PARSER run is its sigma', not three copies of W).
On the meta device (parameter counting) no SVD runs: correctly shaped empty factors stand in.
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar

import torch
from torch import nn

from ...architectures import replace_module
from ..base import AdaptedLinear, LinearMethod

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U (out x k), sigma (k), Vh (k x in)


@torch.no_grad()
def thin_svds(weights: list[torch.Tensor], rank: int | None = None) -> list[Factors]:
    """Thin SVD of each weight, keeping the top ``rank`` triplets (all when None); one batched call per shape."""
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, weight in enumerate(weights):
        by_shape[tuple(weight.shape)].append(i)
    factors: list[Factors | None] = [None] * len(weights)
    for (out_features, in_features), indices in by_shape.items():
        k = rank or min(out_features, in_features)
        like = weights[indices[0]]
        if like.is_meta:
            u, s, vh = (torch.empty(len(indices), *shape, device="meta", dtype=like.dtype)
                        for shape in ((out_features, k), (k,), (k, in_features)))
        else:
            stack = torch.stack([weights[i] for i in indices])
            work_dtype = torch.promote_types(stack.dtype, torch.float32)  # never SVD in half precision
            if out_features < in_features:  # LAPACK's gesdd is ~2.6x slower on wide than on tall matrices
                vt, s, ut = torch.linalg.svd(stack.to(work_dtype).mT, full_matrices=False)
                u, vh = ut.mT, vt.mT
            else:
                u, s, vh = torch.linalg.svd(stack.to(work_dtype), full_matrices=False)
            u, s, vh = (t.to(like.dtype) for t in (u[..., :k], s[..., :k], vh[..., :k, :]))
        for j, i in enumerate(indices):
            factors[i] = (u[j].contiguous(), s[j].contiguous(), vh[j].contiguous())
    return factors


class SpectralLinear(AdaptedLinear):
    """A frozen linear layer with its (top-k) singular triplets as buffers ``U``, ``S``, ``Vh``."""

    def __init__(self, base: nn.Linear, factors: Factors) -> None:
        super().__init__(base)
        u, s, vh = factors
        self.register_buffer("U", u)
        self.register_buffer("S", s)
        self.register_buffer("Vh", vh)

    def delta_weight(self) -> torch.Tensor:
        """phi(W) - W."""
        raise NotImplementedError

    def adapted_weight(self) -> torch.Tensor:
        # W + delta rather than a reconstruction U diag(.) V^T: exact at init, and no SVD round-off in W.
        return self.base.weight + self.delta_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.adapted_weight(), self.base.bias)

    def merged_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.adapted_weight(), self.base.bias


class SpectralMethod(LinearMethod):
    """Applies the SVD of all targets in one go, then wraps each target in ``linear_class`` with its factors."""

    uses_rank = False
    linear_class: ClassVar[type[SpectralLinear]]
    svd_rank: int | None = None  # how many singular triplets to keep (None = all)

    def adapt(self, model: nn.Module) -> None:
        targets = self.targets(model)
        linears = [model.get_submodule(t.name) for t in targets]
        for target, linear in zip(targets, linears, strict=True):
            self.check_rank(target, linear)
        factors = thin_svds([linear.weight for linear in linears], self.svd_rank)
        for target, linear, triplet in zip(targets, linears, factors, strict=True):
            replace_module(model, target.name, self.linear_class(linear, triplet))

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained parameters only: the SVD factors are recomputed from W on every apply."""
        derived = {f"{name}.{buffer}" for name, module in model.named_modules()
                   if isinstance(module, SpectralLinear) for buffer in ("U", "S", "Vh")}
        return {name: tensor for name, tensor in super().state_dict(model).items() if name not in derived}
