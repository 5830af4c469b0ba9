"""Timing: interleaved rounds anchored on the frozen row, merged against plain inference, and the paired ratios.

- train step (``rows.train_step``): ``--repeats`` rounds, each timing one step of every row, round-robin with the
  start rotating by one row per round, and the frozen row timed again after every ``ANCHOR_EVERY`` rows.
  ``step_ms`` is the median; every ratio is the median over rounds of paired per-round ratios, each sample first
  divided by the mean of the two frozen samples around it, so that a shared machine's changing load cancels. Wall
  time is the headline; the process CPU time is recorded too (``cpu_*``).
- eval throughput (samples/s, inference mode, the same batch): unmerged, interleaved and anchored like the train
  step (``eval_vs_plain``); merged (``method.merge`` on a copy), timed in ``MERGED_PAIRS`` x ``--repeats`` pairs
  with the plain model, alternating which goes first, so ``merged.vs_plain`` (merged throughput / plain
  throughput) is the median of paired ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import NotMergeableError
from .rows import Row, log, shared_copy

ANCHOR_EVERY = 4  # the frozen row is timed again after every 4 rows of a round
MERGED_PAIRS = 3  # merged vs plain: 3 x --repeats (plain, merged) pairs

Sample = tuple[float, float]  # (wall seconds, process CPU seconds)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> Sample:
    """(wall seconds, process CPU seconds) of ``fn``."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


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


def sample(row: Row, phase: str, fn: Callable[[Row], None], device: torch.device) -> Sample | None:
    """Time ``fn(row)`` once and keep it in the row's ``phase`` timing (None: the row failed)."""
    value = guarded(row, phase, lambda r: timed(lambda: fn(r), device))
    if value is not None:
        getattr(row, phase).wall.append(value[0])
        getattr(row, phase).cpu.append(value[1])
    return value


def anchored_round(k: int, rows: list[Row], anchor: Row, phase: str, every: int, fn: Callable[[Row], None],
                   device: torch.device) -> bool:
    """Round ``k``: every working row from row k on, with the anchor row timed at the start, after every ``every``
    rows and at the end; each sample is also stored relative to the mean of the two anchor samples around it.
    False when the anchor itself failed (nothing can be normalised)."""
    before = sample(anchor, phase, fn, device)
    getattr(anchor, phase).rel_wall[k] = getattr(anchor, phase).rel_cpu[k] = 1.0
    order = [r for r in rotation(rows, k) if r is not anchor]
    for first in range(0, len(order), every):
        pending = [(row, sample(row, phase, fn, device)) for row in order[first:first + every]]
        after = sample(anchor, phase, fn, device)
        if before is None or after is None:
            return False
        wall, cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        for row, value in pending:
            if value is not None:
                getattr(row, phase).rel_wall[k], getattr(row, phase).rel_cpu[k] = value[0] / wall, value[1] / cpu
        before = after
    return True


def anchored_rounds(rows: list[Row], anchor: Row, phase: str, rounds: int, every: int, fn: Callable[[Row], None],
                    device: torch.device) -> None:
    """``rounds`` timed rounds over every working row (round k starts at row k), see ``anchored_round``."""
    for k in range(rounds):
        start = time.perf_counter()
        if not anchored_round(k, rows, anchor, phase, every, fn, device):
            return
        log(f"[{phase}] round {k + 1}/{rounds} done in {time.perf_counter() - start:.1f} s")


def measure_merged(row: Row, plain: nn.Module, inputs: dict[str, Any], repeats: int, device: torch.device) -> None:
    """Merged throughput, timed alternately with the plain model (a paired ratio), and the merge time."""
    start = time.perf_counter()
    try:
        merged = row.method.merge(shared_copy(row.model)).eval()
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


# --- ratios -------------------------------------------------------------------------------------------------
def per_round(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a / b in every round both have (each already relative to the frozen row around it)."""
    return [a[k] / b[k] for k in sorted(a.keys() & b.keys())]


def paired(a: dict[int, float], b: dict[int, float]) -> float | None:
    values = per_round(a, b)
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


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
