"""The Python half of ``scripts/gpu_check.sh`` (docs/benchmarks.md, "GPU check"): the machine probe and the one
JSON record. The shell script runs the parts, each under ``timeout``; this file only looks and writes.

    python scripts/gpu_check.py probe --work WORK          # WORK/machine.json; prints cuda | forced-cpu | no-cuda
    python scripts/gpu_check.py assemble --work WORK --out gpu_check.json [--why REASON]

``probe`` prints ``cuda`` when torch sees a CUDA GPU, ``forced-cpu`` when there is none but ``GPU_CHECK_FORCE_CPU=1``
asks for the parts on the CPU at tiny sizes (how the tests exercise the whole path), else ``no-cuda``.
``assemble`` reads what the parts left in WORK (``<part>.status``: exit status, wall seconds, time limit;
``<part>.log``; the benchmark's JSON; the training run's ``metrics.json``) and writes the record; ``--why`` makes it
the record of a check that did not run (``"ran": false``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

PARTS = ("bench", "train")  # the order gpu_check.sh runs them in
LOG_TAIL_LINES = 15  # a failed part's last log lines go into the record (the logs themselves are not kept)
TIMEOUT_STATUSES = (124, 137)  # timeout(1): the limit was reached (124), or the part ignored TERM and was killed


def forced_cpu() -> bool:
    return os.environ.get("GPU_CHECK_FORCE_CPU", "") == "1"


def machine() -> dict[str, Any]:
    """The torch build, the GPU and its bf16 support (what the parts' numbers depend on)."""
    import platform

    import torch

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "cuda_available": cuda,
                            "device_count": torch.cuda.device_count() if cuda else 0, "cpu_count": os.cpu_count()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), bf16_supported=torch.cuda.is_bf16_supported(),
                    cudnn=torch.backends.cudnn.version())
    else:
        info.update(gpu=None, bf16_supported=False)
    return info


def probe(work: Path) -> str:
    """WORK/machine.json, and the verdict gpu_check.sh reads: ``<cuda | forced-cpu | no-cuda> <bf16: 1 | 0>``."""
    info = machine()
    (work / "machine.json").write_text(json.dumps(info))
    verdict = "cuda" if info["cuda_available"] else "forced-cpu" if forced_cpu() else "no-cuda"
    return f"{verdict} {int(bool(info['bf16_supported']))}"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_settings(path: Path) -> dict[str, str]:
    """gpu_check.sh's settings: one ``key value`` line each (the value is the rest of the line)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict((line.split(" ", 1) + [""])[:2] for line in lines if line)


def log_tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return []


def part_status(work: Path, name: str) -> dict[str, Any]:
    """One part's exit status, wall time and limit, and in words: ok, failed, timeout, skipped or not run."""
    fields = (work / f"{name}.status").read_text().split() if (work / f"{name}.status").exists() else []
    if len(fields) != 3:
        return {"status": "not run", "exit_status": None, "wall_s": None, "timeout_s": None}
    code, wall, limit = fields
    if code == "skipped":  # gpu_check.sh had no time left for it within its total
        return {"status": "skipped", "exit_status": None, "wall_s": 0.0, "timeout_s": int(limit)}
    rc = int(code)
    status = "ok" if rc == 0 else "timeout" if rc in TIMEOUT_STATUSES else "failed"
    record = {"status": status, "exit_status": rc, "wall_s": round(float(wall), 1), "timeout_s": int(limit)}
    if status != "ok":
        record["log_tail"] = log_tail(work / f"{name}.log")
    return record


def bench_part(work: Path, settings: dict[str, str]) -> dict[str, Any]:
    """The per-step benchmark: its whole result, and per row the headline numbers."""
    result = read_json(work / "bench.json")
    part: dict[str, Any] = {**part_status(work, "bench"), "command": settings.get("bench_command"),
                            "bf16": settings.get("bench_dtype") == "bfloat16"}
    if not part["bf16"]:
        part["why"] = settings.get("bench_why")
    if not isinstance(result, dict):
        return {**part, "summary": None, "result": None}
    keys = ("step_ms", "step_vs_frozen", "step_vs_full", "step_vs_peft", "peak_mb", "memory_vs_peft", "error")
    summary = {row["name"]: {k: row.get(k) for k in keys} for row in result.get("rows", [])}
    return {**part, "summary": summary, "result": result}


def training_metrics(output_root: Path) -> dict[str, Any] | None:
    """The headline of the quickstart run's metrics.json (the run folder is the one under ``output_root``)."""
    found = sorted(output_root.rglob("metrics.json")) if output_root.is_dir() else []
    metrics = read_json(found[0]) if found else None
    if not isinstance(metrics, dict):
        return None
    headline = metrics.get("metric")
    best, last = (((metrics.get(which) or {}).get("scores") or {}).get(headline) for which in ("best", "last"))
    return {"run_status": metrics.get("status"), "metric": headline, "best": best, "last": last,
            "steps": metrics.get("steps"), "train_steps_per_s": metrics.get("train_steps_per_s"),
            "train_time_s": metrics.get("train_time_s"), "wall_time_s": metrics.get("wall_time_s"),
            "peak_memory": metrics.get("memory"), "parameters": metrics.get("parameters"),
            "versions": metrics.get("versions"), "error": metrics.get("error")}


def train_part(work: Path, settings: dict[str, str]) -> dict[str, Any]:
    part: dict[str, Any] = {**part_status(work, "train"), "command": settings.get("train_command")}
    try:  # what train.mixed_precision=auto resolved to on this machine (metrics.json keeps the setting, auto)
        from subspace_tuning.train import resolve_mixed_precision

        part["mixed_precision"] = resolve_mixed_precision("auto")
    except Exception as err:  # the record must be written whatever the environment lacks
        part["mixed_precision"] = f"unknown ({type(err).__name__})"
    return {**part, "metrics": training_metrics(work / "train_out")}


def assemble(work: Path, why: str | None) -> tuple[dict[str, Any], int]:
    """The record, and gpu_check.sh's exit status: 0 every part ok, 1 a part failed, timed out or was skipped,
    3 nothing ran (no GPU: not a pass)."""
    settings = read_settings(work / "settings.txt")
    record: dict[str, Any] = {"ran": why is None, "mode": settings.get("mode"), "started": settings.get("started"),
                              "machine": read_json(work / "machine.json"),
                              "total_limit_s": int(settings.get("total_limit_s") or 0) or None}
    if why is not None:
        return {**record, "why": why}, 3
    if record["mode"] == "forced-cpu":
        record["note"] = ("GPU_CHECK_FORCE_CPU=1: the parts ran on the CPU at tiny sizes to test this script; "
                          "these are not GPU numbers")
    record["parts"] = {"bench": bench_part(work, settings), "train": train_part(work, settings)}
    record["wall_s"] = sum(p["wall_s"] or 0.0 for p in record["parts"].values())
    record["ok"] = all(p["status"] == "ok" for p in record["parts"].values())
    return record, 0 if record["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    from subspace_tuning.cli import ArgumentParser

    parser = ArgumentParser("python scripts/gpu_check.py", __doc__)
    parser.add_argument("action", choices=("probe", "assemble"))
    parser.add_argument("--work", required=True, help="gpu_check.sh's working folder")
    parser.add_argument("--out", default=None, help="assemble: the JSON record to write")
    parser.add_argument("--why", default=None, help="assemble: why nothing ran (a ran=false record)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    if args.action == "probe":
        print(probe(work))
        return 0
    if args.out is None:
        parser.error("assemble needs --out")
    from subspace_tuning.runio import atomic_write_json

    record, code = assemble(work, args.why)
    atomic_write_json(Path(args.out), record)
    return code


if __name__ == "__main__":
    sys.exit(main())
