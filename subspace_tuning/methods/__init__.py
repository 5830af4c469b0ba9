"""PEFT methods, laid out as the paper's taxonomy (docs/methods.md is the catalogue).

- ``reference``: full fine-tuning, the reference row of every table.
- ``reconstruction/``: phi(W) = f(W) reshapes or rescales W's own subspaces.
- ``extension/``: phi(W) = W + s dW adds a new low-rank subspace.
- ``combination/``: both.

Adding a method (docs/methods.md, "Adding a method"): one module in the right family folder with a ``@register``
class carrying its catalogue entry (``display_name``, ``paper_order``, ``mergeable``, ...), one
``conf/method/<name>.yaml`` with its settings' values, its closed-form count in tests/method_properties.py and its
section in docs/methods.md. Modules are discovered here, and tools and tests read the registry (``catalogue()``).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    REGISTRY,
    AdaptedLinear,
    LinearMethod,
    Method,
    MethodConfig,
    build_method,
    method_class,
    register,
    unregister,
)

_SUBPACKAGES = ("reconstruction", "extension", "combination")


def load_all() -> None:
    """Import every method module so that its ``@register`` runs."""
    importlib.import_module(f"{__name__}.reference")
    for sub in _SUBPACKAGES:
        package = importlib.import_module(f"{__name__}.{sub}")
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")


def catalogue() -> list[type[Method]]:
    """Every registered method class, in the paper's table order (``paper_order``, then name)."""
    load_all()
    return sorted(REGISTRY.values(), key=lambda cls: (cls.paper_order, cls.name))


__all__ = ["REGISTRY", "AdaptedLinear", "LinearMethod", "Method", "MethodConfig", "build_method", "catalogue",
           "load_all", "method_class", "register", "unregister"]
