"""AdaLoRA (Zhang et al., 2023): an SVD-shaped update whose ranks are re-allocated during training.

Paper mapping: AdaLoRA's orthogonality regulariser on P and Q *is* MPC_o, so the paper's
"AdaLoRA - MPC_o" row is ``method=adalora mpc=none`` and its "AdaLoRA" row is ``method=adalora mpc=o``.

Rank allocation (driven by ``after_optimizer_step``, which the training loop calls after every
optimizer step, while the gradients are still there):

- importance of every entry w of P, lambda, Q: sensitivity I = |w * grad|, smoothed
  Ibar <- beta1 Ibar + (1 - beta1) I, uncertainty Ubar <- beta2 Ubar + (1 - beta2) |I - Ibar|, score Ibar * Ubar;
  a triplet's score is its lambda's score plus the mean scores of its column of P and its row of Q;
- the total budget b(t) (number of kept triplets over all modules) follows the cubic schedule of
  ``budget_at``, from init_r to target_r per module; every deltaT steps while it decreases, the b(t) best
  triplets are kept and the others masked (lambda set to 0); at the start of the final phase the mask is
  fixed at the target budget for the rest of training.
- Masked lambdas are re-zeroed after every step, so a masked triplet contributes nothing until a later
  allocation keeps it again (the reference code lets masked values regrow between allocations).
- s = alpha / current rank (SPEC.md); the current rank is the module's number of kept triplets.
  (The reference implementations divide by the initial rank throughout; at full rank both agree.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ..base import register
from .lora import LoRAConfig, LowRankMethod
from .trilora import TriLoRALinear


@dataclass
class AdaLoRAConfig(LoRAConfig):
    target_r: int | None = None  # average final rank per module; None = round(2 r / 3) (scripts start at 1.5x target)
    tinit: float = 0.15  # warmup at full rank before allocating: steps if >= 1, else a fraction of the total steps
    tfinal: float = 0.5  # final fine-tuning with the mask fixed: steps if >= 1, else a fraction of the total steps
    deltaT: int = 10  # allocate every deltaT steps while the budget decreases
    beta1: float = 0.85  # smoothing of the sensitivity (AdaLoRA's GLUE scripts)
    beta2: float = 0.85  # smoothing of the uncertainty


def budget_at(step: int, total_steps: int, init_budget: int, target_budget: int, tinit: int, tfinal: int) -> int:
    """The cubic budget schedule b(t): b0 up to tinit, then bT + (b0 - bT) (1 - (t - tinit) / (T - tfinal - tinit))^3
    (rounded down) up to T - tfinal, then bT."""
    if step <= tinit:
        return init_budget
    if step > total_steps - tfinal:
        return target_budget
    progress = (step - tinit) / (total_steps - tfinal - tinit)
    return int(target_budget + (init_budget - target_budget) * (1 - progress) ** 3)


class AdaLoRALinear(TriLoRALinear):
    """phi(W) = W + s P diag(lambda) Q with P = ``lora_B`` (out x r), Q = ``lora_A`` (r x in) ~ N(0, 0.02),
    lambda = ``lora_E`` = 0, s = alpha / (number of unmasked triplets); ``rank_mask`` marks the kept triplets.
    (TriLoRA's shape and core with AdaLoRA's init and masks.)"""

    a_init = "normal"
    b_init = "normal"

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 activation: nn.Module | None = None) -> None:
        super().__init__(base, rank, alpha, dropout, activation)
        self.register_buffer("rank_mask", torch.ones(rank, dtype=torch.bool, device=base.weight.device))

    @property
    def scaling(self) -> torch.Tensor:
        return self.alpha / self.rank_mask.sum().clamp(min=1)


@register
class AdaLoRA(LowRankMethod):
    """AdaLoRA on all six linear modules: phi(W) = W + s P diag(lambda) Q with importance-based rank allocation."""

    name = "adalora"
    config_class = AdaLoRAConfig
    linear_class = AdaLoRALinear

    def __init__(self, config: AdaLoRAConfig) -> None:
        super().__init__(config)
        self.target_r = int(config.target_r) if config.target_r is not None else max(1, round(2 * self.rank / 3))
        if not 1 <= self.target_r <= self.rank:
            raise ConfigError(f"adalora target_r must be between 1 and the rank {self.rank}, got {self.target_r}")
        if not (0 < config.beta1 < 1 and 0 < config.beta2 < 1):
            raise ConfigError(f"adalora beta1 and beta2 must lie in (0, 1), got {config.beta1}, {config.beta2}")
        if config.deltaT < 1 or config.tinit < 0 or config.tfinal < 0:
            raise ConfigError("adalora needs deltaT >= 1, tinit >= 0 and tfinal >= 0")
        self.smoothed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # parameter -> (Ibar, Ubar)
        self.mask_fixed = False

    def adalora_modules(self, model: nn.Module) -> dict[str, AdaLoRALinear]:
        return {name: m for name, m in model.named_modules() if isinstance(m, AdaLoRALinear)}

    def phase_steps(self, total_steps: int) -> tuple[int, int]:
        """(tinit, tfinal) in steps."""
        def steps(value: float) -> int:
            return round(value * total_steps) if value < 1 else int(value)

        return steps(self.config.tinit), steps(self.config.tfinal)

    def budget(self, step: int, total_steps: int, num_modules: int) -> int:
        return budget_at(step, total_steps, self.rank * num_modules, self.target_r * num_modules,
                         *self.phase_steps(total_steps))

    # --- rank allocation ----------------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        modules = self.adalora_modules(model)
        tinit, tfinal = self.phase_steps(total_steps)
        final = step > total_steps - tfinal
        if not self.mask_fixed:
            self.update_importance(modules)
        if final and not self.mask_fixed:
            self.allocate(modules, self.budget(step, total_steps, len(modules)))
            self.mask_fixed = True
        elif not final and step > tinit and step % self.config.deltaT == 0:
            self.allocate(modules, self.budget(step, total_steps, len(modules)))
        for module in modules.values():  # masked triplets stay zero whatever the optimizer did
            module.lora_E.mul_(module.rank_mask)

    def update_importance(self, modules: dict[str, AdaLoRALinear]) -> None:
        beta1, beta2 = self.config.beta1, self.config.beta2
        for name, module in modules.items():
            for attr in ("lora_A", "lora_B", "lora_E"):
                param = getattr(module, attr)
                if param.grad is None:
                    continue
                sensitivity = (param * param.grad).abs()
                ibar, ubar = self.smoothed.get(f"{name}.{attr}", (torch.zeros_like(param), torch.zeros_like(param)))
                ibar = beta1 * ibar + (1 - beta1) * sensitivity
                ubar = beta2 * ubar + (1 - beta2) * (sensitivity - ibar).abs()
                self.smoothed[f"{name}.{attr}"] = (ibar, ubar)

    def triplet_scores(self, name: str, module: AdaLoRALinear) -> torch.Tensor:
        """Score of each of the module's r triplets: s(lambda_i) + mean s(Q_i,:) + mean s(P_:,i)."""
        def score(attr: str) -> torch.Tensor:
            ibar, ubar = self.smoothed.get(f"{name}.{attr}", (torch.zeros_like(getattr(module, attr)),) * 2)
            return ibar * ubar

        return score("lora_E") + score("lora_A").mean(dim=1) + score("lora_B").mean(dim=0)

    def allocate(self, modules: dict[str, AdaLoRALinear], budget: int) -> None:
        """Keep the ``budget`` best triplets over all modules; mask (zero) the others."""
        scores = torch.cat([self.triplet_scores(name, m).float() for name, m in modules.items()])
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.topk(scores, min(budget, scores.numel())).indices] = True
        for module, mask in zip(modules.values(), keep.split([m.rank for m in modules.values()]), strict=True):
            module.rank_mask.copy_(mask)
            module.lora_E.mul_(mask)

    def checkpoint_state(self, model: nn.Module) -> dict[str, Any]:
        """The allocator: smoothed importance scores and whether the final mask is fixed (masks are buffers)."""
        return {"smoothed": self.smoothed, "mask_fixed": self.mask_fixed}

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        self.smoothed, self.mask_fixed = dict(state["smoothed"]), bool(state["mask_fixed"])

    def summary(self, model: nn.Module) -> dict[str, Any]:
        ranks = {name: int(m.rank_mask.sum()) for name, m in self.adalora_modules(model).items()}
        return {**super().summary(model), "init_r": self.rank, "target_r": self.target_r,
                "total_rank": sum(ranks.values()), "final_ranks": ranks}
