"""The result: one summary per row, the speed and memory targets (docs/benchmarks.md), the machine, the table."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from .rows import Row
from .timing import paired

TARGETS = {"lora_vs_frozen": 1.10, "vs_peft": 1.0, "dora_vs_lora": 1.3, "merged_vs_plain": 0.98, "svd_setup_s": 10.0}


def ms(values: list[float]) -> float | None:
    return statistics.median(values) * 1e3 if values else None


def megabytes(n: int | None) -> float | None:
    return n / 2**20 if n is not None else None


def row_summary(row: Row, batch: int) -> dict[str, Any]:
    """The row's JSON record; the ratios are added to all rows at once (``timing.add_ratios``)."""
    eval_s = statistics.median(row.eval.wall) if row.eval.wall else None
    peak = row.state_bytes + row.transient_bytes if row.transient_bytes is not None else None
    trainable = sum(p.numel() for p in row.model.parameters() if p.requires_grad) if row.model is not None else None
    return {
        "name": row.name, "kind": row.kind, "method": row.method_name, "error": row.error,
        "trainable_parameters": trainable, "setup_s": row.setup_s,
        "step_ms": ms(row.step.wall), "step_cpu_ms": ms(row.step.cpu),
        "step_ms_all": [round(t * 1e3, 2) for t in row.step.wall],
        "step_rel_frozen": {"wall": row.step.rel_wall, "cpu": row.step.rel_cpu},
        "peak_mb": peak / 2**20 if peak else None,
        "state_mb": megabytes(row.state_bytes), "step_extra_mb": megabytes(row.transient_bytes),
        "eval_samples_per_s": batch / eval_s if eval_s else None,
        "eval_rel_plain": row.eval.rel_wall,
        "merged": row.merged or None,
    }


def check(value: float | None, limit: float, at_most: bool = True) -> dict[str, Any]:
    holds = None if value is None else (value <= limit if at_most else value >= limit)
    return {"value": value, "limit": limit, "holds": holds}


def svd_targets(svd: dict[str, Any]) -> dict[str, Any]:
    """Each SVD-based method's set-up on ``--svd-model``, computed and from the cache."""
    targets = {}
    for name, seconds in (svd.get("seconds") or {}).items():
        targets[f"{name}_svd_setup_{svd['model']}"] = check(seconds, TARGETS["svd_setup_s"])
        targets[f"{name}_svd_setup_{svd['model']}_cached"] = check(svd["cached_seconds"][name],
                                                                    TARGETS["svd_setup_s"])
    return targets


def evaluate_targets(rows: list[dict[str, Any]], svd: dict[str, Any]) -> dict[str, Any]:
    """The targets of docs/benchmarks.md, each with the measured value and whether it holds (None: not measured)."""
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
    return {**targets, **svd_targets(svd)}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_line(r: dict[str, Any]) -> str:
    if r["error"]:
        return f"{r['name']:<22} error: {r['error'][:90]}"
    merged = r["merged"] or {}
    return (f"{r['name']:<22} {fmt(r['setup_s'], '8.2f')} {fmt(r['step_ms'], '8.1f')} "
            f"{fmt(r['step_vs_frozen'], '7.2f')} {fmt(r['step_vs_full'], '6.2f')} "
            f"{fmt(r['step_vs_peft'], '6.2f')} {fmt(r['peak_mb'], '8.0f')} {fmt(r['memory_vs_peft'], '8.2f')} "
            f"{fmt(r['eval_samples_per_s'], '7.1f')} {fmt(r['eval_vs_plain'], '7.3f')} "
            f"{fmt(merged.get('samples_per_s'), '8.1f')} "
            f"{fmt(merged.get('vs_plain'), '7.3f')}")


def format_table(result: dict[str, Any]) -> str:
    header = (f"{'row':<22} {'setup s':>8} {'step ms':>8} {'xfrozen':>7} {'xfull':>6} {'xPEFT':>6} {'peak MB':>8} "
              f"{'xPEFTmem':>8} {'eval/s':>7} {'e/plain':>7} {'merged/s':>8} {'m/plain':>7}")
    lines = [header, "-" * len(header), *(table_line(r) for r in result["rows"])]
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
