"""Bottleneck adapters: Houlsby (HAdapter, Houlsby et al., 2019) and Pfeiffer (PAdapter, Pfeiffer et al., 2021).

Placement: the adapter wraps the sub-layer's output projection (attention.output.dense and/or output.dense),
so it acts on the projection's output h before the residual connection and LayerNorm, which in RoBERTa,
BERT and DeBERTa-v2 follow as LayerNorm(dropout(h') + input). (In the original the dropout comes before the
adapter; here the sub-layer's dropout also covers the adapter's output; identical in evaluation.)
Bottleneck size m = 4r (HAdapter) or 8r (PAdapter) from the rank group, which matches the paper's budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...architectures import Target
from ..base import AdaptedLinear, LinearConfig, LinearMethod, register
from ..mpc import activation_module


@dataclass(kw_only=True)
class AdapterConfig(LinearConfig):
    bottleneck_per_rank: int  # bottleneck m = bottleneck_per_rank * r
    activation: str  # a name of mpc.ACTIVATIONS


class BottleneckAdapterLinear(AdaptedLinear):
    """phi(x) = h + B act(A h + a) + b with h = W x + bias the wrapped projection's output; A (m x out)
    nn.Linear init, B (out x m) and b zero, so the adapter starts as the identity. Not linear: not mergeable."""

    def __init__(self, base: nn.Linear, bottleneck: int, activation: nn.Module) -> None:
        super().__init__(base)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.adapter_down = nn.Linear(base.out_features, bottleneck, **factory)
        self.adapter_up = nn.Linear(bottleneck, base.out_features, **factory)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return h + self.adapter_up(self.activation(self.adapter_down(h)))


class BottleneckAdapter(LinearMethod):
    """A bottleneck adapter on each target projection's output; m = bottleneck_per_rank * r."""

    family = "extension"
    config_class = AdapterConfig
    mergeable = False  # a nonlinearity inside the adapter

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        activation_module(config.activation)  # an unknown name fails when the run is configured

    def wrap(self, linear: nn.Linear, target: Target) -> BottleneckAdapterLinear:
        return BottleneckAdapterLinear(linear, self.config.bottleneck_per_rank * self.rank,
                                       activation_module(self.config.activation))


@register
class HAdapter(BottleneckAdapter):
    """Houlsby adapters after the attention output projection and after the FFN output projection, m = 4r."""

    name = "hadapter"
    display_name = "HAdapter"
    paper_order = 90
    default_targets = ("attn_out", "ffn_out")


@register
class PAdapter(BottleneckAdapter):
    """One Pfeiffer adapter after the FFN output projection, m = 8r."""

    name = "padapter"
    display_name = "PAdapter"
    paper_order = 100
    default_targets = ("ffn_out",)
