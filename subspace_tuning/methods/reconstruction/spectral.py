"""Shared part of the methods that work on W's singular value decomposition (SAM-PARSER, SVDiff,
Spectral Adapter).

The thin SVD W = U diag(sigma) V^T of every target is computed once, when the method is applied:
batched over the targets that share a shape, in float32 or better whatever the training dtype, and
never again during training. The factors are stored as buffers in the weight's dtype but are *not*
part of the saved adapter state: they are recomputed, deterministically, from the frozen weights
whenever the method is applied again (so a saved SAM-PARSER run is its sigma', not three copies of W).
Because a sweep applies the same method to the same backbone dozens of times, full SVDs are cached on
disk keyed by a hash of the weight (``svd_cache_dir``): on 2 CPU cores the SVDs of roberta-large's 144
targets take 85 s, reading them back 3 to 4 s (docs/benchmarks.md). On the meta device (parameter
counting) no SVD runs: correctly shaped empty factors stand in.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ...architectures import replace_module
from ...runio import load_tensors, save_tensors
from ..base import AdaptedLinear, LinearMethod

log = logging.getLogger(__name__)

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U (out x k), sigma (k), Vh (k x in)
SVD_CACHE_ENV = "SUBSPACE_TUNING_SVD_CACHE"


def svd_cache_dir() -> Path | None:
    """Where the thin SVDs of frozen weights are kept between runs (every run of a sweep over one backbone
    needs the same ones): ``$SUBSPACE_TUNING_SVD_CACHE``, by default ``~/.cache/subspace_tuning/svd``;
    ``off`` turns the cache off."""
    value = os.environ.get(SVD_CACHE_ENV)
    if value is None:
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "subspace_tuning" / "svd"
    if value.strip().lower() in ("", "0", "off", "false", "none"):
        return None
    return Path(value).expanduser()


@contextlib.contextmanager
def svd_cache(folder: str | Path | None) -> Iterator[None]:
    """Use ``folder`` as the SVD cache (None: no cache) inside the block, then restore the setting."""
    before = os.environ.get(SVD_CACHE_ENV)
    os.environ[SVD_CACHE_ENV] = str(folder) if folder is not None else "off"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SVD_CACHE_ENV, None)
        else:
            os.environ[SVD_CACHE_ENV] = before


def weight_digest(weight: torch.Tensor) -> str:
    """A content hash of the weight (its bytes, shape and dtype): the cache key of its SVD."""
    data = weight.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy(), digest_size=20)
    digest.update(f"{tuple(data.shape)} {data.dtype}".encode())
    return digest.hexdigest()


def read_cached(path: Path, device: torch.device) -> Factors | None:
    try:
        tensors = load_tensors(path)
        return tensors["U"].to(device), tensors["S"].to(device), tensors["Vh"].to(device)
    except FileNotFoundError:
        return None
    except Exception as err:  # a truncated or foreign file: recompute and overwrite it
        log.warning("ignoring unreadable cached SVD %s (%s)", path, err)
        return None


def write_cached(path: Path, factors: Factors) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, dict(zip(("U", "S", "Vh"), factors, strict=True)))
    except OSError as err:  # a read-only or full disk costs speed, never the run
        log.warning("could not cache an SVD in %s (%s); set %s=off to stop trying", path.parent, err, SVD_CACHE_ENV)


def batched_svds(weights: list[torch.Tensor]) -> list[Factors]:
    """Full thin SVDs of same-shape weights in one batched call, in float32 or better."""
    stack = torch.stack(weights)
    stack = stack.to(torch.promote_types(stack.dtype, torch.float32))  # never SVD in half precision
    if stack.shape[-2] < stack.shape[-1]:  # LAPACK's gesdd is ~2.6x slower on wide than on tall matrices
        vt, s, ut = torch.linalg.svd(stack.mT, full_matrices=False)
        u, vh = ut.mT, vt.mT
    else:
        u, s, vh = torch.linalg.svd(stack, full_matrices=False)
    return [(u[j], s[j], vh[j]) for j in range(len(weights))]


@torch.no_grad()
def thin_svds(weights: list[torch.Tensor], rank: int | None = None) -> list[Factors]:
    """Thin SVD of each weight, keeping the top ``rank`` triplets (all when None).

    Full SVDs come from the cache (``svd_cache_dir``) when it has them; the others are computed with one
    batched call per shape and cached. On the meta device correctly shaped empty factors stand in."""
    cache = svd_cache_dir()
    full: list[Factors | None] = [None] * len(weights)
    paths: dict[int, Path] = {}
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, weight in enumerate(weights):
        if weight.is_meta:
            out_features, in_features = weight.shape
            k = min(out_features, in_features)
            full[i] = tuple(torch.empty(shape, device="meta", dtype=weight.dtype)
                            for shape in ((out_features, k), (k,), (k, in_features)))
            continue
        if cache is not None:
            paths[i] = cache / f"{weight_digest(weight)}.safetensors"
            full[i] = read_cached(paths[i], weight.device)
        if full[i] is None:
            by_shape[tuple(weight.shape)].append(i)
    for indices in by_shape.values():
        for i, factors in zip(indices, batched_svds([weights[i] for i in indices]), strict=True):
            full[i] = factors
            if i in paths:
                write_cached(paths[i], factors)
    return [truncated(factors, rank, weight.dtype) for factors, weight in zip(full, weights, strict=True)]


def truncated(factors: Factors, rank: int | None, dtype: torch.dtype) -> Factors:
    u, s, vh = factors
    k = rank or s.shape[0]
    return u[:, :k].to(dtype).contiguous(), s[:k].to(dtype).contiguous(), vh[:k].to(dtype).contiguous()


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
