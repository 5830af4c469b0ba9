"""``--svd-model``: the set-up time (``method.apply``) of every SVD-based method on a model of other dimensions
(random weights): computed (cache off; the first method's run fills the cache) and read back from the cache."""

from __future__ import annotations

import gc
import tempfile
import time
from typing import Any

import torch
from torch import nn

from ..methods import build_method, method_class
from ..methods.reconstruction.spectral import SpectralMethod, svd_cache
from .rows import bench_settings, log, random_model, shared_copy
from .timing import synchronize


def sized_like(model_name: str, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, int]:
    """(a model of ``model_name``'s dimensions, its number of target matrices). It is allocated without
    initialisation (``to_empty``) and only the target weights get random values: the set-up reads nothing else,
    and initialising roberta-large would cost more than what is measured."""
    from ..architectures import find_targets

    model = random_model(model_name, "meta", dtype).to_empty(device=device)
    torch.manual_seed(0)
    targets = find_targets(model)
    with torch.no_grad():
        for target in targets:
            model.get_submodule(target.name).weight.normal_(0, 0.02)
    return model, len(targets)


def timed_apply(name: str, model: nn.Module, rank: int, device: torch.device) -> float:
    """Seconds of ``method.apply`` on a shared copy of ``model`` (the copy is freed before returning)."""
    copied = shared_copy(model)
    method = build_method(name, bench_settings(name), rank)
    start = time.perf_counter()
    method.apply(copied)
    synchronize(device)
    del copied
    gc.collect()
    return time.perf_counter() - start


def svd_setup(model_name: str, methods: list[str], rank: int, device: torch.device,
              dtype: torch.dtype) -> dict[str, Any]:
    """Set-up seconds of every SVD-based method of ``methods`` on ``model_name``'s dimensions, computed and
    cached ({} when none of them is SVD-based)."""
    spectral = [m for m in methods if issubclass(method_class(m), SpectralMethod)]
    if not spectral:
        return {}
    model, matrices = sized_like(model_name, device, dtype)
    result: dict[str, Any] = {"model": model_name, "matrices": matrices, "seconds": {}, "cached_seconds": {}}
    with tempfile.TemporaryDirectory(prefix="svd-cache-") as cache:
        for i, name in enumerate(spectral):
            with svd_cache(None if i else cache):  # computed; the first method's run also fills the cache
                result["seconds"][name] = timed_apply(name, model, rank, device)
            with svd_cache(cache):  # a sweep's later runs: the SVDs come from the cache
                result["cached_seconds"][name] = timed_apply(name, model, rank, device)
            log(f"[svd set-up] {name} on {model_name} ({matrices} matrices): {result['seconds'][name]:.1f} s "
                f"computed, {result['cached_seconds'][name]:.1f} s from the cache")
    return result
