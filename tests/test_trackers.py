"""Experiment tracking through accelerate's trackers (train.log_with), read back from TensorBoard's event files."""

from __future__ import annotations

import pytest
from conftest import QUICK, run_in_process

pytest.importorskip("tensorboard", reason="tensorboard is in the dev extra: pip install -e '.[dev]'")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from subspace_tuning.config import compose  # noqa: E402
from subspace_tuning.errors import ConfigError  # noqa: E402
from subspace_tuning.resume import config_fingerprint, variant  # noqa: E402
from subspace_tuning.train import TRACKER_DIR  # noqa: E402
from subspace_tuning.validate import validate_settings  # noqa: E402

TRACKED = ["method=adalora", "mpc=o", "train.max_steps=6", "train.eval_steps=3", "train.batch_size=8",
           "train.log_with=tensorboard", "train.log_every=2", "method.tinit=1", "method.tfinal=1", "method.deltaT=1"]


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under ``folder``: tag -> [(step, value)]."""
    (events,) = {path.parent for path in folder.rglob("events.out.tfevents.*") if not path.parent.name[0].isdigit()}
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_scalars_are_the_runs_numbers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written outside the run folder
    metrics = run_in_process(tmp_path, TRACKED)
    tracker = tmp_path / "run" / TRACKER_DIR
    logged = scalars(tracker)
    history = metrics["history"]
    for tag in ("train/loss", "train/lr", "train/mpc_o", "train/grad_norm", "rank/total"):
        assert [step for step, _ in logged[tag]] == [2, 4, 6], tag  # every train.log_every optimizer steps
    # one epoch (6 steps < an epoch): the mean of the three logged 2-step means is the run's mean train loss
    mean = sum(value for _, value in logged["train/loss"]) / 3
    assert mean == pytest.approx(history[-1]["train_loss"], rel=1e-6)
    mpc_mean = sum(value for _, value in logged["train/mpc_o"]) / 3
    assert mpc_mean == pytest.approx(history[-1]["regularizers"]["mpc_o"], rel=1e-6)
    assert logged["train/lr"][-1] == (6, pytest.approx(history[-1]["lr"]))
    for name in ("accuracy", "f1"):
        assert logged[f"eval/{name}"] == [(h["step"], pytest.approx(h["scores"][name], abs=1e-6)) for h in history]
    # AdaLoRA's rank pattern over time: the initial budget, then the allocator's, ending at the recorded ranks
    summary = metrics["method_summary"]
    assert logged["rank/total"][0][1] == summary["init_r"] * len(summary["final_ranks"])
    assert logged["rank/total"][-1][1] == summary["total_rank"] < logged["rank/total"][0][1]
    for module, rank in summary["final_ranks"].items():
        assert logged[f"rank/{module}"][-1] == (6, rank)
    # the final metrics
    assert logged["final/best_accuracy"] == [(6, pytest.approx(metrics["best"]["scores"]["accuracy"]))]
    assert logged["final/last_accuracy"] == [(6, pytest.approx(metrics["last"]["scores"]["accuracy"]))]
    assert logged["final/total_rank"] == [(6, summary["total_rank"])]
    # the resolved configuration, flat, as the run's hyperparameters
    (hparams,) = tracker.rglob("hparams.yml")
    text = hparams.read_text()
    assert "optim.lr: 0.001" in text and "method.name: adalora" in text and "rank: 8" in text
    assert {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()} <= {"run", "cache"}


def test_no_tracker_by_default(tmp_path):
    run_in_process(tmp_path, ["method=lora", "train.max_steps=2", "train.batch_size=8"])
    assert not (tmp_path / "run" / TRACKER_DIR).exists()


def test_log_with_is_cosmetic():
    # tracking a run does not make it another run: the same fingerprint, no variant folder
    plain = compose(QUICK + ["method=lora"])
    tracked = compose(QUICK + ["method=lora", "train.log_with=[tensorboard]"])
    assert config_fingerprint(plain) == config_fingerprint(tracked)
    assert variant(["train.log_with=tensorboard", "train.progress=false"]) == {}


def test_a_tracker_that_is_not_installed_is_refused(monkeypatch):
    monkeypatch.setattr("accelerate.tracking.get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match=r"train.log_with='tensorboard' is not allowed: the package of tensorboard "
                                          r"is not installed \(pip install -e \".\[trackers\]\""):
        validate_settings(compose(QUICK + ["train.log_with=tensorboard"]))
