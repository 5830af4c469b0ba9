"""Nothing is lost when a run dies: epoch checkpoints, resuming to the same result, skipping finished runs."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import GLUE_DIR, QUICK, ROOT, kill_after_step, requires_glue, run_in_process, train_py

from subspace_tuning.config import compose
from subspace_tuning.errors import ConfigError
from subspace_tuning.resume import completed_metrics, config_fingerprint
from subspace_tuning.train import CHECKPOINT, train_or_skip

SHORT = ["optim.lr=1e-2", "data.max_train_samples=64", "train.batch_size=16", "train.epochs=3"]


def comparable(metrics: dict) -> list:
    return [(h["step"], h["train_loss"], h["scores"], h["lr"]) for h in metrics["history"]]


@pytest.mark.parametrize("method", ["lora", "adalora"])  # AdaLoRA: the allocator state must survive too
def test_killed_run_resumes_to_the_same_result(tmp_path, method):
    allocate_every_step = ["method.tinit=2", "method.tfinal=2", "method.deltaT=1"] if method == "adalora" else []
    overrides = [*SHORT, f"method={method}", *allocate_every_step]
    uninterrupted = run_in_process(tmp_path / "a", overrides)
    # killed mid-way through the second of three epochs (4 steps each)
    folder = kill_after_step(method, 6, lambda: run_in_process(tmp_path / "b", overrides), tmp_path / "b" / "run")

    resumed = run_in_process(tmp_path / "b", overrides)
    assert resumed["status"] == "completed"
    assert comparable(resumed) == comparable(uninterrupted)
    assert len((folder / "train_log.jsonl").read_text().splitlines()) == 3
    assert not (folder / CHECKPOINT).exists()  # removed once the run is complete


def test_completed_run_is_skipped_and_changed_config_reruns(tmp_path, monkeypatch):
    cfg = compose(QUICK + [f"data.cache_dir={tmp_path / 'cache'}", "method=lora", "train.max_steps=2"])
    first = train_or_skip(cfg, tmp_path / "run")

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr("subspace_tuning.train.train", must_not_train)
    assert train_or_skip(cfg, tmp_path / "run") == first
    # a progress bar and the CPU thread count are cosmetic; the learning rate is not
    assert train_or_skip(compose(QUICK + [f"data.cache_dir={tmp_path / 'cache'}", "method=lora", "train.max_steps=2",
                                          "train.progress=true", "train.threads=1"]), tmp_path / "run") == first
    changed = compose(QUICK + [f"data.cache_dir={tmp_path / 'cache'}", "method=lora", "train.max_steps=2",
                               "optim.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"different configuration \(it differs in: optim.lr 0.001 -> 0.0001\)"):
        train_or_skip(changed, tmp_path / "run")  # never overwritten


def test_a_run_is_the_values_it_resolves_and_keeps_them_across_fingerprint_rules(tmp_path, monkeypatch):
    """A lookup table's entries for other methods or tasks (an experiment's per-method lr, its own top-level tables)
    are not part of a run; the value the run resolves is. A run recorded under an older fingerprint rule is found
    complete by fingerprinting its saved config again."""
    base = QUICK + [f"data.cache_dir={tmp_path / 'cache'}", "method=lora", "train.max_steps=2"]
    folder = tmp_path / "run"
    first = train_or_skip(compose(base + ["+optim.lr_by_method.lora=2e-3"]), folder)
    assert first["status"] == "completed"

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr("subspace_tuning.train.train", must_not_train)
    grown = compose(base + ["+optim.lr_by_method.lora=2e-3", "+optim.lr_by_method.dora=5e-4",
                            "+study_table.rte.lora=0.1"])
    assert train_or_skip(grown, folder) == first
    record = json.loads((folder / "metrics.json").read_text())
    record["config_fingerprint"] = "0" * 16  # what an older rule would have recorded
    (folder / "metrics.json").write_text(json.dumps(record))
    assert completed_metrics(folder, config_fingerprint(grown)) == record
    assert train_or_skip(grown, folder) == record
    with pytest.raises(ConfigError, match=r"it differs in: optim.lr 0.002 -> 0.0001\)"):
        train_or_skip(compose(base + ["+optim.lr_by_method.lora=1e-4"]), folder)


@requires_glue
def test_a_run_recorded_by_an_earlier_version_is_still_complete(tmp_path, monkeypatch):
    """tests/fixtures/recorded_runs/: a run folder's config.yaml and metrics.json as an earlier version wrote them
    (a CPU study run, before protocol.group_by_length and the lookup-table rules). Today's configuration of that run
    must find it complete: a setting added since must leave the identity alone at the value that computes what the
    run did (resume.NEUTRAL) or be read through another setting (resume.LOOKUPS)."""
    recorded = ROOT / "tests" / "fixtures" / "recorded_runs" / "cpu_study-sst2-lora-mpc_o-seed0"
    folder = tmp_path / "seed0"
    shutil.copytree(recorded, folder)
    cfg = compose(["experiment=cpu_study", "task=sst2", "method=lora", "mpc=o", "seed=0",
                   f"task.data_dir={GLUE_DIR}"])
    record = json.loads((folder / "metrics.json").read_text())
    assert completed_metrics(folder, config_fingerprint(cfg)) == record
    monkeypatch.setattr("subspace_tuning.train.train", lambda *a, **k: pytest.fail("trained again"))
    assert train_or_skip(cfg, folder) == record


def test_relaunched_sweep_runs_only_what_is_missing(tmp_path):
    args = ["-m", *QUICK, "method=lora", "train.max_steps=2", f"output_root={tmp_path}",
            f"data.cache_dir={tmp_path / 'cache'}", "experiment_name=sweep"]
    first = train_py([*args, "seed=0"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    dry = train_py([*args, "seed=0,1", "hydra.sweeper.dry_run=true"], cwd=tmp_path)
    assert "grid: 2 runs (1 rows x 2 grid points); 1 already complete, 1 to run" in dry.stdout
    assert "seed=1" in dry.stdout and not list(tmp_path.glob("sweep/**/seed1"))
    second = train_py([*args, "seed=0,1"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "skipping 1 completed runs of 2 (and 0 jobs that repeat a run); launching 1" in second.stderr + second.stdout
    assert list(tmp_path.glob("sweep/tiny-roberta/toy-sentiment/lora/r8/mpc-none/*/seed1/metrics.json"))


def test_rows_cross_the_grid(tmp_path):
    rows = "['method=full','method=lora rank=2']"
    result = train_py(["-m", *QUICK, "seed=0,1", f"+hydra.sweeper.rows={rows}", "hydra.sweeper.dry_run=true",
                       f"output_root={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "grid: 4 runs (2 rows x 2 grid points)" in result.stdout
    assert result.stdout.count("method=lora rank=2") == 2
