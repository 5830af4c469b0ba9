"""Scaling out with Hydra's launchers and accelerate: joblib, submitit (local stand-in for SLURM), torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import QUICK, ROOT, train_py

SWEEP = ["-m", *QUICK, "method=lora", "train.max_steps=2", "seed=0,1", "experiment_name=sweep"]


def completed_seeds(root) -> list[str]:
    runs = sorted(root.glob("sweep/tiny-roberta/toy-sentiment/lora/r8/mpc-none/**/seed*/metrics.json"))
    return [p.parent.name for p in runs if json.loads(p.read_text())["status"] == "completed"]


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    result = train_py([*SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"output_root={tmp_path}",
                       f"data.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert completed_seeds(tmp_path) == ["seed0", "seed1"]


def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    result = train_py([*SWEEP, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                       f"output_root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert completed_seeds(tmp_path) == ["seed0", "seed1"]
    assert list(tmp_path.glob("sweep/.submitit/*/*_log.out"))  # the jobs ran through submitit


def lr_by_step(metrics: dict) -> dict[int, float]:
    return {record["step"]: record["lr"] for record in metrics["history"]}


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_data_parallel_run_writes_one_run_folder_with_the_same_schedule(tmp_path):
    # evaluations at 25 / 50 / 75 % of 8 optimizer steps log the learning rate; warmup of 2 steps
    args = [*QUICK, "method=lora", "train.max_steps=8", "train.eval_steps=2", "train.batch_size=8",
            "optim.warmup_ratio=0.25", f"data.cache_dir={tmp_path / 'cache'}", "train.cpu=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29533", str(ROOT / "train.py"),
                             *args, f"output_root={tmp_path / 'two'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "two").glob("**/metrics.json"))
    assert len(runs) == 1, runs  # both processes agree on Hydra's run folder
    two = json.loads(runs[0].read_text())
    assert two["status"] == "completed" and two["steps"] == 8
    assert [r["step"] for r in two["history"]] == [2, 4, 6, 8]  # written once, by the main process

    result = train_py([*args, f"output_root={tmp_path / 'one'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (one_path,) = (tmp_path / "one").glob("**/metrics.json")
    one = json.loads(one_path.read_text())
    assert lr_by_step(two) == pytest.approx(lr_by_step(one), rel=1e-9)
    peak = lr_by_step(one)[2]  # warmup ends at step 2, then linear decay to 0 at step 8
    assert [lr_by_step(one)[s] for s in (4, 6)] == pytest.approx([peak * 4 / 6, peak * 2 / 6], rel=1e-9)
