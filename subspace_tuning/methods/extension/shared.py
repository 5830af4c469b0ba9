"""Support for methods whose modules share tensors across layers (VeRA's random projections, LoTR's factors).

The shared tensors live once, in a holder module attached to the model (``model.<holder_name>``), so they
are moved, saved and loaded once; each adapted module keeps only a non-owning reference to the holder.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ...architectures import Target
from ..base import AdapterModule, LinearMethod


class SharedHolderMethod(LinearMethod):
    """A ``LinearMethod`` whose ``wrap`` can use ``self.holder``, built once per model by ``build_holder``."""

    family = "extension"
    holder_name: ClassVar[str]

    def build_holder(self, shapes: dict[Target, tuple[int, int]], weight: torch.Tensor) -> AdapterModule:
        """The shared tensors for targets of the given (out, in) shapes, on ``weight``'s device and dtype."""
        raise NotImplementedError

    def adapt(self, model: nn.Module) -> None:
        linears = {t: model.get_submodule(t.name) for t in self.targets(model)}
        shapes = {t: (linear.out_features, linear.in_features) for t, linear in linears.items()}
        self.holder = self.build_holder(shapes, next(iter(linears.values())).weight)
        model.add_module(self.holder_name, self.holder)
        super().adapt(model)

    def merge(self, model: nn.Module) -> nn.Module:
        super().merge(model)
        delattr(model, self.holder_name)  # merged layers no longer need the shared tensors
        return model
