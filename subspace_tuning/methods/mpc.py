"""The MPC framework (Matrix Pattern Constraints), the paper's second contribution.

MPC adds no parameters; it constrains the pattern of a low-rank update's factors A (r x in) and
B (out x r). It applies to the methods whose class lists the constraint in ``mpc_support`` (those with an A and
a B, docs/methods.md) and is chosen with the ``mpc`` config group:

- ``o``: the rows of A and the columns of B orthonormal, deviations E_A = A A^T - I_r and E_B = B^T B - I_r
  (for AdaLoRA this is its own orthogonality regulariser on Q and P),
- ``d``: E_A as for ``o``, E_B = B^T B - diag(B^T B) (only B's columns mutually orthogonal, their norms free),
- ``n``: a nonlinearity between A and B, dW x = B act(A x) (ReLU by default); no loss term, but the
  update is no longer linear in x, so merging into W is refused.

How ``o`` and ``d`` reduce the deviations to one loss term (``mpc.reduction``):

- ``mean_norm`` (default): loss += weight * mean over the factor matrices of ||E||_F, not squared, where
  every A and every B of every adapted module counts once (2 x modules terms). This is AdaLoRA's orthogonality
  regulariser (Zhang et al., 2023) as its authors' GLUE trainer and Hugging Face PEFT compute it, and what the
  paper's rows were trained with.
- ``sum_squared``: loss += weight * sum over modules (||E_A||_F^2 + ||E_B||_F^2), the paper's equations
  (20)-(21) written literally; at LoRA's init on roberta-base this is hundreds of times larger than the
  mean-of-norms form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, choices_message

MPC_NAMES = ("none", "o", "d", "n")
REDUCTIONS = ("mean_norm", "sum_squared")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh}


def activation_module(name: str) -> nn.Module:
    """The nonlinearity called ``name`` (used by MPC_n, PA and the bottleneck adapters)."""
    if name not in ACTIVATIONS:
        raise ConfigError(choices_message("activation", name, list(ACTIVATIONS)))
    return ACTIVATIONS[name]()


def gram_rows(a: torch.Tensor) -> torch.Tensor:
    """A A^T (r x r) of a down projection A (r x in)."""
    return a @ a.T


def gram_columns(b: torch.Tensor) -> torch.Tensor:
    """B^T B (r x r) of an up projection B (out x r)."""
    return b.T @ b


def orthonormal_error(gram: torch.Tensor) -> torch.Tensor:
    """||G - I||_F (not squared)."""
    return torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype))


def off_diagonal_error(gram: torch.Tensor) -> torch.Tensor:
    """||G - diag(G)||_F (not squared)."""
    # matrix_norm's gradient is 0 (not NaN) at a zero matrix, e.g. B = 0 at LoRA's init
    return torch.linalg.matrix_norm(gram - torch.diag_embed(torch.diagonal(gram)))


def factor_errors(name: str, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||E_A||_F, ||E_B||_F) of one module under constraint ``name`` (``o`` or ``d``)."""
    b_error = orthonormal_error if name == "o" else off_diagonal_error
    return orthonormal_error(gram_rows(a)), b_error(gram_columns(b))


@dataclass(frozen=True)
class MPC:
    """One matrix pattern constraint, from the ``mpc`` config group."""

    name: str = "none"
    weight: float = 0.1  # the paper gives none; 0.1 is the AdaLoRA scripts' orthogonality coefficient
    activation: str = "relu"  # MPC_n only
    reduction: str = "mean_norm"  # o and d only: mean_norm (AdaLoRA's regulariser) | sum_squared (eqs. (20)-(21))

    def __post_init__(self) -> None:
        if self.name not in MPC_NAMES:
            raise ConfigError(choices_message("mpc", self.name, list(MPC_NAMES)))
        if self.has_loss and float(self.weight) < 0:
            raise ConfigError(f"mpc.weight must be >= 0, got {self.weight}")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(choices_message("mpc.reduction", self.reduction, list(REDUCTIONS)))
        if self.name == "n":
            activation_module(self.activation)  # fail at config time, not at the first forward

    @classmethod
    def from_config(cls, options: dict[str, Any] | None) -> MPC:
        """``{"name": "o", "weight": 0.1}`` (the mpc group as a dict); ``None`` = no constraint."""
        options = dict(options or {})
        known = {"name", "weight", "activation", "reduction"}
        if set(options) - known:
            raise ConfigError(f"mpc has no setting {sorted(set(options) - known)[0]!r}; "
                              f"its settings are: {', '.join(sorted(known))}")
        return cls(**options)

    @property
    def active(self) -> bool:
        return self.name != "none"

    @property
    def nonlinear(self) -> bool:
        return self.name == "n"

    @property
    def has_loss(self) -> bool:
        """o and d add a loss term; none and n do not."""
        return self.name in ("o", "d")

    def loss(self, factors: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
        """The weighted loss term over all adapted modules, given as (A, B) pairs; None for none and n
        (and when there are no modules)."""
        if not self.has_loss or not factors:
            return None
        errors = [error for a, b in factors for error in factor_errors(self.name, a, b)]
        if self.reduction == "sum_squared":
            return float(self.weight) * torch.stack(errors).pow(2).sum()
        return float(self.weight) * torch.stack(errors).mean()
