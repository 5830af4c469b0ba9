"""BitFit (Ben Zaken et al., 2022): train only the backbone's biases (the paper's Mode 3 reconstruction)."""

from __future__ import annotations

from torch import nn

from ...architectures import head_parameter_names
from ..base import Method, register


@register
class BitFit(Method):
    """phi(W) = W, with every bias b of the backbone trainable: the attention and FFN linear layers, every
    LayerNorm (embeddings, attention, output and, in DeBERTa, the relative-embedding LayerNorm) and a
    backbone pooler if the model has one. The classification head trains as always and is not counted.

    The biases are trained in place, so the adapted model already is a plain transformers model and
    ``merge`` has nothing to fold.
    """

    name = "bitfit"
    display_name = "BitFit"
    paper_order = 60
    family = "reconstruction"
    uses_rank = False

    def adapt(self, model: nn.Module) -> None:
        head = head_parameter_names(model)
        for name, param in model.named_parameters():
            if name not in head and self.trains_backbone_parameter(name):
                param.requires_grad_(True)

    def trains_backbone_parameter(self, name: str) -> bool:
        return name.endswith(".bias")
