"""The benchmark's rows, how each is built, and its training step.

- ``frozen``: every backbone weight frozen, only the head trains, and the input embeddings require grad, so the
  backward runs through every activation without any weight gradient: the floor of any PEFT method's step.
- ``full``: full fine-tuning (the paper's reference row).
- each method with its YAML defaults (``conf/method``) at ``--rank``, and ``peft:<method>`` for the methods Hugging
  Face PEFT has (the class's ``peft_type``), with the same placement and settings (``peft_rows.peft_config``).

Every row lives in one process and shares the frozen backbone's tensors (trainable tensors are private copies), so
30 rows of roberta-base fit in a few GB.
"""

from __future__ import annotations

import copy
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..methods import Method, build_method
from ..methods.base import MethodConfig
from ..step import training_step
from .peft_rows import has_peft_counterpart, peft_config, peft_targets

REFERENCES = ("frozen", "full")
TOTAL_STEPS = 10**6  # AdaLoRA's schedule length: the benchmark stays in its allocation phase (both libraries)


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


# --- models that share the frozen backbone --------------------------------------------------------------
def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters are new Parameter objects over the same storage (so requires_grad is per
    copy) and whose buffers are the same tensors: the modules are private, the weights are not."""
    memo: dict[int, Any] = {id(b): b for b in model.buffers()}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.data, requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def storages(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def own_trainable(model: nn.Module, shared: set[int]) -> None:
    """Give every trainable parameter that still uses the shared backbone's storage its own copy, so that one
    row's optimizer never changes another row's weights."""
    for p in model.parameters():
        if p.requires_grad and p.untyped_storage().data_ptr() in shared:
            p.data = p.data.clone()


def random_model(model_name: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A ForSequenceClassification model (2 labels) of ``conf/model/<model_name>.yaml``'s ``arch`` with random
    weights (``seed``), built as a ``source=config`` model whatever the YAML's source, so nothing is downloaded."""
    from omegaconf import OmegaConf

    from ..config import model_yaml
    from ..models import build_model

    torch.manual_seed(seed)
    return build_model(OmegaConf.merge(model_yaml(model_name), {"source": "config"}), 2, device=device).to(dtype)


def bench_settings(method_name: str) -> dict[str, Any]:
    """Settings over the method's YAML defaults: AdaLoRA allocates from the start and never reaches its final
    phase (PEFT gets the same schedule)."""
    return {"tinit": 0, "tfinal": 0} if method_name == "adalora" else {}


# --- rows ---------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """One row's samples in one phase (seconds), and per round its sample relative to the anchor row (the frozen
    backbone) measured just before and after it: on a shared machine the load moves between minutes, so ratios
    come from these paired values, not from independent medians."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rel_wall: dict[int, float] = field(default_factory=dict)
    rel_cpu: dict[int, float] = field(default_factory=dict)


@dataclass
class Row:
    """One benchmarked model: a reference, one of our methods, or its PEFT twin."""

    name: str
    kind: str  # reference | ours | peft
    method_name: str | None = None
    model: nn.Module | None = None
    method: Any = None  # what the training step calls: a Method, or PeftHooks for a PEFT row
    optimizer: torch.optim.Optimizer | None = None
    setup_s: float | None = None
    steps_done: int = 0
    step: Timing = field(default_factory=Timing)
    eval: Timing = field(default_factory=Timing)
    state_bytes: int | None = None
    transient_bytes: int | None = None
    merged: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, where: str, err: BaseException) -> None:
        self.error = f"{where}: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        self.model = self.optimizer = None
        log(f"  {self.name}: FAILED ({self.error})")


class FrozenBackbone(Method):
    """The ``frozen`` row as a method: ``Method.apply`` freezes the backbone and unfreezes the head; the adaptation
    only makes the input embeddings require grad, so the backward runs through every activation, as any adapted
    model's does."""

    name = "frozen"
    uses_rank = False

    def adapt(self, model: nn.Module) -> None:
        model.enable_input_require_grads()


class PeftHooks:
    """The training step's method hooks for a PEFT model: PEFT adds its own loss terms inside the forward, and its
    AdaLoRA allocates after each optimizer step."""

    def __init__(self, allocates: bool) -> None:
        self.allocates = allocates

    def regularizers(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        if self.allocates:
            model.base_model.update_and_allocate(step - 1)  # PEFT counts its global step from 0, our loop from 1


def timed_setup(row: Row, base: nn.Module, shared: set[int], setup: Callable[[nn.Module], nn.Module],
                lr: float = 1e-4) -> Row:
    """Build ``row`` on a shared copy of ``base`` with ``setup(model) -> model`` (timed), then give it its own
    trainable tensors and an AdamW. A set-up that raises is a row with an error, not a lost benchmark."""
    try:
        model = shared_copy(base)
        start = time.perf_counter()
        model = setup(model)
        row.setup_s = time.perf_counter() - start
        own_trainable(model, shared)
        row.model = model.train()
        row.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    except Exception as err:
        row.fail("setup", err)
    return row


def reference_row(name: str, base: nn.Module, shared: set[int]) -> Row:
    method = build_method("full", {}) if name == "full" else FrozenBackbone(MethodConfig(rank=None))
    return timed_setup(Row(name, "reference", method=method), base, shared, method.apply)


def method_row(name: str, base: nn.Module, shared: set[int], rank: int) -> Row:
    row = Row(name, "ours", name)
    try:
        row.method = build_method(name, bench_settings(name), rank)
    except Exception as err:
        row.fail("setup", err)
        return row
    return timed_setup(row, base, shared, row.method.apply)


def peft_row(ours: Row, base: nn.Module, shared: set[int], rank: int) -> Row:
    import peft

    name = ours.method_name
    row = Row(f"peft:{name}", "peft", name, method=PeftHooks(allocates=name == "adalora"))
    try:
        targets, feedforward = peft_targets(ours.method, base)
        config = peft_config(name, rank, targets, bench_settings(name), feedforward_module_names=feedforward,
                             total_step=TOTAL_STEPS)
    except Exception as err:
        row.fail("setup", err)
        return row
    return timed_setup(row, base, shared, lambda model: peft.get_peft_model(model, config))


def build_rows(base: nn.Module, methods: list[str], rank: int, with_peft: bool) -> list[Row]:
    """The references, then each method followed by its PEFT twin; SVDs go to a temporary cache, never the
    user's."""
    from ..methods.reconstruction.spectral import svd_cache

    shared = storages(itertools.chain(base.parameters(), base.buffers()))
    rows = [reference_row(name, base, shared) for name in REFERENCES]
    with tempfile.TemporaryDirectory(prefix="svd-cache-") as cache, svd_cache(cache):
        for name in methods:
            built = [method_row(name, base, shared, rank)]
            if with_peft and built[0].ok and has_peft_counterpart(name):
                built.append(peft_row(built[0], base, shared, rank))
            for row in built:
                log(f"[setup] {row.name}: {row.setup_s or 0:.2f} s" + ("" if row.ok else " (failed)"))
            rows += built
    return rows


def requested_methods(spec: str | None) -> list[str]:
    """The methods of ``--methods`` (default: every registered one, in the paper's order), full fine-tuning
    aside (it is a reference row)."""
    from ..errors import ConfigError, choices_message
    from ..methods import REGISTRY, load_all

    load_all()
    available = [n for n in REGISTRY if n != "full"]
    if spec is None:
        return available
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name not in REGISTRY:
            raise ConfigError(choices_message("method", name, available))
    return [n for n in names if n != "full"]


def train_step(row: Row, batch: dict[str, Any]) -> None:
    """One optimizer step of ``row``: the recipe's ``training_step`` (which ends with zero_grad(set_to_none), so
    no gradients are held between steps). Without the recipe's finite checks and clipping: they cost a
    device-to-host sync and a norm over every trainable tensor in each step, the same work whatever the method,
    which would blur the differences the benchmark measures (docs/benchmarks.md measures the step without them)."""
    row.steps_done += 1
    training_step(row.model, row.method, batch, row.optimizer, row.steps_done, TOTAL_STEPS, max_grad_norm=None,
                  check_finite=False)
