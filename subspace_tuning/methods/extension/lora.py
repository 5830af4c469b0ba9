"""LoRA (Hu et al., 2021) and the shared "A and B" base of the low-rank extension methods.

``LowRankLinear`` computes phi(W) x = W x + s B C(act(A x)) with a method-specific r x r core C
(identity for LoRA, diag(e) for TriLoRA, diag(lambda) for AdaLoRA, a full G for FLoRA). Keeping the
factors under one name (``lora_A``, ``lora_B``) is what lets the MPC framework (``methods/mpc.py``)
constrain every one of these methods the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ...architectures import Target
from ...errors import NotMergeableError
from ..base import AdaptedLinear, LinearConfig, LinearMethod, register
from ..mpc import activation_module, gram_columns, gram_rows, off_diagonal_error, orthonormal_error

INITS: dict[str, Callable[[torch.Tensor], Any]] = {
    "kaiming": lambda p: nn.init.kaiming_uniform_(p, a=math.sqrt(5)),  # nn.Linear's default
    "normal": lambda p: nn.init.normal_(p, mean=0.0, std=0.02),
    "zeros": nn.init.zeros_,
}


def init_(param: torch.Tensor, how: str) -> None:
    """Initialise in place; meta tensors (parameter counting) have no values to fill."""
    if not param.is_meta:
        with torch.no_grad():
            INITS[how](param)


@dataclass(kw_only=True)
class LoRAConfig(LinearConfig):
    alpha: float  # s = alpha / r
    dropout: float  # on the input of the low-rank branch


class LowRankLinear(AdaptedLinear):
    """phi(W) x = W x + s B C(act(A x)), A (r x in), B (out x r), C an r x r core (identity here).

    ``act`` is the identity unless MPC_n (or PA) puts a nonlinearity between A and B.
    """

    a_init: ClassVar[str] = "kaiming"
    b_init: ClassVar[str] = "zeros"

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 activation: nn.Module | None = None) -> None:
        super().__init__(base)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.rank = rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, rank, **factory))
        init_(self.lora_A, self.a_init)
        init_(self.lora_B, self.b_init)
        self.alpha = alpha
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.activation = activation if activation is not None else nn.Identity()

    @property
    def scaling(self) -> float | torch.Tensor:
        """s = alpha / r."""
        return self.alpha / self.rank

    def core(self, h: torch.Tensor) -> torch.Tensor:
        """h C^T for row vectors h (..., r): the identity for LoRA."""
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # s scales the r-wide h, not the (tokens x out) output (speed, docs/benchmarks.md)
        h = self.core(self.activation(self.dropout(x) @ self.lora_A.T)) * self.scaling
        return self.base_plus(x, h, self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """s B C A (out x in); C is read off the core by applying it to the identity."""
        eye = torch.eye(self.rank, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return self.scaling * (self.lora_B @ self.core(eye).T @ self.lora_A)

    def merged_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(self.activation, nn.Identity):
            raise NotMergeableError(f"{type(self).__name__} has a nonlinearity between A and B (mpc=n or method=pa), "
                                    "so its update is not a weight matrix and cannot be merged into W; "
                                    "keep the adapted model (or train with mpc=none/o/d to export merged weights)")
        return self.base.weight + self.delta_weight(), self.base.bias


class LowRankMethod(LinearMethod):
    """A method built from ``LowRankLinear`` modules; composes with every MPC constraint."""

    family = "extension"
    config_class = LoRAConfig
    mpc_support = ("o", "d", "n")
    linear_class: ClassVar[type[LowRankLinear]] = LowRankLinear

    def activation(self) -> nn.Module | None:
        """The nonlinearity between A and B: MPC_n's, otherwise none."""
        return activation_module(self.mpc.activation) if self.mpc.nonlinear else None

    def wrap(self, linear: nn.Linear, target: Target) -> LowRankLinear:
        return self.linear_class(linear, self.rank, self.config.alpha, self.config.dropout, self.activation())

    def low_rank_modules(self, model: nn.Module) -> dict[str, LowRankLinear]:
        return {name: m for name, m in model.named_modules() if isinstance(m, LowRankLinear)}

    def regularizers(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """MPC_o / MPC_d: the weighted pattern loss over all adapted modules (reduced by ``mpc.reduction``)."""
        term = self.mpc.loss([(m.lora_A, m.lora_B) for m in self.low_rank_modules(model).values()])
        return {} if term is None else {f"mpc_{self.mpc.name}": term}

    @torch.no_grad()
    def summary(self, model: nn.Module) -> dict[str, Any]:
        """How far the factors are from MPC's patterns, averaged over modules (with or without MPC):
        ||A A^T - I||_F, ||B^T B - I||_F and ||B^T B - diag(B^T B)||_F."""
        modules = list(self.low_rank_modules(model).values())
        if not modules:
            return {}

        def mean(values: list[torch.Tensor]) -> float:
            return round(float(torch.stack(values).mean()), 6)

        return {"mpc": self.mpc.name, "pattern_errors": {
            "A_rows_orthonormal": mean([orthonormal_error(gram_rows(m.lora_A.float())) for m in modules]),
            "B_columns_orthonormal": mean([orthonormal_error(gram_columns(m.lora_B.float())) for m in modules]),
            "B_columns_orthogonal": mean([off_diagonal_error(gram_columns(m.lora_B.float())) for m in modules]),
        }}


class LoRALinear(LowRankLinear):
    """phi(W) = W + s B A, A (r x in) kaiming-uniform, B (out x r) zero, s = alpha / r."""


@register
class LoRA(LowRankMethod):
    """LoRA on all six linear modules of every layer: phi(W) = W + (alpha / r) B A."""

    name = "lora"
    display_name = "LoRA"
    paper_order = 120
    peft_type = "LORA"
    linear_class = LoRALinear
