"""Gradient accumulation (train.grad_accum_steps): k micro-batches of b train as one batch of k * b, and every
count (steps, schedule, evaluations, checkpoints, AdaLoRA's allocator, max_steps) is in optimizer steps."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import QUICK, kill_after_step, run_in_process, tiny_batch, tiny_model
from omegaconf import open_dict
from safetensors.torch import load_file

from subspace_tuning.config import compose
from subspace_tuning.methods import build_method
from subspace_tuning.resume import config_fingerprint, variant
from subspace_tuning.step import training_step
from subspace_tuning.train import CHECKPOINT

# dropout off, so that the two runs compute the same function; 56 examples: batches of 16 end with a batch of 8,
# so the accumulated run ends each epoch with a partial group (one micro-batch of 8) that still steps
NO_DROPOUT = ["++model.arch.hidden_dropout_prob=0", "++model.arch.attention_probs_dropout_prob=0",
              "model.classifier_dropout=0"]
DATA = ["data.max_train_samples=56", "train.epochs=2", "optim.lr=1e-2", "train.eval_steps=3", *NO_DROPOUT]
ALLOCATE_OFTEN = ["method.tinit=2", "method.tfinal=2", "method.deltaT=1"]  # AdaLoRA: reallocate within the run
TOLERANCE = 1e-5


def run(tmp_path, name: str, overrides: list[str]) -> tuple[dict, dict[str, torch.Tensor]]:
    metrics = run_in_process(tmp_path / name, [*DATA, *overrides])
    return metrics, load_file(tmp_path / name / "run" / "trained.safetensors")


def largest_differences(a: tuple[dict, dict], b: tuple[dict, dict]) -> tuple[float, float]:
    """(the largest train-loss difference over the evaluations, the largest trained-parameter difference)."""
    (metrics_a, params_a), (metrics_b, params_b) = a, b
    assert [h["step"] for h in metrics_a["history"]] == [h["step"] for h in metrics_b["history"]]
    assert params_a.keys() == params_b.keys()
    loss = max(abs(x["train_loss"] - y["train_loss"]) for x, y in zip(metrics_a["history"], metrics_b["history"],
                                                                       strict=True))
    param = max(float((params_a[k].double() - params_b[k].double()).abs().max()) for k in params_a)  # masks: bool
    return loss, param


@pytest.mark.parametrize("method", [["method=lora", "mpc=o"], ["method=adalora", *ALLOCATE_OFTEN]],
                         ids=["lora-mpc_o", "adalora"])
def test_eight_by_two_trains_as_sixteen(tmp_path, method):
    whole = run(tmp_path, "b16", [*method, "train.batch_size=16"])
    accumulated = run(tmp_path, "b8x2", [*method, "train.batch_size=8", "train.grad_accum_steps=2"])
    assert whole[0]["steps"] == accumulated[0]["steps"] == 8  # 4 optimizer steps an epoch (the last of 8 examples)
    assert [h["step"] for h in accumulated[0]["history"]] == [3, 4, 6, 8]  # eval_steps and epochs in steps
    loss, param = largest_differences(whole, accumulated)
    print(f"8 x 2 vs 16 ({' '.join(method)}): max train-loss difference {loss:.2e}, max parameter difference "
          f"{param:.2e}")
    assert loss < TOLERANCE and param < TOLERANCE
    if "mpc=o" in method:
        regularizer = [abs(x["regularizers"]["mpc_o"] - y["regularizers"]["mpc_o"])
                       for x, y in zip(whole[0]["history"], accumulated[0]["history"], strict=True)]
        assert max(regularizer) < TOLERANCE  # once per optimizer step at full weight, not k times or 1 / k
    if "method=adalora" in method:
        assert whole[0]["method_summary"]["final_ranks"] == accumulated[0]["method_summary"]["final_ranks"]


def test_the_comparison_can_fail(tmp_path):
    # without accumulation, batches of 8 take twice the optimizer steps: far from the batch-16 run
    whole = run(tmp_path, "b16", ["method=lora", "train.batch_size=16"])
    _, halves = run(tmp_path, "b8", ["method=lora", "train.batch_size=8", "train.max_steps=8"])
    assert max(float((whole[1][k] - halves[k]).abs().max()) for k in halves) > 100 * TOLERANCE


def test_training_step_takes_micro_batches():
    """``training_step`` on a list of micro-batches equals it on their concatenation (the bench and tests' entry)."""
    batch = tiny_batch(batch=8, seed=3)
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    trained = []
    for data in (batch, halves):
        model = tiny_model("tiny-roberta")
        method = build_method("lora", {}, 4)
        method.apply(model)
        model.eval()  # dropout off (tiny_model's is 0.1); gradients flow all the same
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        result = training_step(model, method, data, optimizer, 1, 10)
        trained.append((float(result.task_loss), method.state_dict(model)))
    (loss_a, state_a), (loss_b, state_b) = trained
    assert abs(loss_a - loss_b) < TOLERANCE
    assert max(float((state_a[k].double() - state_b[k].double()).abs().max()) for k in state_a) < TOLERANCE


def test_resumed_accumulated_run_ends_where_an_uninterrupted_one_does(tmp_path):
    overrides = ["method=lora", "train.batch_size=8", "train.grad_accum_steps=2"]
    uninterrupted = run(tmp_path, "a", overrides)
    # killed in the second epoch: its checkpoint is the first's, at optimizer step 4
    kill_after_step("lora", 6, lambda: run(tmp_path, "b", overrides), tmp_path / "b" / "run")
    checkpoint = torch.load(tmp_path / "b" / "run" / CHECKPOINT, weights_only=True)
    assert checkpoint["progress"]["step"] == 4 and checkpoint["progress"]["epoch"] == 1
    resumed = run(tmp_path, "b", overrides)
    assert largest_differences(uninterrupted, resumed) == (0.0, 0.0)
    assert json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())["steps"] == 8


def test_max_steps_and_the_schedule_count_optimizer_steps(tmp_path):
    metrics = run_in_process(tmp_path, ["method=lora", "train.batch_size=8", "train.grad_accum_steps=3",
                                        "train.max_steps=2", "optim.warmup_ratio=0", "++optim.warmup_steps=0"])
    assert metrics["steps"] == 2 and metrics["last"]["lr"] == 0.0  # decayed to 0 over 2 steps, not 6 batches


def test_identity_of_runs_recorded_before_the_new_settings_is_kept():
    """A config without the new train keys (a run recorded before them) has the fingerprint of today's default
    config; accumulation changes the optimizer steps, so another value is another run (and folder)."""
    today = compose(QUICK)
    older = compose(QUICK)
    with open_dict(older):
        for key in ("log_with", "grad_accum_steps", "gradient_checkpointing", "early_stopping_patience", "compile"):
            older.train.pop(key)
    assert config_fingerprint(older) == config_fingerprint(today)
    assert config_fingerprint(compose(QUICK + ["train.grad_accum_steps=2"])) != config_fingerprint(today)
    assert variant(["train.grad_accum_steps=2"]) == {"train.grad_accum_steps": "2"}
