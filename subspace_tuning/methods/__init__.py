"""PEFT methods, laid out as the paper's taxonomy.

- ``reference``: full fine-tuning, the reference row of every table.
- ``reconstruction/``: phi(W) = f(W), reshapes W's own subspaces (SAM-PARSER, (IA)3, SSL, SSB, BitFit, prompts).
- ``extension/``: phi(W) = W + s dW, adds a new low-rank subspace (LoRA and its derivatives, adapters).
- ``combination/``: reconstruct and extend (DoRA, Spectral Adapter, SVDiff).

Adding a method: write one module in the right family folder with a ``@register`` class, and one
``conf/method/<name>.yaml``. Modules are discovered here, so nothing else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, AdaptedLinear, LinearMethod, Method, MethodConfig, build_method, method_class, register

_SUBPACKAGES = ("reconstruction", "extension", "combination")


def load_all() -> None:
    """Import every method module so that its ``@register`` runs."""
    importlib.import_module(f"{__name__}.reference")
    for sub in _SUBPACKAGES:
        package = importlib.import_module(f"{__name__}.{sub}")
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")


__all__ = ["REGISTRY", "AdaptedLinear", "LinearMethod", "Method", "MethodConfig", "build_method",
           "load_all", "method_class", "register"]
