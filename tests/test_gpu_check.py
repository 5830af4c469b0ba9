"""scripts/gpu_check.sh (docs/benchmarks.md, "GPU check") on this CPU machine: it refuses cleanly without a GPU
(exit 3, one line, a ran=false record), and with GPU_CHECK_FORCE_CPU=1 it takes the whole path at tiny sizes and
records every part with its status; the record's assembly is also checked on made-up part outputs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
REFUSAL = "gpu_check: no CUDA GPU (torch.cuda.is_available() is False); nothing run"
BENCH_ROWS = {"frozen", "full", "lora", "dora", "adalora", "ia3", "peft:lora", "peft:dora", "peft:adalora", "peft:ia3"}

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-machine behaviour")


def load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_check(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k != "OUT"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env={**clean, **env}, capture_output=True,
                          text=True, timeout=400)


@needs_no_gpu
@pytest.mark.parametrize("where", ["OUT", "cwd"])
def test_refuses_cleanly_without_a_gpu(tmp_path, where):
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    start = time.monotonic()
    done = gpu_check([], cwd, **({"OUT": str(out)} if where == "OUT" else {}))
    assert time.monotonic() - start < 60  # a few seconds; generous for a loaded test machine
    assert (done.returncode, done.stdout, done.stderr) == (3, "", REFUSAL + "\n")
    folder = out if where == "OUT" else cwd
    assert [p.name for p in folder.iterdir()] == ["gpu_check.json"]  # one file, nothing else left behind
    record = json.loads((folder / "gpu_check.json").read_text())
    assert record["ran"] is False and record["why"] == REFUSAL.removeprefix("gpu_check: ")
    assert record["machine"]["cuda_available"] is False and record["machine"]["torch"] == torch.__version__
    assert "parts" not in record


@needs_no_gpu
def test_forced_cpu_runs_every_part_and_records_it(tmp_path):
    done = gpu_check([str(tmp_path / "out")], tmp_path, GPU_CHECK_FORCE_CPU="1")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert record["ran"] is True and record["ok"] is True and record["mode"] == "forced-cpu"
    bench, train = record["parts"]["bench"], record["parts"]["train"]
    for part in (bench, train):
        assert part["status"] == "ok" and part["exit_status"] == 0 and 0 < part["wall_s"] <= part["timeout_s"]
    assert bench["bf16"] is False and "GPU_CHECK_FORCE_CPU" in bench["why"]  # no bf16 here, and it says why
    assert set(bench["summary"]) == BENCH_ROWS
    assert all(row["error"] is None and row["step_ms"] > 0 for row in bench["summary"].values())
    assert bench["summary"]["lora"]["step_vs_peft"] > 0 and bench["result"]["settings"]["dtype"] == "float32"
    metrics = train["metrics"]
    assert metrics["run_status"] == "completed" and metrics["metric"] == "accuracy" and 0 <= metrics["best"] <= 1
    assert metrics["train_steps_per_s"] > 0 and metrics["peak_memory"]["peak_memory_mb"] > 0
    assert train["mixed_precision"] == "no" and "experiment=quickstart" in train["command"]


@needs_no_gpu
def test_a_part_that_hangs_is_cut_off_recorded_and_the_script_goes_on(tmp_path):
    done = gpu_check([str(tmp_path)], tmp_path, GPU_CHECK_FORCE_CPU="1", GPU_CHECK_BENCH_S="1",
                     GPU_CHECK_TRAIN_S="1")
    assert done.returncode == 1
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    for name in ("bench", "train"):  # the first part's timeout did not stop the second from running
        assert parts[name]["status"] == "timeout" and parts[name]["exit_status"] == 124
        assert parts[name]["timeout_s"] == 1 and isinstance(parts[name]["log_tail"], list)
    assert parts["bench"]["summary"] is None and parts["train"]["metrics"] is None


@pytest.mark.parametrize(("status_line", "status", "code"), [
    ("0 3.5 150", "ok", 0), ("1 3.5 150", "failed", 1), ("124 150.0 150", "timeout", 1),
    ("137 160.0 150", "timeout", 1), ("skipped 0 2", "skipped", 1), (None, "not run", 1)])
def test_assembly_records_each_part_status(tmp_path, status_line, status, code):
    driver = load_driver()
    (tmp_path / "settings.txt").write_text("mode cuda\ntotal_limit_s 450\nbench_dtype bfloat16\nbench_why \n"
                                           "bench_command python -m subspace_tuning.bench\ntrain_command x y\n")
    (tmp_path / "machine.json").write_text(json.dumps({"gpu": "H200", "bf16_supported": True}))
    (tmp_path / "bench.status").write_text("0 40.0 240\n")
    (tmp_path / "bench.json").write_text(json.dumps({"rows": [{"name": "lora", "step_ms": 21.0, "error": None}]}))
    if status_line is not None:
        (tmp_path / "train.status").write_text(status_line + "\n")
    (tmp_path / "train.log").write_text("\n".join(f"line {i}" for i in range(40)))
    record, exit_code = driver.assemble(tmp_path, None)
    assert exit_code == code and record["ok"] is (code == 0) and record["total_limit_s"] == 450
    bench, train = record["parts"]["bench"], record["parts"]["train"]
    assert bench["status"] == "ok" and bench["bf16"] is True and "why" not in bench
    assert bench["summary"]["lora"]["step_ms"] == 21.0
    assert train["status"] == status and train["command"] == "x y" and train["metrics"] is None
    if status in ("failed", "timeout"):  # what went wrong travels in the record (the logs are not kept)
        assert train["log_tail"] == [f"line {i}" for i in range(40 - driver.LOG_TAIL_LINES, 40)]


def test_assembly_of_a_check_that_did_not_run(tmp_path):
    (tmp_path / "settings.txt").write_text("mode no-cuda\ntotal_limit_s 450\n")
    record, exit_code = load_driver().assemble(tmp_path, "no CUDA GPU")
    assert exit_code == 3 and record["ran"] is False and record["why"] == "no CUDA GPU" and "parts" not in record
