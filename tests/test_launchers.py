"""Scaling out with Hydra's launchers and accelerate: joblib, submitit (local stand-in for SLURM), torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import ROOT
from test_train import QUICK, train_py

SWEEP = ["-m", *QUICK, "method=lora", "train.max_steps=2", "seed=0,1", "experiment_name=sweep"]


def completed_seeds(root) -> list[str]:
    runs = sorted(root.glob("sweep/tiny-roberta/toy-sentiment/lora/r8/mpc-none/seed*/metrics.json"))
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


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_data_parallel_run_writes_one_run_folder(tmp_path):
    args = [*QUICK, "method=lora", "train.max_steps=4", "train.batch_size=8", f"output_root={tmp_path}",
            f"data.cache_dir={tmp_path / 'cache'}", "train.cpu=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29533", str(ROOT / "train.py"),
                             *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list(tmp_path.glob("**/metrics.json"))
    assert len(runs) == 1, runs  # both processes agree on Hydra's run folder
    metrics = json.loads(runs[0].read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 4
    assert len(metrics["history"]) == 1  # written once, by the main process
