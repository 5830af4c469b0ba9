"""AdaLoRA (Zhang et al., 2023): an SVD-shaped update whose ranks are re-allocated during training.

Paper mapping: AdaLoRA's orthogonality regulariser on P and Q *is* MPC_o, so the paper's
"AdaLoRA - MPC_o" row is ``method=adalora mpc=none`` and its "AdaLoRA" row is ``method=adalora mpc=o``.

By default this computes what the AdaLoRA authors' GLUE trainer and Hugging Face PEFT's ``AdaLoraModel``
compute. Their allocator is called after every optimizer step with the global step g counted from 0 (the number
of optimizer steps done before this one); our training loop calls ``after_optimizer_step`` with step = g + 1,
so g = step - 1 below. With T the total number of optimizer steps and tinit, tfinal, deltaT in steps
(each setting is steps if >= 1, else a fraction of T):

- importance of every entry w of P, lambda, Q while g < T - tfinal: sensitivity I = |w * grad| (w after the
  optimizer step, grad of the step), smoothed Ibar <- beta1 Ibar + (1 - beta1) I, uncertainty
  Ubar <- beta2 Ubar + (1 - beta2) |I - Ibar| (against the updated Ibar), score Ibar * Ubar; a triplet's score is
  its lambda's score plus (the mean score of its row of Q plus the mean score of its column of P);
- the total budget b(g) (kept triplets over all modules) follows the cubic schedule of ``budget_at``, from
  init_r to target_r per module. At every g > tinit with g % deltaT == 0 and g < T - tfinal the triplets scoring
  above the (total - b(g))-th smallest score are kept, the others masked (lambda set to 0);
- at g = T - tfinal the mask is taken once more with the importance as it stood (no update at this step), at the
  target budget, and the importance is dropped; for g > T - tfinal every step re-applies that fixed mask.
- ``masking``: ``at_allocation`` (default, the reference): masked lambdas are zeroed only when a mask is taken,
  so between allocations they regrow and a masked triplet still contributes until the final phase;
  ``every_step``: masked lambdas are re-zeroed after every optimizer step, so a masked triplet contributes
  nothing until a later allocation keeps it.
- ``scaling``: ``initial_rank`` (default, the reference): s = alpha / r with r the initial rank, throughout
  (the reference divides by r + 1e-5, a guard for r = 0 that changes s by 1e-5 / r relative);
  ``current_rank``: s = alpha / (number of kept triplets of the module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...architectures import Target
from ...errors import ConfigError, choices_message
from ..base import register
from .lora import LoRAConfig, LowRankMethod
from .trilora import TriLoRALinear

SCALINGS = ("initial_rank", "current_rank")
MASKINGS = ("at_allocation", "every_step")
SCORED = ("lora_A", "lora_B", "lora_E")  # Q, P, lambda


@dataclass(kw_only=True)
class AdaLoRAConfig(LoRAConfig):
    target_r: int | None  # average final rank per module; None = round(2 r / 3) (scripts start at 1.5x target)
    tinit: float  # warmup at full rank before allocating: steps if >= 1, else a fraction of the total steps
    tfinal: float  # final fine-tuning with the mask fixed: steps if >= 1, else a fraction of the total steps
    deltaT: float  # allocate every deltaT steps while the budget decreases: steps if >= 1, else a fraction
    beta1: float  # smoothing of the sensitivity
    beta2: float  # smoothing of the uncertainty
    scaling: str  # one of SCALINGS
    masking: str  # one of MASKINGS


def budget_at(step: int, total_steps: int, init_budget: int, target_budget: int, tinit: int, tfinal: int) -> int:
    """The cubic budget schedule b(g) at the reference's global step g (counted from 0): b0 up to tinit, bT after
    T - tfinal, and in between bT + (b0 - bT) (1 - (g - tinit) / (T - tfinal - tinit))^3, rounded down."""
    if step <= tinit:
        return init_budget
    if step > total_steps - tfinal:
        return target_budget
    progress = (step - tinit) / (total_steps - tfinal - tinit)
    return int(target_budget + (init_budget - target_budget) * (1 - progress) ** 3)


class AdaLoRALinear(TriLoRALinear):
    """phi(W) = W + s P diag(lambda) Q with P = ``lora_B`` (out x r), Q = ``lora_A`` (r x in) ~ N(0, 0.02),
    lambda = ``lora_E`` = 0; ``rank_mask`` marks the kept triplets; s = alpha / r, or alpha / (number of kept
    triplets) when ``scale_by_current_rank``. (TriLoRA's shape and core with AdaLoRA's init and masks.)"""

    a_init = "normal"
    b_init = "normal"

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 activation: nn.Module | None = None, scale_by_current_rank: bool = False) -> None:
        super().__init__(base, rank, alpha, dropout, activation)
        self.scale_by_current_rank = scale_by_current_rank
        self.register_buffer("rank_mask", torch.ones(rank, dtype=torch.bool, device=base.weight.device))

    @property
    def scaling(self) -> float | torch.Tensor:
        if self.scale_by_current_rank:
            return self.alpha / self.rank_mask.sum().clamp(min=1)
        return self.alpha / self.rank

    def apply_mask(self) -> None:
        """Zero the masked lambdas."""
        self.lora_E.masked_fill_(~self.rank_mask, 0.0)


@register
class AdaLoRA(LowRankMethod):
    """AdaLoRA on all six linear modules: phi(W) = W + s P diag(lambda) Q with importance-based rank allocation."""

    name = "adalora"
    display_name = "AdaLoRA"
    paper_order = 140
    peft_type = "ADALORA"
    config_class = AdaLoRAConfig
    linear_class = AdaLoRALinear

    def __init__(self, config: AdaLoRAConfig) -> None:
        super().__init__(config)
        self.target_r = int(config.target_r) if config.target_r is not None else max(1, round(2 * self.rank / 3))
        if not 1 <= self.target_r <= self.rank:
            raise ConfigError(f"adalora target_r must be between 1 and the rank {self.rank}, got {self.target_r}")
        if not (0 < config.beta1 < 1 and 0 < config.beta2 < 1):
            raise ConfigError(f"adalora beta1 and beta2 must lie in (0, 1), got {config.beta1}, {config.beta2}")
        if config.deltaT <= 0 or config.tinit < 0 or config.tfinal < 0:
            raise ConfigError(f"adalora needs deltaT > 0, tinit >= 0 and tfinal >= 0, got deltaT {config.deltaT}, "
                              f"tinit {config.tinit}, tfinal {config.tfinal}")
        if config.scaling not in SCALINGS:
            raise ConfigError(choices_message("adalora scaling", config.scaling, list(SCALINGS)))
        if config.masking not in MASKINGS:
            raise ConfigError(choices_message("adalora masking", config.masking, list(MASKINGS)))
        # smoothed sensitivity Ibar and uncertainty Ubar per scored parameter ("<module>.lora_A", ...)
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_unc: dict[str, torch.Tensor] = {}

    def wrap(self, linear: nn.Linear, target: Target) -> AdaLoRALinear:
        return AdaLoRALinear(linear, self.rank, self.config.alpha, self.config.dropout, self.activation(),
                             scale_by_current_rank=self.config.scaling == "current_rank")

    def adalora_modules(self, model: nn.Module) -> dict[str, AdaLoRALinear]:
        return {name: m for name, m in model.named_modules() if isinstance(m, AdaLoRALinear)}

    def phase_steps(self, total_steps: int) -> tuple[int, int]:
        """(tinit, tfinal) in steps."""
        def steps(value: float) -> int:
            return round(value * total_steps) if value < 1 else int(value)

        return steps(self.config.tinit), steps(self.config.tfinal)

    def interval(self, total_steps: int) -> int:
        """deltaT in steps (at least 1)."""
        value = self.config.deltaT
        return int(value) if value >= 1 else max(1, round(value * total_steps))

    def budget(self, step: int, total_steps: int, num_modules: int) -> int:
        """b(g) at the reference's global step g (``after_optimizer_step``'s step - 1)."""
        return budget_at(step, total_steps, self.rank * num_modules, self.target_r * num_modules,
                         *self.phase_steps(total_steps))

    # --- rank allocation ----------------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        modules = self.adalora_modules(model)
        global_step = step - 1  # the reference counts optimizer steps from 0 (see the module docstring)
        tinit, tfinal = self.phase_steps(total_steps)
        final_start = total_steps - tfinal
        if global_step < final_start:
            self.update_importance(modules)
            if global_step > tinit and global_step % self.interval(total_steps) == 0:
                self.allocate(modules, self.budget(global_step, total_steps, len(modules)))
        elif global_step == final_start:
            # b(T - tfinal) is the target budget (the full one if tinit leaves no budgeting phase)
            self.allocate(modules, self.budget(global_step, total_steps, len(modules)))
            self.exp_avg_ipt, self.exp_avg_unc = {}, {}  # never used again
        if global_step > final_start or self.config.masking == "every_step":
            for module in modules.values():
                module.apply_mask()

    def update_importance(self, modules: dict[str, AdaLoRALinear]) -> None:
        beta1, beta2 = self.config.beta1, self.config.beta2
        for name, module in modules.items():
            for attr in SCORED:
                param = getattr(module, attr)
                if param.grad is None:
                    continue
                key = f"{name}.{attr}"
                sensitivity = (param * param.grad).abs()
                ibar = self.exp_avg_ipt.get(key, torch.zeros_like(param))
                ubar = self.exp_avg_unc.get(key, torch.zeros_like(param))
                ibar = beta1 * ibar + (1 - beta1) * sensitivity
                ubar = beta2 * ubar + (1 - beta2) * (sensitivity - ibar).abs()  # against the updated Ibar
                self.exp_avg_ipt[key], self.exp_avg_unc[key] = ibar, ubar

    def element_score(self, name: str, module: AdaLoRALinear, attr: str) -> torch.Tensor:
        """Ibar * Ubar of every entry of one of the module's parameters (zero before any update)."""
        key = f"{name}.{attr}"
        if key not in self.exp_avg_ipt:
            return torch.zeros_like(getattr(module, attr))
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    def triplet_scores(self, name: str, module: AdaLoRALinear) -> torch.Tensor:
        """Score of each of the module's r triplets: s(lambda_i) + (mean s(Q_i,:) + mean s(P_:,i))."""
        q_and_p = self.element_score(name, module, "lora_A").mean(dim=1) \
            + self.element_score(name, module, "lora_B").mean(dim=0)
        return self.element_score(name, module, "lora_E") + q_and_p  # this order of sums, as the reference

    def allocate(self, modules: dict[str, AdaLoRALinear], budget: int) -> None:
        """Mask every triplet whose score is at most the (total - budget)-th smallest over all modules (ties at
        the threshold are all masked, as in the reference); keep the others; zero the masked lambdas."""
        scores = torch.cat([self.triplet_scores(name, m).float() for name, m in modules.items()])
        drop = scores.numel() - budget
        keep = torch.ones_like(scores, dtype=torch.bool)
        if drop > 0:
            keep = scores > torch.kthvalue(scores, drop).values
        for module, mask in zip(modules.values(), keep.split([m.rank for m in modules.values()]), strict=True):
            module.rank_mask.copy_(mask)
            module.apply_mask()

    def checkpoint_state(self, model: nn.Module) -> dict[str, Any]:
        """The allocator's smoothed importance (the masks are buffers, saved with the model): plain dicts of
        tensors, so that ``torch.load(weights_only=True)`` reads them."""
        return {"exp_avg_ipt": dict(self.exp_avg_ipt), "exp_avg_unc": dict(self.exp_avg_unc)}

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        self.exp_avg_ipt, self.exp_avg_unc = dict(state["exp_avg_ipt"]), dict(state["exp_avg_unc"])

    def summary(self, model: nn.Module) -> dict[str, Any]:
        ranks = {name: int(m.rank_mask.sum()) for name, m in self.adalora_modules(model).items()}
        return {**super().summary(model), "init_r": self.rank, "target_r": self.target_r,
                "scaling": self.config.scaling, "masking": self.config.masking,
                "total_rank": sum(ranks.values()), "final_ranks": ranks}
