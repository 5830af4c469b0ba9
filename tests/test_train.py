"""The training recipe end to end on tiny models and the built-in toy task (seconds each)."""

from __future__ import annotations

import json

import pytest
from conftest import QUICK, run_in_process, train_py

from subspace_tuning.config import compose
from subspace_tuning.errors import TrainingDiverged


def test_short_run_lowers_the_loss(tmp_path):
    # the real pretrained MiniLM (offline) with LoRA: 128 toy examples, 4 epochs of 8 steps
    metrics = run_in_process(tmp_path, ["model=minilm", "method=lora", "optim.lr=3e-3", "data.max_train_samples=128",
                                        "train.batch_size=16", "train.epochs=4"])
    losses = [record["train_loss"] for record in metrics["history"]]
    assert metrics["status"] == "completed" and len(losses) == 4
    assert losses[-1] < 0.8 * losses[0], losses


def test_run_folder_is_complete(tmp_path):
    metrics = run_in_process(tmp_path, ["method=lora", "train.max_steps=6", "train.eval_steps=3",
                                        "train.batch_size=16"])
    folder = tmp_path / "run"
    on_disk = json.loads((folder / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics, default=str))
    assert on_disk["status"] == "completed" and on_disk["steps"] == 6 and on_disk["rank"] == 8
    assert [h["step"] for h in on_disk["history"]] == [3, 6]
    for key in ("best", "last", "parameters", "wall_time_s", "train_steps_per_s", "memory", "versions", "git_commit"):
        assert key in on_disk, key
    assert on_disk["parameters"]["per_mille"] > 0
    # where the wall time went: set-up, training, evaluation, each part of the whole
    times = [on_disk[key] for key in ("setup_time_s", "train_time_s", "eval_time_s")]
    assert all(t > 0 for t in times) and sum(times) <= on_disk["wall_time_s"] + 0.05
    assert len((folder / "train_log.jsonl").read_text().splitlines()) == 2
    assert "name: lora" in (folder / "config.yaml").read_text()
    assert (folder / "trained.safetensors").stat().st_size > 0
    assert not list(folder.glob(".*.tmp"))  # no temporary files left behind


def test_rank_free_method_is_recorded_without_rank(tmp_path):
    metrics = run_in_process(tmp_path, ["method=full", "train.max_steps=2", "train.batch_size=8"])
    assert metrics["rank"] is None
    cfg = compose(QUICK + ["method=full"], return_hydra_config=True)
    assert "/full/no-rank/" in cfg.hydra.run.dir


def test_nan_loss_stops_the_run_and_is_recorded(tmp_path, monkeypatch):
    import torch

    from subspace_tuning.methods.extension.lora import LoRA

    monkeypatch.setattr(LoRA, "regularizers", lambda self, model: {"broken": torch.tensor(float("nan"))})
    with pytest.raises(TrainingDiverged, match="loss became nan at step 1"):
        run_in_process(tmp_path, ["method=lora", "train.max_steps=3"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "nan" in metrics["error"]


def test_train_py_writes_metrics(tmp_path):
    result = train_py(QUICK + ["method=lora", "rank=2", "train.max_steps=4", f"output_root={tmp_path}",
                               f"data.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    # QUICK's command-line settings outside the readable path name a variant folder before the seed
    (record,) = tmp_path.glob("default/tiny-roberta/toy-sentiment/lora/r2/mpc-none/*/seed0/metrics.json")
    folder = record.parent
    assert folder.parent.name == "train.eval_batch_size=200,train.max_steps=4"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["best"]["scores"]["accuracy"] >= 0
    assert "toy-sentiment accuracy: best" in result.stdout


def test_two_seed_multirun_writes_two_run_folders(tmp_path):
    result = train_py(["-m", *QUICK, "method=lora", "seed=0,1", "train.max_steps=2", f"output_root={tmp_path}",
                       f"data.cache_dir={tmp_path / 'cache'}", "experiment_name=sweep"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(tmp_path.glob("sweep/tiny-roberta/toy-sentiment/lora/r8/mpc-none/*/seed*/metrics.json"))
    assert [p.parent.name for p in runs] == ["seed0", "seed1"]
    assert all(json.loads(p.read_text())["status"] == "completed" for p in runs)
    first, second = (json.loads(p.read_text())["history"][0]["train_loss"] for p in runs)
    assert first != second  # the seed reaches the data order and the initialisation


def test_mnli_evaluates_matched_and_mismatched(tmp_path):
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label\n"
    labels = ["entailment", "neutral", "contradiction"]
    folder = tmp_path / "glue" / "MNLI"
    folder.mkdir(parents=True)
    for name, n in (("train.tsv", 24), ("dev_matched.tsv", 9), ("dev_mismatched.tsv", 6)):
        rows = "".join(f"{i}\t0\t0\tfiction\tpremise {i}\thypothesis {i}\t{labels[i % 3]}\n" for i in range(n))
        (folder / name).write_text(header + rows)
    metrics = run_in_process(tmp_path, ["task=mnli", f"task.data_dir={tmp_path / 'glue'}", "method=lora",
                                        "train.max_steps=1", "train.batch_size=8"])
    assert set(metrics["last"]["scores"]) == {"accuracy", "validation_mismatched/accuracy"}


def test_mpc_term_is_logged_apart_from_the_task_loss(tmp_path):
    # the constraint's weight comes from the protocol by interpolation: it must reach the run resolved
    metrics = run_in_process(tmp_path, ["method=lora", "mpc=o", "train.max_steps=2", "train.batch_size=8"])
    (record,) = metrics["history"]
    assert set(record["regularizers"]) == {"mpc_o"} and record["regularizers"]["mpc_o"] > 0


def test_auto_precision_is_full_precision_without_a_gpu(monkeypatch):
    from subspace_tuning.train import resolve_mixed_precision

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_mixed_precision("auto") == "no" and resolve_mixed_precision("fp16") == "fp16"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: True)
    assert resolve_mixed_precision("auto") == "bf16"


def test_nonfinite_steps_are_caught_when_checked_every_few_steps(tmp_path, monkeypatch):
    # on a GPU the loop reads finiteness back only every log_every steps; the run still fails, naming the steps
    import torch

    from subspace_tuning.methods.extension.lora import LoRA
    from subspace_tuning.train import Recipe

    original = Recipe.setup

    def gpu_like(self):
        original(self)
        self.check_every = 2

    monkeypatch.setattr(Recipe, "setup", gpu_like)
    monkeypatch.setattr(LoRA, "regularizers", lambda self, model: {"broken": torch.tensor(float("inf"))})
    with pytest.raises(TrainingDiverged, match="non-finite between steps 1 and 2"):
        run_in_process(tmp_path, ["method=lora", "train.max_steps=4"])


def test_collector_is_paused_for_set_up_and_frozen_objects_thawed_after_the_run(tmp_path, monkeypatch):
    """collector_paused: while a run trains, what set-up left is frozen out of the collector's passes and the
    collector runs; after the run (completed or failed) nothing stays frozen, so a sweep's next run can collect it."""
    import gc

    from subspace_tuning.train import Recipe

    seen, original = {}, Recipe.train

    def train(self):
        seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())
        original(self)

    monkeypatch.setattr(Recipe, "train", train)
    gc.disable()  # as train.py leaves it for the first run
    run_in_process(tmp_path, [])
    assert seen["enabled"] and seen["frozen"] > 0
    assert gc.isenabled() and gc.get_freeze_count() == 0

    def fail(self):
        raise RuntimeError("stopped")

    monkeypatch.setattr(Recipe, "train", fail)
    with pytest.raises(RuntimeError):
        run_in_process(tmp_path / "failed", [])
    assert gc.isenabled() and gc.get_freeze_count() == 0
