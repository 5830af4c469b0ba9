"""The switches users expect, each on a tiny model: train.gradient_checkpointing, train.early_stopping_patience and
train.compile (torch.compile, or a warning and eager training where it does not work)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import QUICK, TINY_MODELS, run_in_process, tiny_batch, tiny_model
from safetensors.torch import load_file

from subspace_tuning.config import compose
from subspace_tuning.methods import build_method
from subspace_tuning.resume import config_fingerprint, variant
from subspace_tuning.step import training_step
from subspace_tuning.train import CHECKPOINT, enable_gradient_checkpointing

SHORT = ["method=lora", "train.max_steps=4", "train.batch_size=8", "train.eval_steps=2"]


def trained_with(tmp_path, name: str, overrides: list[str]) -> tuple[dict, dict[str, torch.Tensor]]:
    metrics = run_in_process(tmp_path / name, [*SHORT, *overrides])
    return metrics, load_file(tmp_path / name / "run" / "trained.safetensors")


def assert_same_training(a: tuple[dict, dict], b: tuple[dict, dict], tolerance: float = 1e-6) -> None:
    (metrics_a, params_a), (metrics_b, params_b) = a, b
    assert [(h["step"], h["scores"]) for h in metrics_a["history"]] == [(h["step"], h["scores"])
                                                                       for h in metrics_b["history"]]
    for x, y in zip(metrics_a["history"], metrics_b["history"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=tolerance)
    assert max(float((params_a[k] - params_b[k]).abs().max()) for k in params_a) < tolerance


# --- gradient checkpointing ---------------------------------------------------------------------------------------
def lora_gradients(name: str, checkpointing: dict | None) -> tuple[dict[str, torch.Tensor | None], int]:
    """The LoRA gradients of one step in train mode (dropout on, same seed) and how often layer 0's attention ran."""
    model = tiny_model(name)
    method = build_method("lora", {}, 4)
    method.apply(model)  # the embeddings and every backbone weight frozen
    if checkpointing is not None:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
        # transformers also hooks the embeddings' output to require a gradient, which reentrant checkpointing needs
        # when the embeddings are frozen; non-reentrant does not: compare without that hook
        model.disable_input_require_grads()
    model.train()
    calls = []
    model.base_model.encoder.layer[0].attention.register_forward_hook(lambda *args: calls.append(1))
    torch.manual_seed(5)
    model(**tiny_batch()).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad and "lora" in n}, len(calls)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_non_reentrant_checkpointing_recomputes_and_gives_the_same_gradients(name):
    plain, plain_calls = lora_gradients(name, None)
    checkpointed, calls = lora_gradients(name, {"use_reentrant": False})
    assert (plain_calls, calls) == (1, 2)  # the layer ran again in backward: its activations were not kept
    assert plain.keys() == checkpointed.keys() and plain
    assert all(grad is not None for grad in plain.values())
    assert sum(float(grad.abs().sum()) for key, grad in plain.items() if "lora_B" in key) > 0  # A's are 0: B = 0
    for key, grad in plain.items():
        torch.testing.assert_close(checkpointed[key], grad, rtol=1e-5, atol=1e-7)
    # why non-reentrant: with frozen embeddings no layer input requires a gradient, and reentrant checkpointing
    # then gives the layers' parameters none unless something makes the input require one
    with pytest.warns(UserWarning, match="requires_grad"):
        reentrant, _ = lora_gradients(name, {"use_reentrant": True})
    assert all(grad is None for grad in reentrant.values())


def test_the_recipe_enables_it_non_reentrant():
    model = tiny_model("tiny-roberta")
    method = build_method("lora", {}, 4)
    method.apply(model)
    enable_gradient_checkpointing(model)
    layer = model.base_model.encoder.layer[0]
    assert layer.gradient_checkpointing and layer._gradient_checkpointing_func.keywords["use_reentrant"] is False
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    training_step(model, method, tiny_batch(), optimizer, 1, 10)  # trains through it


def test_a_checkpointed_run_trains_as_a_plain_one(tmp_path):
    plain = trained_with(tmp_path, "plain", [])
    checkpointed = trained_with(tmp_path, "checkpointed", ["train.gradient_checkpointing=true"])
    assert_same_training(plain, checkpointed)
    # the same numbers, so the same run: cosmetic for the fingerprint and the folder
    assert config_fingerprint(compose(QUICK + ["train.gradient_checkpointing=true"])) == config_fingerprint(
        compose(QUICK))
    assert variant(["train.gradient_checkpointing=true"]) == {}


# --- early stopping -----------------------------------------------------------------------------------------------
def scripted_scores(monkeypatch, accuracies: list[float]) -> None:
    """Evaluations that score ``accuracies`` in turn (the module-level ``evaluate`` the recipe calls)."""
    scores = iter(accuracies)

    def evaluate(model, loader, metric_names, accelerator):
        value = next(scores)
        return {name: value for name in metric_names}, {"degenerate": False, "majority_class": 1, "majority_share": 0.5}

    monkeypatch.setattr("subspace_tuning.train.evaluate", evaluate)


def test_early_stopping_after_patience_evaluations_without_a_new_best(tmp_path, monkeypatch, caplog):
    scripted_scores(monkeypatch, [0.5, 0.6, 0.55, 0.6, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    with caplog.at_level(logging.INFO, logger="subspace_tuning"):
        metrics = run_in_process(tmp_path, ["method=lora", "train.batch_size=8", "train.max_steps=10",
                                            "train.eval_steps=1", "train.early_stopping_patience=2"])
    # best at step 2; steps 3 (0.55) and 4 (0.6: a tie is no improvement) fall short: stop after step 4
    assert metrics["status"] == "completed" and metrics["steps"] == 4
    assert [h["step"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["best"]["step"] == 2 and metrics["last"]["step"] == 4
    assert metrics["stopped_early"] == {"step": 4, "epoch": metrics["last"]["epoch"], "patience": 2, "best_step": 2}
    assert "early stopping at step 4: 2 evaluations without improving on step 2's accuracy" in caplog.text


def test_early_stopping_at_an_epoch_end_leaves_no_checkpoint(tmp_path, monkeypatch):
    scripted_scores(monkeypatch, [0.7, 0.6, 0.9, 0.9, 0.9])
    metrics = run_in_process(tmp_path, ["method=lora", "train.batch_size=8", "data.max_train_samples=16",
                                        "train.epochs=5", "train.eval_steps=null", "train.early_stopping_patience=1"])
    assert metrics["steps"] == 4 and [h["epoch"] for h in metrics["history"]] == [1, 2]  # 2 steps an epoch
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_early_stopping_is_off_by_default(tmp_path, monkeypatch):
    scripted_scores(monkeypatch, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1])
    metrics = run_in_process(tmp_path, ["method=lora", "train.batch_size=8", "train.max_steps=5",
                                        "train.eval_steps=1"])
    assert metrics["steps"] == 5 and "stopped_early" not in metrics  # the paper scores the best of the full run
    assert config_fingerprint(compose(QUICK + ["train.early_stopping_patience=3"])) != config_fingerprint(
        compose(QUICK))  # where a run ends changes its result


# --- torch.compile ------------------------------------------------------------------------------------------------
def test_compiled_run_trains_as_a_plain_one(tmp_path, monkeypatch):
    # the eager backend: torch.compile's graph capture and the recipe's wiring without inductor's C++ build, which
    # takes minutes on a small CPU (the real thing: test_compile_with_inductor, marked slow)
    compiled = []
    original = torch.compile

    def eager_compile(model, **kwargs):
        compiled.append(type(model).__name__)
        return original(model, backend="eager", **kwargs)

    plain = trained_with(tmp_path, "plain", [])
    monkeypatch.setattr(torch, "compile", eager_compile)
    with_compile = trained_with(tmp_path, "compiled", ["train.compile=true"])
    assert compiled[-1] == "RobertaForSequenceClassification"  # the model itself (after the probe's function)
    assert with_compile[0]["compiled"] is True and "compiled" not in plain[0]
    assert_same_training(plain, with_compile)


def test_compile_where_unsupported_trains_without_it_and_says_why(tmp_path, monkeypatch, caplog):
    def no_compiler(model, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return fails

    plain = trained_with(tmp_path, "plain", [])
    monkeypatch.setattr(torch, "compile", no_compiler)
    with caplog.at_level(logging.WARNING, logger="subspace_tuning"):
        fallback = trained_with(tmp_path, "fallback", ["train.compile=true"])
    assert ("train.compile=true, but torch.compile does not work on this machine (InvalidCxxCompiler: No working C++ "
            "compiler found); training without it") in caplog.text
    assert fallback[0]["compiled"] is False  # recorded: the configuration asked for it
    assert_same_training(plain, fallback)


def test_compile_is_part_of_a_runs_identity():
    assert config_fingerprint(compose(QUICK + ["train.compile=true"])) != config_fingerprint(compose(QUICK))
    assert variant(["train.compile=true"]) == {"train.compile": "true"}


@pytest.mark.slow
def test_compile_with_inductor(tmp_path):
    # dropout off: inductor's dropout draws other masks than eager's (why train.compile is part of a run's identity)
    no_dropout = ["++model.arch.hidden_dropout_prob=0", "++model.arch.attention_probs_dropout_prob=0",
                  "model.classifier_dropout=0"]
    plain = trained_with(tmp_path, "plain", no_dropout)
    compiled = trained_with(tmp_path, "compiled", [*no_dropout, "train.compile=true"])
    assert compiled[0]["compiled"] is True
    assert_same_training(plain, compiled, tolerance=1e-4)
