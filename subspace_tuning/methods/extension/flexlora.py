"""FlexLoRA (Liu, Si and Jia, 2026, ICLR; arXiv 2601.22905, "FlexLoRA: Entropy-Guided Flexible Low-Rank
Adaptation"): an SVD-shaped update whose ranks are both pruned and grown during training, under a constant budget.

phi(W) = W + s P diag(lambda * m) Q: AdaLoRA's triplets (P = ``lora_B``, Q = ``lora_A`` ~ N(0, 0.02), lambda =
``lora_E`` = 0) with a rank mask m (``rank_mask``). Every module has r slots (the rank group, what is counted, as
for AdaLoRA); ``active_r`` of them are active at the start (the budget, default round(2 r / 3)), so a module can
grow up to r directions and shrink down to one while the total number of active directions stays constant.
s = alpha / active_r (the toolkit divides by the initial number of directions, which never changes).

The allocation, counted in optimizer steps through ``after_optimizer_step``, with the reference's global step
g = step - 1 as for our AdaLoRA and T, tinit, tfinal, deltaT in steps (each setting is steps if >= 1, else a
fraction of T): at every g with tinit < g < T - tfinal and (g - tinit) % deltaT == 0, and b(g) > 0,

1. each module's importance is the normalised spectral-energy entropy of its active lambdas,
   H = -sum_i p_i log(p_i + 1e-8) / log(k), p_i = lambda_i^2 / sum_j lambda_j^2, k its number of active directions
   (1: energy spread evenly, the matrix uses all its directions; 0: concentrated in one, the others are redundant);
2. the b(g) modules of lowest H among those with more than one direction each lose their direction of least
   energy (smallest |lambda|); the b(g) modules of highest H among those with a free slot each gain one
   (importance taken once, before either change; a module may do both; fewer than b(g) when fewer modules qualify,
   the same number on both sides, so the budget never changes);
3. a gained direction is zero-impact: lambda = 0, its row of Q and column of P drawn from N(0, grow_std^2), so
   the output does not change when it is added. The draws come from the method's own generator, seeded with the
   run's seed when the method is applied and saved in the checkpoint: every process of a data-parallel run draws
   the same directions (the global generator differs between processes once dropout has drawn for batches of
   other lengths), and a resumed run draws what the uninterrupted one did.

Directions can move only with 2 <= active_r < r (the mean rank must leave a module room to lose one and another
room to gain one), so a run at rank 1 or 2, or with active_r 1 or r, is refused at its first optimizer step; a
run whose allocation window holds no allocation (tinit + deltaT >= T - tfinal) says so once. b is at most the
number of adapted modules.

b(g) is ``b`` throughout (``b_schedule: constant``, the toolkit's default), or with ``b_schedule: cubic``
round(b (1 - progress^3)), progress = (g - tinit) / (T - tfinal - tinit), falling to 0 at T - tfinal. After
T - tfinal the ranks stay fixed.

Where this differs from the authors' toolkit (loralib/flexlora.py of the Subspace-Tuning repository), and why
(docs/methods.md, FlexLoRA):

- The toolkit replaces the factors by new, resized ``nn.Parameter``s at each allocation; an optimizer built
  before then keeps the old tensors, so a changed module would stop training unless the optimizer is rebuilt.
  Here the factors keep their shape (r slots) and a mask selects the active ones, so the optimizer, the checkpoint
  and the parameter count stay valid; the price is a cap of r directions per module (the toolkit has none).
  The optimizer's moments of a re-used slot are not reset (the method hook does not own the optimizer).
- The direction to prune is the one of least energy, |lambda| smallest, as the paper's spectral-energy criterion
  says; the toolkit takes ``argmin(lambda)``, the most negative lambda, which can be the most energetic one.
- Entropy where the toolkit divides 0 by 0: a one-direction module counts as evenly spread (H = 1; the toolkit's
  NaN sorts above every number, so it is also grown first there) and a module whose active lambdas are all zero
  counts as H = 0 (no energy to spread).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...architectures import Target
from ...errors import ConfigError, choices_message
from ...validate import steps_or_fraction
from ..base import register
from .adalora import AdaLoRA, AdaLoRALinear
from .lora import LoRAConfig, LowRankMethod

B_SCHEDULES = ("constant", "cubic")
log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FlexLoRAConfig(LoRAConfig):
    active_r: int | None  # active directions per module at the start, the constant budget; None = round(2 r / 3)
    tinit: float  # no allocation before: steps if >= 1, else a fraction of the total steps
    tfinal: float  # ranks fixed for the last tfinal steps: steps if >= 1, else a fraction
    deltaT: float  # allocate every deltaT steps after tinit: steps if >= 1, else a fraction
    b: int  # modules that lose one direction, and modules that gain one, per allocation
    b_schedule: str  # one of B_SCHEDULES
    grow_std: float  # standard deviation of a gained direction's row of Q and column of P


def spectral_entropy(lambdas: torch.Tensor) -> float:
    """Normalised entropy of the energy lambda_i^2 of a module's active directions, in [0, 1] (module docstring)."""
    if lambdas.numel() <= 1:
        return 1.0
    energy = lambdas.detach().double() ** 2
    total = energy.sum()
    if total == 0:
        return 0.0
    p = energy / total
    return float(-(p * torch.log(p + 1e-8)).sum() / math.log(lambdas.numel()))


def is_number(value: Any) -> bool:
    """A real int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def default_active_r(active_r: int | None, rank: int) -> int:
    """``active_r``, or round(2 r / 3) (at least 1) when null."""
    return active_r if active_r is not None else max(1, round(2 * rank / 3))


def settings_problems(config: FlexLoRAConfig, rank: int) -> list[str]:
    """Why each of ``config``'s FlexLoRA settings is not allowed (empty when all are). Step settings are whole
    steps >= 1 or fractions in (0, 1) of the run (``validate.steps_or_fraction``; tinit and tfinal may be 0)."""
    problems = []
    active_r = config.active_r
    if active_r is not None and not (isinstance(active_r, int) and not isinstance(active_r, bool)
                                     and 1 <= active_r <= rank):
        problems.append(f"active_r must be null or an integer between 1 and the rank {rank}, got {active_r!r}")
    for name, zero_allowed in (("tinit", True), ("tfinal", True), ("deltaT", False)):
        value = getattr(config, name)
        if not (is_number(value) and (steps_or_fraction(value)[1] is None or zero_allowed and value == 0)):
            problems.append(f"{name} must be {'0, ' if zero_allowed else ''}an integer >= 1 (steps) or a number "
                            f"in (0, 1) (a fraction of the run), got {value!r}")
    if not (isinstance(config.b, int) and not isinstance(config.b, bool) and config.b >= 1):
        problems.append(f"b must be an integer >= 1 (b = 0 would never move a direction), got {config.b!r}")
    if config.b_schedule not in B_SCHEDULES:
        problems.append(choices_message("b_schedule", config.b_schedule, list(B_SCHEDULES)))
    if not (is_number(config.grow_std) and math.isfinite(config.grow_std) and config.grow_std > 0):
        problems.append(f"grow_std must be a finite number > 0, got {config.grow_std!r}")
    return problems


def b_at(step: int, total_steps: int, b: int, tinit: int, tfinal: int, schedule: str) -> int:
    """Modules changed per allocation at global step g: b, or b (1 - progress^3) rounded (``cubic``)."""
    if schedule == "constant":
        return b
    span = total_steps - tfinal - tinit
    progress = min(max((step - tinit) / span, 0.0), 1.0) if span > 0 else 1.0
    return round(b * (1 - progress ** 3))


class FlexLoRALinear(AdaLoRALinear):
    """phi(W) = W + s P diag(lambda * m) Q; AdaLoRA's factors and init, the first ``active_r`` of the r slots active
    (``rank_mask``), s = alpha / active_r. The mask acts in the forward pass, so an inactive slot contributes
    nothing and gets no gradient."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, active_r: int,
                 activation: nn.Module | None = None) -> None:
        super().__init__(base, rank, alpha, dropout, activation)
        self.active_r = active_r
        self.rank_mask[active_r:] = False

    @property
    def scaling(self) -> float:
        return self.alpha / self.active_r

    def core(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.where(self.rank_mask, self.lora_E, torch.zeros_like(self.lora_E))

    @torch.no_grad()
    def prune(self) -> int:
        """Deactivate the active direction of least energy (smallest |lambda|); its slot index."""
        energy = torch.where(self.rank_mask, self.lora_E.abs(), torch.full_like(self.lora_E, math.inf))
        slot = int(torch.argmin(energy))
        self.rank_mask[slot] = False
        self.lora_E[slot] = 0.0
        return slot

    @torch.no_grad()
    def grow(self, std: float, generator: torch.Generator) -> int:
        """Activate the first free slot as a zero-impact direction (lambda = 0, P and Q entries ~ N(0, std^2),
        drawn in float32 on the CPU from ``generator``); its slot index."""
        slot = int(torch.nonzero(~self.rank_mask)[0])
        self.lora_A[slot] = (std * torch.randn(self.in_features, generator=generator)).to(self.lora_A)
        self.lora_B[:, slot] = (std * torch.randn(self.out_features, generator=generator)).to(self.lora_B)
        self.lora_E[slot] = 0.0
        self.rank_mask[slot] = True
        return slot


@register
class FlexLoRA(AdaLoRA):
    """FlexLoRA on all six linear modules: phi(W) = W + (alpha / active_r) P diag(lambda * m) Q, ranks pruned and
    grown by spectral-energy entropy under a constant budget. Composes with MPC_o / MPC_d (on all r slots of Q and
    P, as for AdaLoRA; the toolkit trains it with AdaLoRA's orthogonality regulariser, i.e. mpc=o) and MPC_n."""

    name = "flexlora"
    display_name = "FlexLoRA"
    paper_order = 270
    peft_type = None  # PEFT has no FlexLoRA
    config_class = FlexLoRAConfig
    linear_class = FlexLoRALinear

    def __init__(self, config: FlexLoRAConfig) -> None:
        LowRankMethod.__init__(self, config)  # AdaLoRA's own checks are of settings FlexLoRA does not have
        problems = settings_problems(config, self.rank)
        if problems:
            raise ConfigError(f"flexlora settings: {'; '.join(problems)}")
        self.active_r = default_active_r(config.active_r, self.rank)
        # the growth draws, on a generator of the method's own: seeded from the run's seed (``adapt``), the same on
        # every process of a data-parallel run whatever else drew random numbers, and saved in the checkpoint
        self.generator = torch.Generator()
        self.importance: dict[str, float] = {}  # H of every module at the last allocation
        self.moves = 0  # directions moved so far (each a prune and a grow)
        self.checked_run = False  # check_run, at the first optimizer step

    def wrap(self, linear: nn.Linear, target: Target) -> FlexLoRALinear:
        return FlexLoRALinear(linear, self.rank, self.config.alpha, self.config.dropout, self.active_r,
                              self.activation())

    def adapt(self, model: nn.Module) -> None:
        super().adapt(model)
        modules = len(self.adalora_modules(model))
        if self.config.b > modules:
            raise ConfigError(f"flexlora b {self.config.b} is larger than the {modules} adapted modules of this "
                              f"model: at most b modules lose a direction and b gain one per allocation; choose "
                              f"b <= {modules} (the toolkit's 4, or about a tenth of the modules)")
        # torch.initial_seed() is the run's seed (train.py seeds every process with it before applying the method)
        self.generator.manual_seed(torch.initial_seed())

    # --- rank allocation ----------------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        global_step = step - 1  # the reference counts optimizer steps from 0 (extension/adalora.py)
        tinit, tfinal = self.phase_steps(total_steps)
        if not self.checked_run:
            self.check_run(total_steps, tinit, tfinal)
        if not tinit < global_step < total_steps - tfinal or (global_step - tinit) % self.interval(total_steps):
            return
        b = b_at(global_step, total_steps, self.config.b, tinit, tfinal, self.config.b_schedule)
        if b > 0:
            self.reallocate(self.adalora_modules(model), b)

    def check_run(self, total_steps: int, tinit: int, tfinal: int) -> None:
        """Before the first allocation of a training run: refuse a rank at which no direction can ever move, and
        warn when no allocation falls in the run. Neither is a construction-time error: a model at any rank is a
        valid FlexLoRA model to count, load, merge or export; only training it as FlexLoRA is pointless."""
        self.checked_run = True
        if not 2 <= self.active_r < self.rank:
            # with 1 active direction per module (the mean) none can lose one, with all r slots active none can
            # gain one: the ranks could never move, and the run would be AdaLoRA's triplets at a fixed rank under
            # FlexLoRA's name in every result table
            default = " (the default, round(2 rank / 3))" if self.config.active_r is None else ""
            raise ConfigError(f"flexlora cannot train at rank {self.rank} with active_r {self.active_r}{default}: "
                              "directions can move between modules only with 2 <= active_r < rank (a module keeps "
                              "at least one direction and holds at most rank), so its ranks would never move; use "
                              "rank >= 3, or set method.active_r between 2 and rank - 1")
        if tinit + self.interval(total_steps) >= total_steps - tfinal:
            # the first allocation, at g = tinit + deltaT, would fall outside the window: nothing ever moves, a run
            # that a result table must not show as FlexLoRA without a word
            log.warning("flexlora: no allocation falls in this run of %d optimizer steps (tinit %d + deltaT %d >= "
                        "T - tfinal = %d), so the ranks never move and this run is AdaLoRA's triplets at rank "
                        "active_r; use fractions of the run for method.tinit, method.tfinal and method.deltaT (e.g. "
                        "0.1, 0.3, 0.05) or a longer run", total_steps, tinit, self.interval(total_steps),
                        total_steps - tfinal)

    def reallocate(self, modules: dict[str, FlexLoRALinear], b: int) -> None:
        """One allocation (module docstring, steps 1-3): up to b modules lose a direction, as many gain one."""
        self.importance = {name: spectral_entropy(m.lora_E[m.rank_mask]) for name, m in modules.items()}
        names = list(modules)
        # ascending importance (a stable sort: ties keep module order), so that the choice is deterministic
        order = sorted(range(len(names)), key=lambda i: self.importance[names[i]])
        shrink = [names[i] for i in order if modules[names[i]].rank_mask.sum() > 1]
        grow = [names[i] for i in reversed(order) if not modules[names[i]].rank_mask.all()]
        # with 2 <= active_r < r (check_run) both lists are non-empty: the mean rank, active_r, is above 1 and
        # below r
        n = min(b, len(shrink), len(grow))
        for name in shrink[:n]:
            modules[name].prune()
        for name in grow[:n]:
            modules[name].grow(self.config.grow_std, self.generator)
        self.moves += n

    def checkpoint_state(self, model: nn.Module) -> dict[str, Any]:
        """The rank pattern (also a buffer of each module), the last importance and the move count: plain data and
        tensors, so that ``torch.load(weights_only=True)`` reads them."""
        return {"rank_masks": {name: m.rank_mask.clone() for name, m in self.adalora_modules(model).items()},
                "importance": dict(self.importance), "moves": self.moves, "generator": self.generator.get_state()}

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        for name, module in self.adalora_modules(model).items():
            module.rank_mask.copy_(state["rank_masks"][name])
        self.importance, self.moves = dict(state["importance"]), int(state["moves"])
        if "generator" in state:
            self.generator.set_state(state["generator"])
        else:  # a checkpoint written before the generator was saved: the run goes on, its later growth draws differ
            log.warning("flexlora: the checkpoint has no growth generator state (written by an older version); "
                        "directions grown from here on differ from an uninterrupted run's")

    def summary(self, model: nn.Module) -> dict[str, Any]:
        ranks = {name: int(m.rank_mask.sum()) for name, m in self.adalora_modules(model).items()}
        return {**LowRankMethod.summary(self, model), "slots": self.rank, "active_r": self.active_r,
                "b": self.config.b, "b_schedule": self.config.b_schedule, "moves": self.moves,
                "total_rank": sum(ranks.values()), "final_ranks": ranks}
