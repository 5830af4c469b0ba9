"""Optuna searches (conf/hparams_search/, hydra-optuna-sweeper): trials are ordinary runs in distinct variant folders,
the study is a SQLite database in the experiment folder that a relaunch continues, and a failed run is a FAIL trial
that does not stop the search."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from conftest import QUICK, train_py

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

STUDY = "lora_lr_alpha-tiny-roberta-toy-sentiment-r8-seed0"  # conf/hparams_search/lora_lr_alpha.yaml: study_name


def search(tmp_path: Path, *overrides: str) -> None:
    result = train_py(["-m", "hparams_search=lora_lr_alpha", *QUICK, "train.max_steps=2", f"output_root={tmp_path}",
                       f"data.cache_dir={tmp_path / 'cache'}", *overrides], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def trials(tmp_path: Path) -> list:
    with warnings.catch_warnings():  # optuna 2.x warns about its own experimental features
        warnings.simplefilter("ignore")
        study = optuna.load_study(study_name=STUDY,
                                  storage=f"sqlite:///{tmp_path / 'search_lora_lr_alpha' / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def run_records(tmp_path: Path) -> dict[str, dict]:
    """Run folder -> its metrics.json, for every run of the search."""
    return {str(p.parent): json.loads(p.read_text())
            for p in (tmp_path / "search_lora_lr_alpha").glob("tiny-roberta/**/metrics.json")}


def test_a_three_trial_study_writes_three_runs_and_a_relaunch_continues_it(tmp_path):
    search(tmp_path, "hydra.sweeper.n_trials=3")
    first = trials(tmp_path)
    assert [t.number for t in first] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in first)
    runs = run_records(tmp_path)
    assert len(runs) == 3  # one folder per trial, named by its sampled settings
    assert all(r["status"] == "completed" for r in runs.values())
    # every trial's value is its run's best headline dev score, found through the run's variant settings
    for trial in first:
        (record,) = [r for r in runs.values() if r["variant"]["optim.lr"] == repr(trial.params["optim.lr"])]
        assert record["variant"]["method.alpha"] == repr(trial.params["method.alpha"])
        assert trial.value == record["best"]["scores"][record["metric"]]
        assert "hparams_search" not in record["variant"]  # the search names the first folder level, not a variant
    assert (tmp_path / "search_lora_lr_alpha" / "optimization_results.yaml").is_file()

    search(tmp_path, "hydra.sweeper.n_trials=2")  # the same command again: the same study, two more trials
    again = trials(tmp_path)
    assert [t.number for t in again] == [0, 1, 2, 3, 4]
    assert [t.params for t in again[:3]] == [t.params for t in first]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in again)
    assert len(run_records(tmp_path)) == 5  # the new trials drew new settings (the sampler is unseeded)


def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path):
    # A subset size of 0 fails the run's settings check (train.py returns no score): a FAIL trial, and the search
    # goes on. Seeded, the sampler draws 32 then 0 (asserted below, so a changed draw shows as a failure here).
    search(tmp_path, "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=2", "data.max_train_samples=choice(0,32)")
    by_size = {t.params["data.max_train_samples"]: t for t in trials(tmp_path)}
    assert sorted(by_size) == [0, 32]
    assert by_size[0].state == optuna.trial.TrialState.FAIL and by_size[0].value is None
    assert by_size[32].state == optuna.trial.TrialState.COMPLETE
    (record,) = run_records(tmp_path).values()
    assert record["variant"]["data.max_train_samples"] == "32"
    assert by_size[32].value == record["best"]["scores"][record["metric"]]
