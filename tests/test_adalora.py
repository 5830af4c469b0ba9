"""AdaLoRA's rank allocation: the cubic budget schedule, masking, importance scores, s = alpha / current rank."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batch
from method_properties import adapt, logits

from subspace_tuning.methods.extension.adalora import budget_at

# b(t) = bT + (b0 - bT) (1 - (t - tinit) / (T - tfinal - tinit))^3 with T = 100, tinit = 10, tfinal = 30,
# b0 = 96, bT = 48, rounded down; values worked out by hand.
HAND_COMPUTED = [
    (1, 96), (10, 96),  # warmup: full budget
    (11, 93),  # 48 + 48 * (59/60)^3 = 93.6
    (35, 57),  # 48 + 48 * (35/60)^3 = 57.5
    (40, 54),  # 48 + 48 * (1/2)^3 = 54
    (70, 48),  # end of the decrease: the target
    (71, 48), (100, 48),  # final phase
]


@pytest.mark.parametrize("step, budget", HAND_COMPUTED)
def test_budget_schedule_matches_the_formula(step, budget):
    assert budget_at(step, 100, 96, 48, tinit=10, tfinal=30) == budget


def modules_of(model, method):
    return method.adalora_modules(model).values()


def train(model, method, total_steps: int, check_each_step) -> None:
    """AdamW steps with the allocation hook, as the training loop calls it; ``check_each_step(step)`` after each."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for step in range(1, total_steps + 1):
        model(**tiny_batch(seed=step)).loss.backward()
        optimizer.step()
        method.after_optimizer_step(model, step, total_steps)
        optimizer.zero_grad()
        check_each_step(step)
    model.eval()


@pytest.mark.parametrize("delta_t", [1, 3])
def test_allocation_follows_the_budget_and_zeroes_masked_triplets(tiny_name, delta_t):
    total, tinit, tfinal = 14, 2, 4
    _, model, method = adapt(tiny_name, "adalora", rank=4, target_r=2, tinit=tinit, tfinal=tfinal, deltaT=delta_t)
    n = len(modules_of(model, method))  # 12: six kinds in two layers
    kept_before = [n * 4]

    def check(step: int) -> None:
        kept = sum(int(m.rank_mask.sum()) for m in modules_of(model, method))
        if step <= tinit:
            expected = n * 4
        elif step > total - tfinal:
            expected = n * 2
        elif step % delta_t == 0:
            expected = budget_at(step, total, n * 4, n * 2, tinit, tfinal)
        else:
            expected = kept_before[0]  # no allocation at this step
        assert kept == expected, f"step {step}"
        kept_before[0] = kept
        for m in modules_of(model, method):
            assert torch.all(m.lora_E[~m.rank_mask] == 0), f"masked triplet not zero at step {step}"
            assert float(m.scaling) == pytest.approx(m.alpha / max(int(m.rank_mask.sum()), 1))

    train(model, method, total, check)
    summary = method.summary(model)
    assert summary["total_rank"] == n * 2 and sum(summary["final_ranks"].values()) == n * 2
    assert len(summary["final_ranks"]) == n and summary["target_r"] == 2 and summary["init_r"] == 4


def test_importance_scores_are_smoothed_sensitivity_times_uncertainty():
    _, model, method = adapt("tiny-roberta", "adalora", rank=4, tinit=100)
    name, module = next(iter(method.adalora_modules(model).items()))
    with torch.no_grad():
        module.lora_E.fill_(0.5)
    model(**tiny_batch()).loss.backward()
    sensitivity = (module.lora_A * module.lora_A.grad).abs()
    method.after_optimizer_step(model, 1, 1000)  # no optimizer step: the same weights and gradients
    ibar, ubar = method.smoothed[f"{name}.lora_A"]
    torch.testing.assert_close(ibar, 0.15 * sensitivity)  # beta1 = 0.85 from zero
    torch.testing.assert_close(ubar, 0.15 * (sensitivity - 0.15 * sensitivity).abs())  # beta2 = 0.85

    def score(attr: str) -> torch.Tensor:
        ibar, ubar = method.smoothed[f"{name}.{attr}"]
        return ibar * ubar

    # a triplet: its lambda's score plus the mean scores of its row of Q (lora_A) and its column of P (lora_B)
    expected = score("lora_E") + score("lora_A").mean(dim=1) + score("lora_B").mean(dim=0)
    torch.testing.assert_close(method.triplet_scores(name, module), expected)


def test_allocated_model_survives_save_and_load(tmp_path):
    from subspace_tuning.runio import load_tensors, save_tensors

    _, model, method = adapt("tiny-roberta", "adalora", rank=4, target_r=1, tinit=1, tfinal=2, deltaT=1)
    train(model, method, 6, lambda step: None)
    assert sum(int(m.rank_mask.sum()) for m in modules_of(model, method)) == 12
    save_tensors(tmp_path / "trained.safetensors", method.state_dict(model))
    _, fresh, fresh_method = adapt("tiny-roberta", "adalora", rank=4, target_r=1)
    fresh_method.load_state_dict(fresh, load_tensors(tmp_path / "trained.safetensors"))
    torch.testing.assert_close(logits(fresh), logits(model))


def test_fraction_phases_scale_with_the_run():
    _, _, method = adapt("tiny-roberta", "adalora", rank=4)  # tinit 0.15, tfinal 0.5
    assert method.phase_steps(1000) == (150, 500)
    assert method.phase_steps(20) == (3, 10)
