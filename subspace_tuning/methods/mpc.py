"""The MPC framework (Matrix Pattern Constraints), the paper's second contribution.

MPC adds no parameters; it constrains the pattern of a low-rank update's factors A (r x in) and
B (out x r). It applies to every method with an A and a B (``LowRankMethod``: LoRA, TriLoRA, AdaLoRA,
FLoRA, PA) and is chosen with the ``mpc`` config group:

- ``o``: loss += weight * sum over modules (||A A^T - I_r||_F^2 + ||B^T B - I_r||_F^2)
  (rows of A and columns of B orthonormal; for AdaLoRA this is its own orthogonality regulariser),
- ``d``: loss += weight * sum over modules (||A A^T - I_r||_F^2 + ||B^T B - diag(B^T B)||_F^2)
  (only B's columns mutually orthogonal, their norms free),
- ``n``: a nonlinearity between A and B, dW x = B act(A x) (ReLU by default); no loss term, but the
  update is no longer linear in x, so merging into W is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, choices_message

MPC_NAMES = ("none", "o", "d", "n")
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
    """||G - I||_F^2."""
    return (gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)).pow(2).sum()


def off_diagonal_error(gram: torch.Tensor) -> torch.Tensor:
    """||G - diag(G)||_F^2."""
    return (gram - torch.diag_embed(torch.diagonal(gram))).pow(2).sum()


def mpc_o_penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||A A^T - I||_F^2 + ||B^T B - I||_F^2 for one module (unweighted)."""
    return orthonormal_error(gram_rows(a)) + orthonormal_error(gram_columns(b))


def mpc_d_penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||A A^T - I||_F^2 + ||B^T B - diag(B^T B)||_F^2 for one module (unweighted)."""
    return orthonormal_error(gram_rows(a)) + off_diagonal_error(gram_columns(b))


PENALTIES = {"o": mpc_o_penalty, "d": mpc_d_penalty}


@dataclass(frozen=True)
class MPC:
    """One matrix pattern constraint, from the ``mpc`` config group."""

    name: str = "none"
    weight: float = 0.1  # the paper gives none; 0.1 is the AdaLoRA scripts' orthogonality coefficient
    activation: str = "relu"  # MPC_n only

    def __post_init__(self) -> None:
        if self.name not in MPC_NAMES:
            raise ConfigError(choices_message("mpc", self.name, list(MPC_NAMES)))
        if self.name in PENALTIES and float(self.weight) < 0:
            raise ConfigError(f"mpc.weight must be >= 0, got {self.weight}")
        if self.name == "n":
            activation_module(self.activation)  # fail at config time, not at the first forward

    @classmethod
    def from_config(cls, options: dict[str, Any] | None) -> MPC:
        """``{"name": "o", "weight": 0.1}`` (the mpc group as a dict); ``None`` = no constraint."""
        options = dict(options or {})
        known = {"name", "weight", "activation"}
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

    def penalty(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
        """The weighted loss term of one module, or None for constraints without one (none, n)."""
        if self.name not in PENALTIES:
            return None
        return float(self.weight) * PENALTIES[self.name](a, b)
