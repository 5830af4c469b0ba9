"""Speed and memory of every method against full fine-tuning, the frozen-backbone floor and Hugging Face PEFT.

    python -m subspace_tuning.bench                                   # roberta-base dims, batch 8, length 128
    python -m subspace_tuning.bench --methods lora,dora --repeats 5 --json bench.json
    python -m subspace_tuning.bench --device cuda --svd-model roberta-large

The model is built from ``conf/model/<name>.yaml`` with random weights (nothing is downloaded). Every row lives in
one process and shares the frozen backbone's tensors (trainable tensors are private copies), so 30 rows of
roberta-base fit in a few GB. Rows:

- ``frozen``: every backbone weight frozen, only the head trains, and the input embeddings require grad, so the
  backward runs through every activation without any weight gradient: the floor of any PEFT method's step.
- ``full``: full fine-tuning (the paper's reference row).
- each method with its YAML defaults (``conf/method``) at ``--rank``, and ``peft:<method>`` for the methods Hugging
  Face PEFT has, with the same placement and settings (see ``peft_config``).

Measurements, after ``--warmup`` untimed steps of each row:

- train step (zero_grad, forward with labels, the method's regularisers, backward, AdamW step, the method's
  ``after_optimizer_step``): ``--repeats`` rounds, each timing one step of every row, round-robin with the start
  rotating by one row per round, and the frozen row timed again after every ``ANCHOR_EVERY`` rows. ``step_ms`` is
  the median; every ratio is the median over rounds of paired per-round ratios, each sample first divided by the
  mean of the two frozen samples around it, so that a shared machine's changing load cancels. Wall time is the
  headline; the process CPU time is recorded too (``cpu_*``).
- peak memory, once per row after the timing: the bytes the row holds before a step (its model's tensors, shared
  backbone included, optimizer state and any tensors kept by the method, each storage counted once) plus the
  highest extra allocation during one step. On CUDA the extra is ``max_memory_allocated`` minus the allocation at
  the step's start; on the CPU it is the peak of the running sum of the CPU allocator's allocations and frees that
  ``torch.profiler`` (``profile_memory``) records during the step. Both count tensors (activations kept for
  backward, gradients, temporaries), not the allocator's cache or library workspaces.
- eval throughput (samples/s, inference mode, the same batch): unmerged, interleaved and anchored like the train
  step (``eval_vs_plain``); merged (``method.merge`` on a copy), timed in ``MERGED_PAIRS`` x ``--repeats`` pairs
  with the plain model, alternating which goes first, so ``merged.vs_plain`` (merged throughput / plain
  throughput) is the median of paired ratios.
- set-up: the time of ``method.apply`` (PEFT: ``get_peft_model``), SVDs included (the SVD cache is a temporary
  folder). ``--svd-model`` also times the set-up of every SVD-based method on a model of those dimensions (random
  weights): computed (cache off; the first method's run fills the cache) and read back from the cache.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import method_defaults, model_yaml
from .errors import NotMergeableError

REFERENCES = ("frozen", "full")
PEFT_METHODS = ("lora", "dora", "ia3", "vera", "adalora", "prompt_tuning", "prefix_tuning")
TOTAL_STEPS = 10**6  # AdaLoRA's schedule length: the benchmark stays in its allocation phase (both libraries)
QUICK = {"model": "tiny-roberta", "batch": 2, "seq_len": 16, "repeats": 2, "warmup": 1, "threads": 1}
ANCHOR_EVERY = 4  # the frozen row is timed again after every 4 rows of a round
MERGED_PAIRS = 3  # merged vs plain: 3 x --repeats (plain, merged) pairs
TARGETS = {"lora_vs_frozen": 1.10, "vs_peft": 1.0, "dora_vs_lora": 1.3, "merged_vs_plain": 0.98, "svd_setup_s": 10.0}


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


def tensor_bytes(*roots: Any) -> int:
    """Bytes of every tensor reachable from ``roots`` (modules, their attributes, dicts, lists, this project's and
    PEFT's helper objects, gradients), each storage counted once."""
    sizes: dict[int, int] = {}
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "meta":
                storage = obj.untyped_storage()
                sizes[storage.data_ptr()] = storage.nbytes()
            if obj.grad is not None:
                stack.append(obj.grad)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set):
            stack.extend(obj)
        elif isinstance(obj, nn.Module) or type(obj).__module__.startswith(("subspace_tuning", "peft")):
            stack.extend(vars(obj).values())  # e.g. AdaLoRA's importance scores, PEFT's RankAllocator
    return sum(sizes.values())


def build_base(model_name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A random-weight ForSequenceClassification model (2 labels) from the model YAML's ``arch`` block."""
    from transformers import AutoModelForSequenceClassification

    from .models import architecture_config

    torch.manual_seed(seed)
    config = architecture_config(model_yaml(model_name), num_labels=2)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(config)
    return model.to(dtype)


def method_options(name: str) -> dict[str, Any]:
    """The method's YAML defaults, as a training run gets them."""
    options = method_defaults(name)
    if name == "adalora":  # allocate from the start, never reach the final phase (PEFT gets the same schedule)
        options.update(tinit=0, tfinal=0)
    return options


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
    method: Any = None  # our Method (None for references and PEFT)
    optimizer: torch.optim.Optimizer | None = None
    after_step: Callable[[int], None] | None = None
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


def finish_row(row: Row, model: nn.Module, shared: set[int], lr: float = 1e-4) -> None:
    own_trainable(model, shared)
    row.model = model.train()
    row.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def build_reference(name: str, base: nn.Module, shared: set[int]) -> Row:
    from .architectures import head_parameter_names
    from .methods import build_method

    row = Row(name, "reference")
    model = shared_copy(base)
    start = time.perf_counter()
    if name == "full":
        row.method = build_method("full", {})
        row.method.apply(model)
    else:
        model.requires_grad_(False)
        head = head_parameter_names(model)
        for param_name, param in model.named_parameters():
            param.requires_grad_(param_name in head)
        model.enable_input_require_grads()  # backward through every activation, as any adapted model needs
    row.setup_s = time.perf_counter() - start
    finish_row(row, model, shared)
    return row


def build_ours(name: str, base: nn.Module, shared: set[int], rank: int) -> Row:
    from .methods import build_method

    row = Row(name, "ours", name)
    try:
        model = shared_copy(base)
        method = build_method(name, method_options(name), rank)
        start = time.perf_counter()
        method.apply(model)
        row.setup_s = time.perf_counter() - start
        row.method = method
        row.after_step = lambda step: method.after_optimizer_step(row.model, step, TOTAL_STEPS)
        finish_row(row, model, shared)
    except Exception as err:  # a broken method is a row with an error, not a lost benchmark
        row.fail("setup", err)
    return row


def peft_config(name: str, ours: Any, base: nn.Module) -> Any:
    """The PEFT config identical to our method ``ours``: the same modules (by full name), rank, alpha, dropout and
    initial values. The head is trained by both (PEFT: task_type SEQ_CLS makes it a module to save)."""
    import peft

    c = ours.config
    targets = ours.targets(base) if name not in ("prompt_tuning", "prefix_tuning") else []
    names = [t.name for t in targets]
    common = {"task_type": peft.TaskType.SEQ_CLS}
    if name in ("lora", "dora"):
        return peft.LoraConfig(**common, r=ours.rank, lora_alpha=c.alpha, lora_dropout=c.dropout,
                               target_modules=names, use_dora=name == "dora")
    if name == "ia3":
        return peft.IA3Config(**common, target_modules=names,
                              feedforward_modules=[t.name for t in targets if ours.side(t.kind) == "in"])
    if name == "vera":
        return peft.VeraConfig(**common, r=ours.rank, target_modules=names, d_initial=c.d_initial,
                               vera_dropout=c.dropout, projection_prng_key=c.projection_seed)
    if name == "adalora":
        # our adalora with mpc=none has no orthogonality term: orth_reg_weight 0 (PEFT still computes the term)
        return peft.AdaLoraConfig(**common, init_r=ours.rank, target_r=ours.target_r, lora_alpha=c.alpha,
                                  lora_dropout=c.dropout, target_modules=names, total_step=TOTAL_STEPS,
                                  tinit=0, tfinal=0, deltaT=c.deltaT, beta1=c.beta1, beta2=c.beta2,
                                  orth_reg_weight=0.0)
    if name == "prompt_tuning":  # PEFT's random init instead of vocabulary rows: the same cost
        return peft.PromptTuningConfig(**common, num_virtual_tokens=c.num_virtual_tokens)
    if name == "prefix_tuning":
        return peft.PrefixTuningConfig(**common, num_virtual_tokens=c.num_virtual_tokens,
                                       prefix_projection=c.reparameterize, encoder_hidden_size=c.encoder_hidden_size)
    raise KeyError(name)


def build_peft(name: str, ours: Row, base: nn.Module, shared: set[int]) -> Row:
    row = Row(f"peft:{name}", "peft", name)
    try:
        import peft

        config = peft_config(name, ours.method, base)
        model = shared_copy(base)
        start = time.perf_counter()
        model = peft.get_peft_model(model, config)
        row.setup_s = time.perf_counter() - start
        if name == "adalora":
            # PEFT counts its global step from 0, our loop from 1
            row.after_step = lambda step: row.model.base_model.update_and_allocate(step - 1)
        finish_row(row, model, shared)
    except Exception as err:
        row.fail("setup", err)
    return row


# --- measuring ----------------------------------------------------------------------------------------------
def make_batch(base: nn.Module, batch: int, seq_len: int, device: torch.device, seed: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    vocab = base.config.vocab_size
    return {"input_ids": torch.randint(3, vocab, (batch, seq_len), generator=g).to(device),
            "attention_mask": torch.ones(batch, seq_len, dtype=torch.long, device=device),
            "labels": torch.randint(0, 2, (batch,), generator=g).to(device)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn``."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def train_step(row: Row, batch: dict[str, Any]) -> None:
    row.optimizer.zero_grad(set_to_none=True)
    loss = row.model(**batch).loss
    if row.method is not None:
        for term in row.method.regularizers(row.model).values():
            loss = loss + term
    loss.backward()
    row.optimizer.step()
    row.steps_done += 1
    if row.after_step is not None:
        row.after_step(row.steps_done)


def eval_forward(model: nn.Module, inputs: dict[str, Any]) -> None:
    with torch.inference_mode():
        model(**inputs)


def rotation(rows: list[Row], k: int) -> list[Row]:
    """The working rows, starting at row k (mod their count)."""
    live = [r for r in rows if r.ok]
    return live[k % len(live):] + live[: k % len(live)] if live else []


def guarded(row: Row, label: str, fn: Callable[[Row], Any]) -> Any:
    try:
        return fn(row)
    except Exception as err:  # one broken row must not end the benchmark
        row.fail(label, err)
        return None


def warm_up(rows: list[Row], rounds: int, label: str, fn: Callable[[Row], None]) -> None:
    for k in range(rounds):
        start = time.perf_counter()
        for row in rotation(rows, k):
            guarded(row, label, fn)
        log(f"[{label}] round {k + 1}/{rounds} done in {time.perf_counter() - start:.1f} s")


def anchored_rounds(rows: list[Row], anchor: Row, phase: str, rounds: int, every: int, fn: Callable[[Row], None],
                    device: torch.device) -> None:
    """``rounds`` timed rounds over every working row (round k starts at row k), with the anchor row timed at the
    start, after every ``every`` rows and at the end; each sample is also stored relative to the mean of the two
    anchor samples around it."""
    def measure(row: Row) -> tuple[float, float] | None:
        sample = guarded(row, phase, lambda r: timed(lambda: fn(r), device))
        if sample is not None:
            getattr(row, phase).wall.append(sample[0])
            getattr(row, phase).cpu.append(sample[1])
        return sample

    for k in range(rounds):
        start = time.perf_counter()
        before = measure(anchor)
        getattr(anchor, phase).rel_wall[k] = getattr(anchor, phase).rel_cpu[k] = 1.0
        pending: list[tuple[Row, tuple[float, float]]] = []
        order = [r for r in rotation(rows, k) if r is not anchor]
        for i, row in enumerate(order):
            sample = measure(row)
            if sample is not None:
                pending.append((row, sample))
            if (i + 1) % every and i + 1 < len(order):
                continue
            after = measure(anchor)
            if before is None or after is None:
                return  # the anchor itself failed: nothing can be normalised
            wall, cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
            for done, (w, c) in pending:
                getattr(done, phase).rel_wall[k], getattr(done, phase).rel_cpu[k] = w / wall, c / cpu
            before, pending = after, []
        log(f"[{phase}] round {k + 1}/{rounds} done in {time.perf_counter() - start:.1f} s")


def cpu_step_peak(step: Callable[[], None]) -> int:
    """Peak of the running sum of CPU allocations minus frees during ``step`` (torch.profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def measure_memory(row: Row, batch: dict[str, Any], device: torch.device) -> None:
    row.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    row.state_bytes = tensor_bytes(row.model, row.optimizer.state, row.method)

    def step() -> None:  # zero_grad inside train_step frees nothing: the gradients are already gone
        train_step(row, batch)

    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        row.transient_bytes = torch.cuda.max_memory_allocated(device) - before
    else:
        row.transient_bytes = cpu_step_peak(step)


def merged_copy(row: Row) -> nn.Module:
    model = shared_copy(row.model)
    return row.method.merge(model) if row.method is not None else model


def measure_merged(row: Row, plain: nn.Module, inputs: dict[str, Any], repeats: int, device: torch.device) -> None:
    """Merged throughput, timed alternately with the plain model (a paired ratio), and the merge time."""
    start = time.perf_counter()
    try:
        merged = merged_copy(row).eval()
    except NotMergeableError as err:
        row.merged = {"mergeable": False, "why": str(err).split(";")[0]}
        return
    row.merged = {"mergeable": True, "merge_s": time.perf_counter() - start}
    leftover = [type(m).__name__ for m in merged.modules() if type(m).__module__.startswith(("subspace", "peft"))]
    plain_wall, merged_wall = [], []
    eval_forward(merged, inputs)  # warm-up
    # A merged model is the plain architecture, so the true ratio is 1 and the 2 % target is about noise: single
    # CPU forwards vary by ~10 %, hence MERGED_PAIRS x repeats pairs, alternating which goes first (no order bias),
    # and the median of the per-pair ratios.
    for i in range(MERGED_PAIRS * repeats):
        for model, wall in ((plain, plain_wall), (merged, merged_wall))[:: 1 if i % 2 == 0 else -1]:
            wall.append(timed(lambda model=model: eval_forward(model, inputs), device)[0])
    batch = inputs["input_ids"].shape[0]
    row.merged.update(samples_per_s=batch / statistics.median(merged_wall),
                      plain_samples_per_s=batch / statistics.median(plain_wall),
                      vs_plain=statistics.median(p / m for p, m in zip(plain_wall, merged_wall, strict=True)),
                      leftover_modules=sorted(set(leftover)))


def measure_eval(rows: list[Row], inputs: dict[str, Any], repeats: int, device: torch.device) -> None:
    """Unmerged throughput of every row (interleaved rounds), then merged against plain, one merged copy at a time."""
    warm_up(rows, 1, "eval warm-up", lambda r: eval_forward(r.model, inputs))
    anchor = next(r for r in rows if r.name == "frozen")
    anchored_rounds(rows, anchor, "eval", repeats, ANCHOR_EVERY, lambda r: eval_forward(r.model, inputs), device)
    plain = anchor.model
    for row in rows:
        if row.ok and row.kind == "ours":
            try:
                measure_merged(row, plain, inputs, repeats, device)
            except Exception as err:
                row.fail("merge", err)
    log("[merged eval] done")


def svd_setup(model_name: str, methods: list[str], rank: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Set-up time (``method.apply``) of every SVD-based method on a model of ``model_name``'s dimensions.

    The model is allocated without initialisation (``to_empty``) and only the target weights get random values:
    the set-up reads nothing else, and initialising roberta-large would cost more than what is measured."""
    from transformers import AutoModelForSequenceClassification

    from .architectures import find_targets
    from .methods import build_method, method_class
    from .methods.reconstruction.spectral import SpectralMethod, svd_cache
    from .models import architecture_config

    spectral = [m for m in methods if issubclass(method_class(m), SpectralMethod)]
    if not spectral:
        return {}
    with torch.device("meta"):
        big = AutoModelForSequenceClassification.from_config(architecture_config(model_yaml(model_name), 2))
    big = big.to_empty(device=device).to(dtype)
    torch.manual_seed(0)
    targets = find_targets(big)
    with torch.no_grad():
        for target in targets:
            big.get_submodule(target.name).weight.normal_(0, 0.02)
    result: dict[str, Any] = {"model": model_name, "matrices": len(targets), "seconds": {}, "cached_seconds": {}}

    def timed_apply(name: str) -> float:
        model = shared_copy(big)
        method = build_method(name, method_options(name), rank)
        start = time.perf_counter()
        method.apply(model)
        synchronize(device)
        del model
        gc.collect()
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="svd-cache-") as cache:
        for i, name in enumerate(spectral):
            with svd_cache(None if i else cache):  # computed; the first method's run also fills the cache
                result["seconds"][name] = timed_apply(name)
            with svd_cache(cache):  # a sweep's later runs: the SVDs come from the cache
                result["cached_seconds"][name] = timed_apply(name)
            log(f"[svd set-up] {name} on {model_name} ({len(targets)} matrices): {result['seconds'][name]:.1f} s "
                f"computed, {result['cached_seconds'][name]:.1f} s from the cache")
    return result


# --- report -------------------------------------------------------------------------------------------------
def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ms(values: list[float]) -> float | None:
    return statistics.median(values) * 1e3 if values else None


def row_summary(row: Row, batch: int) -> dict[str, Any]:
    eval_s = median(row.eval.wall)
    peak = row.state_bytes + row.transient_bytes if row.transient_bytes is not None else None
    trainable = sum(p.numel() for p in row.model.parameters() if p.requires_grad) if row.model is not None else None
    return {
        "name": row.name, "kind": row.kind, "method": row.method_name, "error": row.error,
        "trainable_parameters": trainable, "setup_s": row.setup_s,
        "step_ms": ms(row.step.wall), "step_cpu_ms": ms(row.step.cpu),
        "step_ms_all": [round(t * 1e3, 2) for t in row.step.wall],
        "step_rel_frozen": {"wall": row.step.rel_wall, "cpu": row.step.rel_cpu},
        "peak_mb": peak / 2**20 if peak else None,
        "state_mb": row.state_bytes / 2**20 if row.state_bytes is not None else None,
        "step_extra_mb": row.transient_bytes / 2**20 if row.transient_bytes is not None else None,
        "eval_samples_per_s": batch / eval_s if eval_s else None,
        "eval_rel_plain": row.eval.rel_wall,
        "merged": row.merged or None,
    }


def per_round(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a / b in every round both have (each already relative to the frozen row around it)."""
    return [a[k] / b[k] for k in sorted(a.keys() & b.keys())]


def paired(a: dict[int, float], b: dict[int, float]) -> float | None:
    values = per_round(a, b)
    return statistics.median(values) if values else None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Step ratios are medians over rounds of paired per-round ratios; memory ratios are plain quotients."""
    by_name = {r["name"]: r for r in rows}
    none: dict[str, Any] = {"step_rel_frozen": {"wall": {}, "cpu": {}}, "peak_mb": None, "eval_rel_plain": {}}
    frozen, full = by_name.get("frozen", none), by_name.get("full", none)
    for r in rows:
        rel = r["step_rel_frozen"]
        twin = by_name.get(f"peft:{r['name']}") if r["kind"] == "ours" else None
        for clock, prefix in (("wall", "step"), ("cpu", "cpu")):
            r[f"{prefix}_vs_frozen"] = paired(rel[clock], frozen["step_rel_frozen"][clock])
            r[f"{prefix}_vs_full"] = paired(rel[clock], full["step_rel_frozen"][clock])
            r[f"{prefix}_vs_peft"] = paired(rel[clock], twin["step_rel_frozen"][clock]) if twin else None
        r["step_vs_peft_rounds"] = [round(x, 3) for x in per_round(rel["wall"], twin["step_rel_frozen"]["wall"])] \
            if twin else None
        r["memory_vs_peft"] = ratio(r["peak_mb"], twin["peak_mb"]) if twin else None
        relative_time = paired(r["eval_rel_plain"], frozen["eval_rel_plain"])
        r["eval_vs_plain"] = 1 / relative_time if relative_time else None


def check(value: float | None, limit: float, at_most: bool = True) -> dict[str, Any]:
    holds = None if value is None else (value <= limit if at_most else value >= limit)
    return {"value": value, "limit": limit, "holds": holds}


def evaluate_targets(rows: list[dict[str, Any]], svd: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured value and whether it holds (None: not measured)."""
    by_name = {r["name"]: r for r in rows}
    lora, dora = by_name.get("lora"), by_name.get("dora")
    dora_vs_lora = paired(dora["step_rel_frozen"]["wall"], lora["step_rel_frozen"]["wall"]) if lora and dora else None
    targets: dict[str, Any] = {
        "lora_step_vs_frozen": check(lora["step_vs_frozen"] if lora else None, TARGETS["lora_vs_frozen"]),
        "dora_step_vs_lora": check(dora_vs_lora, TARGETS["dora_vs_lora"])}
    for r in rows:
        if r["kind"] == "ours" and f"peft:{r['name']}" in by_name:
            targets[f"{r['name']}_step_vs_peft"] = check(r["step_vs_peft"], TARGETS["vs_peft"])
            targets[f"{r['name']}_memory_vs_peft"] = check(r["memory_vs_peft"], TARGETS["vs_peft"])
        if (r["merged"] or {}).get("mergeable"):
            targets[f"{r['name']}_merged_vs_plain"] = check(r["merged"]["vs_plain"], TARGETS["merged_vs_plain"],
                                                            at_most=False)
    for name, seconds in (svd.get("seconds") or {}).items():
        targets[f"{name}_svd_setup_{svd['model']}"] = check(seconds, TARGETS["svd_setup_s"])
        targets[f"{name}_svd_setup_{svd['model']}_cached"] = check(svd["cached_seconds"][name],
                                                                    TARGETS["svd_setup_s"])
    return targets


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(result: dict[str, Any]) -> str:
    header = (f"{'row':<22} {'setup s':>8} {'step ms':>8} {'xfrozen':>7} {'xfull':>6} {'xPEFT':>6} {'peak MB':>8} "
              f"{'xPEFTmem':>8} {'eval/s':>7} {'e/plain':>7} {'merged/s':>8} {'m/plain':>7}")
    lines = [header, "-" * len(header)]
    for r in result["rows"]:
        if r["error"]:
            lines.append(f"{r['name']:<22} error: {r['error'][:90]}")
            continue
        merged = r["merged"] or {}
        lines.append(f"{r['name']:<22} {fmt(r['setup_s'], '8.2f')} {fmt(r['step_ms'], '8.1f')} "
                     f"{fmt(r['step_vs_frozen'], '7.2f')} {fmt(r['step_vs_full'], '6.2f')} "
                     f"{fmt(r['step_vs_peft'], '6.2f')} {fmt(r['peak_mb'], '8.0f')} {fmt(r['memory_vs_peft'], '8.2f')} "
                     f"{fmt(r['eval_samples_per_s'], '7.1f')} {fmt(r['eval_vs_plain'], '7.3f')} "
                     f"{fmt(merged.get('samples_per_s'), '8.1f')} "
                     f"{fmt(merged.get('vs_plain'), '7.3f')}")
    s = result["settings"]
    lines.append(f"\n{s['model']} dims, batch {s['batch']}, length {s['seq_len']}, {s['dtype']}, {s['device']} "
                 f"({s['threads']} threads), rank {s['rank']}; median of {s['repeats']} interleaved rounds; "
                 f"load average {s['load_start']} -> {s['load_end']}")
    for name, t in result["targets"].items():
        verdict = {True: "holds", False: "MISSED", None: "not measured"}[t["holds"]]
        lines.append(f"target {name:<36} {fmt(t['value'], '.3f'):>8} (limit {t['limit']}): {verdict}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --- main ---------------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse turns the ValueError into a usage error)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .report import ArgumentParser

    parser = ArgumentParser("python -m subspace_tuning.bench", __doc__)
    parser.add_argument("--model", default=None,
                        help="a model of conf/model/, by name (random weights; default roberta-base)")
    parser.add_argument("--batch", type=positive_int, default=None, help="batch size (default 8)")
    parser.add_argument("--seq-len", type=positive_int, default=None, help="sequence length (default 128)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    parser.add_argument("--rank", type=positive_int, default=8)
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed rounds (default 7)")
    parser.add_argument("--warmup", type=non_negative_int, default=None,
                        help="untimed train steps per row (default 2)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-peft", action="store_true", help="skip the Hugging Face PEFT rows")
    parser.add_argument("--no-eval", action="store_true", help="train step and memory only (no eval throughput)")
    parser.add_argument("--svd-model", default=None,
                        help="also time the SVD-based methods' set-up on this model's dimensions (e.g. roberta-large)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny settings for tests: " + str(QUICK))
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {"model": "roberta-base", "batch": 8, "seq_len": 128, "repeats": 7,
                                         "warmup": 2, "threads": None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def requested_methods(spec: str | None) -> list[str]:
    from .errors import ConfigError, choices_message
    from .methods import REGISTRY, load_all

    load_all()
    available = [n for n in REGISTRY if n != "full"]
    if spec is None:
        return available
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name not in REGISTRY:
            raise ConfigError(choices_message("method", name, available))
    return [n for n in names if n != "full"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import warnings

    from .methods.reconstruction.spectral import svd_cache

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes would bury the progress
    began = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = requested_methods(args.methods)
    settings = {"model": args.model, "batch": args.batch, "seq_len": args.seq_len, "dtype": args.dtype,
                "device": str(device), "rank": args.rank, "repeats": args.repeats, "warmup": args.warmup,
                "threads": torch.get_num_threads(), "methods": methods, **machine(), "load_start": load_average()}
    if device.type == "cuda":
        settings["gpu"] = torch.cuda.get_device_name(device)
    log(f"[bench] {args.model} batch {args.batch} length {args.seq_len} {args.dtype} on {device}; "
        f"{len(methods)} methods; load average {settings['load_start']}")

    base = build_base(args.model, device, dtype)
    base.requires_grad_(False)
    shared = storages(itertools.chain(base.parameters(), base.buffers()))
    batch = make_batch(base, args.batch, args.seq_len, device)
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    rows = [build_reference(name, base, shared) for name in REFERENCES]
    with tempfile.TemporaryDirectory(prefix="svd-cache-") as cache, svd_cache(cache):  # not the user's cache
        for name in methods:
            row = build_ours(name, base, shared, args.rank)
            rows.append(row)
            log(f"[setup] {name}: {row.setup_s or 0:.2f} s" + ("" if row.ok else " (failed)"))
            if name in PEFT_METHODS and not args.no_peft and row.ok:
                twin = build_peft(name, row, base, shared)
                rows.append(twin)
                log(f"[setup] {twin.name}: {twin.setup_s or 0:.2f} s" + ("" if twin.ok else " (failed)"))

    warm_up(rows, args.warmup, "warm-up", lambda r: train_step(r, batch))
    anchored_rounds(rows, rows[0], "step", args.repeats, ANCHOR_EVERY, lambda r: train_step(r, batch), device)
    for row in rows:
        if row.ok:
            try:
                measure_memory(row, batch, device)
            except Exception as err:
                row.fail("memory", err)
    log("[memory] done")
    for row in rows:  # free gradients and optimizer state before the eval phase
        row.optimizer = None
        if row.model is not None:
            row.model.zero_grad(set_to_none=True)
            row.model.eval()
    gc.collect()

    if not args.no_eval:
        measure_eval(rows, inputs, args.repeats, device)

    svd = svd_setup(args.svd_model, methods, args.rank, device, dtype) if args.svd_model else {}
    summaries = [row_summary(r, args.batch) for r in rows]
    add_ratios(summaries)
    settings.update(load_end=load_average(), duration_s=round(time.perf_counter() - began, 1))
    return {"settings": settings, "rows": summaries, "svd_setup": svd,
            "targets": evaluate_targets(summaries, svd)}


def check_device(spec: str | None) -> None:
    """Refuse a device torch cannot name or this machine does not have, before anything is built."""
    from .errors import ConfigError

    if spec is None:
        return
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown --device {spec!r}; give cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec} asks for a GPU, but torch sees no CUDA device here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {spec}: the benchmark measures cpu or cuda only")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Console entry point: a command-line mistake exits 2, any other error 1, each with one paragraph."""
    from .errors import ConfigError, SubspaceTuningError
    from .params import named_model_yaml

    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        check_device(args.device)
        for name in (args.model, args.svd_model):
            if name is not None:
                named_model_yaml(name)  # a name in conf/model/, never a path
        result = run(args)
        print(format_table(result))
        if args.json:
            try:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(result, indent=1))
            except OSError as err:
                raise ConfigError(f"cannot write --json {args.json}: {err.strerror or err}; choose another "
                                  f"path") from None
            log(f"[bench] wrote {args.json}")
    except SubspaceTuningError as err:
        sys.exit(f"error: {err}")
    finally:
        torch.set_num_threads(threads)  # --threads must not outlive the call (tests run it in-process)
    return result


if __name__ == "__main__":
    main()
