"""The parallel adapter (He et al., 2022) on every target module, with LoRA's shapes and init.

It is LoRA with a nonlinearity between A and B, i.e. exactly ``method=lora mpc=n`` (the paper's
MPC_n rows equal its PA rows); it exists as its own method to name the paper's PA rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..base import register
from ..mpc import activation_module
from .lora import LoRAConfig, LowRankLinear, LowRankMethod


@dataclass(kw_only=True)
class PAConfig(LoRAConfig):
    activation: str  # a name of mpc.ACTIVATIONS


class ParallelAdapterLinear(LowRankLinear):
    """y = x W^T + b + s act(x A^T) B^T; A kaiming-uniform, B = 0 (LoRA init), s = alpha / r. Not mergeable."""


@register
class PA(LowRankMethod):
    """Parallel adapter on all six linear modules: y = base(x) + (alpha / r) ReLU(x A^T) B^T."""

    name = "pa"
    display_name = "PA"
    paper_order = 110
    mergeable = False  # a ReLU between A and B
    config_class = PAConfig
    linear_class = ParallelAdapterLinear
    mpc_support = ("o", "d")  # it already has MPC_n's nonlinearity

    def __init__(self, config: PAConfig) -> None:
        super().__init__(config)
        activation_module(config.activation)  # an unknown name fails when the run is configured

    def activation(self) -> nn.Module:
        return activation_module(self.config.activation)
