"""LoRA-Dash (Si et al., 2024, "Unleashing the Power of Task-Specific Directions in Parameter Efficient
Fine-tuning", arXiv 2409.01035): LoRA that, after a short pre-launch phase, also trains the few singular directions
of W that LoRA's update has changed most (the task-specific directions).

Two phases, counted in optimizer steps (``after_optimizer_step``):

- pre-launch, steps 1 .. t: plain LoRA, phi(W) = W + s B A;
- launch, right after optimizer step t: from the thin SVD W = U diag(sigma) V^T (the shared, cached SVD of
  ``methods/reconstruction/spectral.py``, float32 or better) every direction i gets its change rate
  |u_i^T (s B A) v_i| / sigma_i, and the s directions with the largest rates are kept as frozen buffers U_s, V_s;
- dash, steps t + 1 ..: phi(W) = W + s B A + U_s diag(c) V_s^T, A, B and the coefficients c train together.

c (s per module, zero) is a parameter from the moment the method is applied, so the optimizer holds it from the
start. While U_s and V_s are zero its gradient is exactly zero, and AdamW leaves a zero parameter with zero
gradient at zero (moments stay zero, weight decay multiplies zero), so phi(W) is LoRA's until the launch.

Paper vs the authors' Subspace-Tuning toolkit (docs/methods.md, LoRA-Dash; where they disagree we follow the paper):

- t counts training steps in the paper; the toolkit counts forward calls of each layer (evaluation forwards and
  gradient-accumulation micro-batches included). Here: optimizer steps, as a step count (>= 1) or a fraction of
  the run (< 1), read by ``config.steps_of``. Defaults t = 100, s = 8, the toolkit's values.
- The toolkit switches the coefficients' ``requires_grad`` on at the launch, so AdamW's moments and bias
  correction for c start there; here c is in the optimizer from step 1 with zero gradients, so at the launch its
  step count is already t: the moments start at zero all the same, but their bias corrections differ, so for
  the same gradients c's Adam steps after the launch are up to 2.1x the toolkit's (14 steps after it, at t = 100
  and betas (0.9, 0.999); 1.4x after 100 steps, 1.03x after 1000).
- The toolkit takes a fresh SVD of W in the weight's dtype at the launch; here it is the shared cached one (W is
  frozen, so it is the same decomposition), in float32 or better.
- The toolkit does not merge the dash term; phi(W) is linear in x, so here it merges.
- As in the toolkit, the dash term reads the dropped-out input of the LoRA branch (dropout is 0 by default) and is
  not scaled by s.

What is saved: A, B, c and the buffers U_s, V_s and the chosen indices (so a run loaded for prediction, export or a
resumed run has the directions it trained with); the launch step and the chosen indices are also in
``checkpoint_state``, so a resumed run never launches twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...architectures import Target
from ...config import steps_of
from ...errors import ConfigError
from ...validate import steps_or_fraction
from ..base import register
from ..extension.lora import LoRAConfig, LowRankLinear, LowRankMethod
from ..reconstruction.spectral import thin_svds

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LoRADashConfig(LoRAConfig):
    prelaunch_steps: float  # the paper's t: steps if >= 1, else a fraction of the run (config.steps_of)
    num_directions: int  # the paper's s: task-specific directions per module


class LoRADashLinear(LowRankLinear):
    """phi(W) x = W x + s B A x + U_s diag(c) V_s^T x; A kaiming-uniform, B = 0 and c = 0, U_s (out x k) and
    V_s^T (k x in, ``dash_Vh``) zero buffers until the launch fills them (``set_directions``). Trainable per module:
    r (in + out) + k. Exactly W at init (B = 0, U_s = V_s = 0)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, num_directions: int) -> None:
        super().__init__(base, rank, alpha, dropout)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.num_directions = num_directions
        self.dash_coef = nn.Parameter(torch.zeros(num_directions, **factory))
        self.register_buffer("dash_U", torch.zeros(base.out_features, num_directions, **factory))
        self.register_buffer("dash_Vh", torch.zeros(num_directions, base.in_features, **factory))
        # which singular directions of W were chosen (-1: not launched yet), for the summary and the checkpoint
        self.register_buffer("dash_index", torch.full((num_directions,), -1, dtype=torch.long,
                                                      device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one (r + k)-wide branch: [A; V_s^T] down, gains [s, ..., s, c], [B, U_s] up (one GEMM each way)
        down = torch.cat((self.lora_A, self.dash_Vh))
        up = torch.cat((self.lora_B, self.dash_U), dim=1)
        gain = torch.cat((self.dash_coef.new_full((self.rank,), self.scaling), self.dash_coef))
        return self.base_plus(x, (self.dropout(x) @ down.T) * gain, up)

    def delta_weight(self) -> torch.Tensor:
        """s B A + U_s diag(c) V_s^T (out x in)."""
        return super().delta_weight() + (self.dash_U * self.dash_coef) @ self.dash_Vh

    def change_rates(self, u: torch.Tensor, sigma: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
        """|u_i^T (s B A) v_i| / sigma_i for every singular triplet, in the SVD's dtype. u_i^T B A v_i is the row
        sum of (U^T B) * (V^T A^T), so no out x in matrix is formed; a zero sigma_i counts as the smallest
        positive number (a direction W lacks entirely is as new as a direction can be)."""
        b, a = self.lora_B.detach().to(u.dtype), self.lora_A.detach().to(u.dtype)
        coordinates = self.scaling * ((u.T @ b) * (vh @ a.T)).sum(dim=1)
        return coordinates.abs() / sigma.clamp_min(torch.finfo(sigma.dtype).tiny)

    @torch.no_grad()
    def set_directions(self, u: torch.Tensor, sigma: torch.Tensor, vh: torch.Tensor) -> None:
        """Keep the ``num_directions`` singular directions of W with the largest change rates."""
        index = torch.topk(self.change_rates(u, sigma, vh), self.num_directions).indices
        self.dash_U.copy_(u[:, index])
        self.dash_Vh.copy_(vh[index])
        self.dash_index.copy_(index)


@register
class LoRADash(LowRankMethod):
    """LoRA-Dash on all six linear modules: LoRA for t optimizer steps, then phi(W) = W + s B A + U_s diag(c) V_s^T
    with the s singular directions of W whose change rates under s B A are largest.

    MPC_o and MPC_d constrain A and B as for LoRA. MPC_n is refused: the directions are chosen by projecting the
    matrix s B A onto W's singular directions, and with a nonlinearity between A and B there is no such matrix."""

    name = "lora_dash"
    display_name = "LoRA-Dash"
    paper_order = 260
    family = "combination"
    config_class = LoRADashConfig
    mpc_support = ("o", "d")
    linear_class = LoRADashLinear

    def __init__(self, config: LoRADashConfig) -> None:
        super().__init__(config)
        problems = []
        if not (isinstance(config.num_directions, int) and not isinstance(config.num_directions, bool)
                and config.num_directions >= 1):
            problems.append(f"num_directions (the paper's s) must be an integer >= 1, got {config.num_directions!r}")
        t = config.prelaunch_steps
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and steps_or_fraction(t)[1] is None):
            problems.append(f"prelaunch_steps (the paper's t) must be an integer >= 1 (steps) or a number in (0, 1) "
                            f"(a fraction of the run), got {config.prelaunch_steps!r}")
        if problems:
            raise ConfigError(f"lora_dash: {'; '.join(problems)}")
        self.launched_at: int | None = None  # the optimizer step after which the directions were chosen
        self.warned_short_run = False

    def check_rank(self, target: Target, linear: nn.Linear) -> None:
        super().check_rank(target, linear)
        if self.config.num_directions > min(linear.in_features, linear.out_features):
            raise ConfigError(f"lora_dash num_directions {self.config.num_directions} is larger than module "
                              f"{target.name} has singular directions ({linear.out_features} x "
                              f"{linear.in_features}); choose num_directions <= "
                              f"{min(linear.in_features, linear.out_features)}")

    def wrap(self, linear: nn.Linear, target: Target) -> LoRADashLinear:
        return LoRADashLinear(linear, self.rank, self.config.alpha, self.config.dropout, self.config.num_directions)

    def dash_modules(self, model: nn.Module) -> dict[str, LoRADashLinear]:
        return {name: m for name, m in model.named_modules() if isinstance(m, LoRADashLinear)}

    def launch_step(self, total_steps: int) -> int:
        """t in optimizer steps."""
        return steps_of(self.config.prelaunch_steps, total_steps)

    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        if self.launched_at is not None:
            return
        launch_step = self.launch_step(total_steps)
        if launch_step >= total_steps and not self.warned_short_run:
            # a run no longer than t never trains c: it is LoRA under another name, which a result table must not hide
            log.warning("lora_dash: the pre-launch phase (t = %d optimizer steps) is as long as the run (%d steps), "
                        "so the dash directions never train and this run is plain LoRA; give "
                        "method.prelaunch_steps a fraction of the run (e.g. 0.2) or fewer steps", launch_step,
                        total_steps)
            self.warned_short_run = True
        if step >= launch_step:
            self.launch(model, step)

    @torch.no_grad()
    def launch(self, model: nn.Module, step: int) -> None:
        """Choose every module's directions from the SVD of its frozen W (one batched, cached call for all)."""
        modules = list(self.dash_modules(model).values())
        weights = [m.base.weight.to(torch.promote_types(m.base.weight.dtype, torch.float32)) for m in modules]
        for module, (u, sigma, vh) in zip(modules, thin_svds(weights), strict=True):
            module.set_directions(u, sigma, vh)
        self.launched_at = step
        log.info("lora_dash: launched after optimizer step %d; %d directions chosen in each of %d modules", step,
                 self.config.num_directions, len(modules))

    def checkpoint_state(self, model: nn.Module) -> dict[str, Any]:
        """The phase (the launch step, None before it) and the chosen directions' indices; the directions
        themselves are buffers, saved with the model."""
        return {"launched_at": self.launched_at,
                "directions": {name: m.dash_index.clone() for name, m in self.dash_modules(model).items()}}

    @torch.no_grad()
    def load_checkpoint_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        self.launched_at = state["launched_at"]
        for name, module in self.dash_modules(model).items():
            module.dash_index.copy_(state["directions"][name])

    def summary(self, model: nn.Module) -> dict[str, Any]:
        return {**super().summary(model), "num_directions": self.config.num_directions,
                "launched_at": self.launched_at,
                "directions": {name: m.dash_index.tolist() for name, m in self.dash_modules(model).items()}}
