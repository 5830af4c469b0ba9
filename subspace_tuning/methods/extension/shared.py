"""Support for methods whose modules share tensors across layers (VeRA's random projections, LoTR's factors).

The shared tensors live once, in a holder module attached to the model (``model.<holder_name>``), so they
are moved, saved and loaded once; each adapted module keeps only a non-owning reference to the holder.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ...architectures import Target
from ..base import AdapterModule, LinearMethod


class SharedHolderMethod(LinearMethod):
    """A ``LinearMethod`` whose ``wrap`` can use ``self.holder``, built once per model by ``build_holder``."""

    holder_name: ClassVar[str]

    def build_holder(self, model: nn.Module, targets: list[Target]) -> AdapterModule:
        raise NotImplementedError

    def adapt(self, model: nn.Module) -> None:
        self.holder = self.build_holder(model, self.targets(model))
        model.add_module(self.holder_name, self.holder)
        super().adapt(model)

    def merge(self, model: nn.Module) -> nn.Module:
        super().merge(model)
        delattr(model, self.holder_name)  # merged layers no longer need the shared tensors
        return model


def shape_of(model: nn.Module, target: Target) -> tuple[int, int]:
    """(out, in) of a target linear layer."""
    linear = model.get_submodule(target.name)
    return linear.out_features, linear.in_features
