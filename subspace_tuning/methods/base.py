"""The method interface shared by every PEFT method.

A method is a class (registered by name, its catalogue entry in class variables, docs/methods.md), the types of
its settings (a ``MethodConfig`` dataclass) and their values (``conf/method/<name>.yaml``). The class

- picks the modules it adapts (``targets``, kinds from ``architectures.ALL_LINEAR``),
- wraps or modifies them (``adapt``) so that only its own parameters and the head train,
- may add loss terms (``regularizers``, e.g. the MPC constraints) and act after each optimizer step
  (``after_optimizer_step``, e.g. AdaLoRA's rank allocation),
- folds itself into plain ``nn.Linear`` weights (``merge``) when phi(W) is linear in the input,
- saves and loads only what it trains (``state_dict`` / ``load_state_dict``).

A per-module method only writes an ``AdaptedLinear`` subclass and a ``LinearMethod`` subclass whose
``wrap`` builds it; see ``extension/lora.py`` for the smallest example.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..architectures import ALL_LINEAR, Target, find_targets, head_parameter_names, replace_module
from ..errors import ConfigError, NotMergeableError, choices_message
from .mpc import MPC

FAMILIES = ("reference", "reconstruction", "extension", "combination")


@dataclass(kw_only=True)
class MethodConfig:
    """A method's settings: the field types only. The values live in ``conf/method/<name>.yaml``, one key per
    field (``build_method`` fills missing ones from there); ``rank`` is the run's ``rank`` (None if rank-free)."""

    rank: int | None


@dataclass(kw_only=True)
class LinearConfig(MethodConfig):
    """Settings of a method that adapts linear modules."""

    targets: list[str] | None  # module kinds (architectures.ALL_LINEAR); None = the method's default placement


class AdapterModule(nn.Module):
    """Marker base: parameters and buffers of these modules (except a wrapped ``base``) are adapter state."""


class AdaptedLinear(AdapterModule):
    """A frozen ``nn.Linear`` (``self.base``) plus a method's trainable parts."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        base.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, so code that reads ``module.weight`` (dtype, device) keeps working."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def base_plus(self, x: torch.Tensor, h: torch.Tensor, up: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """W x (+ b) + h up^T for x (..., in), h (..., k), up (out x k).

        For speed (docs/benchmarks.md): a second GEMM adds the update into the base GEMM's output in place (addmm_),
        so no (tokens x out) temporary is made and the activations are passed over three times fewer forward and
        once fewer backward than by (W x + b) + h up^T. The casts matter only under autocast."""
        x2d = x.reshape(-1, x.shape[-1])
        y = self.base(x2d) if bias else nn.functional.linear(x2d, self.base.weight)
        y.addmm_(h.reshape(-1, h.shape[-1]).to(y.dtype), up.T.to(y.dtype))
        return y.view(*x.shape[:-1], y.shape[-1])

    def merged_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """phi(W) and the bias as plain tensors. Methods with a non-linear update raise."""
        raise NotMergeableError(f"{type(self).__name__} is not linear in its input and cannot be merged")

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A new plain ``nn.Linear`` computing phi(W); ``self.base`` is left untouched."""
        weight, bias = self.merged_weight_and_bias()
        merged = nn.Linear(self.in_features, self.out_features, bias=bias is not None,
                           device=weight.device, dtype=self.base.weight.dtype)
        merged.weight.copy_(weight)
        if bias is not None:
            merged.bias.copy_(bias)
        return merged


class Method:
    """Base class of all methods. Subclasses set the class variables and override ``adapt``.

    The class variables are the method's catalogue entry (docs/methods.md): tools read them from the registry
    (``catalogue()``, ``method_class(name)``) instead of keeping their own lists. A registered class must set
    ``name``, ``family``, ``display_name`` and ``paper_order`` itself (``register`` checks it)."""

    name: ClassVar[str]  # the config name: method=<name>, conf/method/<name>.yaml, the run folder
    family: ClassVar[str]  # one of FAMILIES: the paper's taxonomy
    display_name: ClassVar[str]  # as the paper writes it ("LoRA", "(IA)3", "Fully FT")
    paper_order: ClassVar[int]  # row order in the paper's tables (methods the paper has no row for come last)
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    uses_rank: ClassVar[bool] = True  # False: rank-free, the rank group does not apply (one row, "no-rank" folder)
    identity_at_init: ClassVar[bool] = True  # False only where the paper's init is not an identity
    mergeable: ClassVar[bool] = True  # merge() gives plain nn.Linear weights (MPC_n makes it False at run time)
    peft_type: ClassVar[str | None] = None  # Hugging Face PEFT's PeftType of the counterpart; None: PEFT has none
    default_targets: ClassVar[tuple[str, ...]] = ALL_LINEAR
    mpc_support: ClassVar[tuple[str, ...]] = ()  # MPC constraints it composes with (methods with A and B)
    mpc: MPC = MPC()  # set by build_method from the mpc group; MPC() = none

    @property
    def merges(self) -> bool:
        """Whether this instance's merge() gives plain nn.Linear weights: the class's ``mergeable``, unless MPC_n
        put a nonlinearity between A and B."""
        return self.mergeable and not self.mpc.nonlinear

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        if self.uses_rank:
            if not isinstance(config.rank, int) or isinstance(config.rank, bool) or config.rank <= 0:
                raise ConfigError(f"method {self.name!r} needs a rank >= 1, got {config.rank!r} "
                                  "(set rank=<n>)")
        self.target_kinds = self.default_targets

    @property
    def rank(self) -> int | None:
        return int(self.config.rank) if self.uses_rank else None

    # --- building ---------------------------------------------------------------------------
    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze the backbone, let the method adapt it, then unfreeze the classification head."""
        model.requires_grad_(False)
        self.adapt(model)
        head = head_parameter_names(model)  # once: it walks the whole model
        for name, param in model.named_parameters():
            if name in head:
                param.requires_grad_(True)
        return model

    def adapt(self, model: nn.Module) -> None:
        raise NotImplementedError

    def targets(self, model: nn.Module) -> list[Target]:
        return find_targets(model, self.target_kinds)

    # --- training hooks -----------------------------------------------------------------------
    def regularizers(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Extra loss terms by name, added to the task loss and logged apart from it."""
        return {}

    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called by the training loop after every optimizer step (global step count ``step``)."""

    def checkpoint_state(self, model: nn.Module) -> dict[str, Any]:
        """State outside parameters and buffers that a resumed run needs (e.g. AdaLoRA's importance scores)."""
        return {}

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Restore what ``checkpoint_state`` returned."""

    def summary(self, model: nn.Module) -> dict[str, Any]:
        """Method-specific facts for metrics.json (e.g. AdaLoRA's final ranks)."""
        return {}

    # --- merging and state --------------------------------------------------------------------
    def merge(self, model: nn.Module) -> nn.Module:
        """Replace every adapted module by a plain nn.Linear computing phi(W). Raises if not linear."""
        for name, module in list(model.named_modules()):
            if isinstance(module, AdaptedLinear):
                replace_module(model, name, module.merge())
        return model

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What the method trained plus the adapter buffers it needs: never the frozen backbone."""
        state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        for module_name, module in model.named_modules():
            if isinstance(module, AdapterModule):
                for name, buffer in module.named_buffers():
                    if not name.startswith("base.") and buffer is not None:
                        state[f"{module_name}.{name}"] = buffer.detach()
        return {name: tensor.contiguous() for name, tensor in state.items()}

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.state_dict(model))
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ConfigError(f"saved {self.name} state does not fit this model: missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}")
        model.load_state_dict(state, strict=False)


class LinearMethod(Method):
    """A method that replaces each target ``nn.Linear`` by an ``AdaptedLinear``."""

    config_class = LinearConfig

    def __init__(self, config: LinearConfig) -> None:
        super().__init__(config)
        if config.targets:
            self.target_kinds = tuple(config.targets)

    def adapt(self, model: nn.Module) -> None:
        for target in self.targets(model):
            linear = model.get_submodule(target.name)
            self.check_rank(target, linear)
            replace_module(model, target.name, self.wrap(linear, target))

    def check_rank(self, target: Target, linear: nn.Linear) -> None:
        if self.uses_rank and self.rank > min(linear.in_features, linear.out_features):
            raise ConfigError(f"rank {self.rank} is larger than module {target.name} allows "
                              f"({linear.out_features} x {linear.in_features}); choose rank <= "
                              f"{min(linear.in_features, linear.out_features)}")

    def wrap(self, linear: nn.Linear, target: Target) -> AdaptedLinear:
        raise NotImplementedError


# --- registry ---------------------------------------------------------------------------------
REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method selectable as ``method=<cls.name>``. The class must set its own catalogue
    entry (an inherited display name or paper order would silently describe another method)."""
    for attr in ("name", "display_name", "paper_order"):
        assert attr in vars(cls), f"{cls.__name__} must set {attr} itself to be registered"
    assert isinstance(cls.paper_order, int), f"{cls.__name__}.paper_order must be an int"
    assert cls.family in FAMILIES, f"{cls.__name__}.family must be one of {FAMILIES}"
    assert cls.name not in REGISTRY, f"method {cls.name!r} registered twice"
    REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a method from the registry (methods registered at test time clean up after themselves)."""
    del REGISTRY[name]


def method_class(name: str) -> type[Method]:
    from . import load_all

    load_all()
    if name not in REGISTRY:
        raise ConfigError(choices_message("method", name, list(REGISTRY)))
    return REGISTRY[name]


def build_method(name: str, options: dict[str, Any] | None = None, rank: int | None = None,
                 mpc: dict[str, Any] | None = None) -> Method:
    """Instantiate a method from its settings (``options``), the run's rank and the mpc group's settings
    (``{"name": "none"}`` or absent = no matrix pattern constraint). Settings missing from ``options`` take the
    values of ``conf/method/<name>.yaml`` (``defaults.method_defaults``), so ``build_method("lora", {}, 8)``
    is the default LoRA; a composed run passes all of them."""
    cls = method_class(name)
    constraint = MPC.from_config(mpc)
    if constraint.active and constraint.name not in cls.mpc_support:
        with_ab = sorted(n for n, c in REGISTRY.items() if constraint.name in c.mpc_support)
        why = ("it has no low-rank factors A and B for the constraint to act on" if not cls.mpc_support
               else f"it supports only mpc={'|'.join(cls.mpc_support)}")
        raise ConfigError(f"mpc={constraint.name} does not apply to method {name!r}: {why}. "
                          f"Use mpc=none, or one of the methods {', '.join(with_ab)}")
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(cls.config_class)} - {"rank"}
    unknown = set(options) - fields
    if unknown:
        raise ConfigError(f"method {name!r} has no setting {sorted(unknown)[0]!r}; "
                          f"its settings are: {', '.join(sorted(fields)) or 'none'}")
    if fields - set(options):  # composing costs a fraction of a second: only when something is missing
        from .defaults import method_defaults

        options = {**method_defaults(name), **options}
        if set(options) != fields:
            raise ConfigError(f"conf/method/{name}.yaml does not match the settings of method {name!r}: it lacks "
                              f"{sorted(fields - set(options))} and has no such settings as "
                              f"{sorted(set(options) - fields)}; every setting has its value in that file")
    method = cls(cls.config_class(**options, rank=rank if cls.uses_rank else None))
    method.mpc = constraint
    return method
