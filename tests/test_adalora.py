"""AdaLoRA's rank allocation: the cubic budget schedule, when masks are taken, importance scores, the scaling,
the two non-default options (masking=every_step, scaling=current_rank) and the allocator's checkpoint state.
(tests/test_peft_oracle_adalora.py runs the default against PEFT's AdaLoRA step by step.)"""

from __future__ import annotations

import io

import pytest
import torch
from conftest import tiny_batch
from method_properties import adapt, logits

from subspace_tuning.errors import ConfigError
from subspace_tuning.methods import build_method
from subspace_tuning.methods.extension.adalora import budget_at
from subspace_tuning.step import training_step

# b(g) = bT + (b0 - bT) (1 - (g - tinit) / (T - tfinal - tinit))^3 with T = 100, tinit = 10, tfinal = 30,
# b0 = 96, bT = 48, rounded down; values worked out by hand.
HAND_COMPUTED = [
    (0, 96), (10, 96),  # warmup: full budget
    (11, 93),  # 48 + 48 * (59/60)^3 = 93.6
    (35, 57),  # 48 + 48 * (35/60)^3 = 57.5
    (40, 54),  # 48 + 48 * (1/2)^3 = 54
    (70, 48),  # end of the decrease: the target
    (71, 48), (99, 48),  # final phase
]


@pytest.mark.parametrize("step, budget", HAND_COMPUTED)
def test_budget_schedule_matches_the_formula(step, budget):
    assert budget_at(step, 100, 96, 48, tinit=10, tfinal=30) == budget


def modules_of(model, method):
    return method.adalora_modules(model).values()


def kept(model, method) -> int:
    return sum(int(m.rank_mask.sum()) for m in modules_of(model, method))


def train(model, method, total_steps: int, check_each_step, first: int = 1, last: int | None = None) -> None:
    """AdamW steps ``first``..``last`` with the allocation hook, as the training loop calls it (step counted from
    1, after optimizer.step(): the runner's own ``training_step``); ``check_each_step(step)`` after each."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for step in range(first, (last or total_steps) + 1):
        training_step(model, method, tiny_batch(seed=step), optimizer, step, total_steps, check_finite=False)
        check_each_step(step)
    model.eval()


def masked_lambdas(model, method) -> torch.Tensor:
    return torch.cat([m.lora_E[~m.rank_mask] for m in modules_of(model, method)])


@pytest.mark.parametrize("delta_t", [1, 3])
def test_allocation_follows_the_budget_at_the_reference_steps(tiny_name, delta_t):
    total, tinit, tfinal = 14, 2, 4
    _, model, method = adapt(tiny_name, "adalora", rank=4, target_r=2, tinit=tinit, tfinal=tfinal, deltaT=delta_t)
    n = len(modules_of(model, method))  # 12: six kinds in two layers
    history = {"kept": n * 4, "regrown": False}

    def check(step: int) -> None:
        g = step - 1  # the reference's global step
        if g <= tinit:
            expected = n * 4
        elif g >= total - tfinal:  # the final mask is taken at g = T - tfinal
            expected = n * 2
        elif g % delta_t == 0:
            expected = budget_at(g, total, n * 4, n * 2, tinit, tfinal)
        else:
            expected = history["kept"]  # no allocation at this step
        assert kept(model, method) == expected, f"step {step}"
        allocated = g >= total - tfinal or (g > tinit and g % delta_t == 0)
        if allocated:  # masked lambdas are zero when a mask is taken and in the final phase
            assert torch.all(masked_lambdas(model, method) == 0), f"masked triplet not zero at step {step}"
        else:  # in between they regrow (the reference's at_allocation masking)
            history["regrown"] |= bool(masked_lambdas(model, method).abs().sum() > 0)
        history["kept"] = expected
        for m in modules_of(model, method):
            assert float(m.scaling) == pytest.approx(m.alpha / 4)  # alpha / initial rank throughout

    train(model, method, total, check)
    assert history["regrown"] == (delta_t > 1)  # with deltaT = 1 every budgeting step allocates
    summary = method.summary(model)
    assert summary["total_rank"] == n * 2 and sum(summary["final_ranks"].values()) == n * 2
    assert len(summary["final_ranks"]) == n and summary["target_r"] == 2 and summary["init_r"] == 4
    assert (summary["scaling"], summary["masking"]) == ("initial_rank", "at_allocation")


def test_masking_every_step_keeps_masked_lambdas_at_zero():
    total, tinit, tfinal = 14, 2, 4
    _, model, method = adapt("tiny-roberta", "adalora", rank=4, target_r=2, tinit=tinit, tfinal=tfinal, deltaT=3,
                             masking="every_step")

    def check(step: int) -> None:
        assert torch.all(masked_lambdas(model, method) == 0), f"masked triplet not zero at step {step}"
        if step == tinit + 2:  # g = tinit + 1 = 3: the first allocation
            assert kept(model, method) < 48

    train(model, method, total, check)
    assert kept(model, method) == 24


def test_scaling_by_current_rank_divides_by_the_kept_triplets():
    _, model, method = adapt("tiny-roberta", "adalora", rank=4, target_r=2, tinit=2, tfinal=4, deltaT=3,
                             scaling="current_rank")

    def check(step: int) -> None:
        for m in modules_of(model, method):
            assert float(m.scaling) == pytest.approx(m.alpha / max(int(m.rank_mask.sum()), 1))

    train(model, method, 14, check)
    # a module with fewer than 4 kept triplets: its merged update uses the larger scale
    module = next(m for m in modules_of(model, method) if 0 < int(m.rank_mask.sum()) < 4)
    expected = module.alpha / int(module.rank_mask.sum()) * module.lora_B @ torch.diag(module.lora_E) @ module.lora_A
    torch.testing.assert_close(module.delta_weight(), expected)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="adalora scaling"):
        build_method("adalora", {"scaling": "current"}, 4)
    with pytest.raises(ConfigError, match="adalora masking"):
        build_method("adalora", {"masking": "always"}, 4)


def test_importance_scores_are_smoothed_sensitivity_times_uncertainty():
    _, model, method = adapt("tiny-roberta", "adalora", rank=4, tinit=100)
    name, module = next(iter(method.adalora_modules(model).items()))
    with torch.no_grad():
        module.lora_E.fill_(0.5)
    model(**tiny_batch()).loss.backward()
    sensitivity = (module.lora_A * module.lora_A.grad).abs()
    method.after_optimizer_step(model, 1, 1000)  # no optimizer step: the same weights and gradients
    ibar, ubar = method.exp_avg_ipt[f"{name}.lora_A"], method.exp_avg_unc[f"{name}.lora_A"]
    torch.testing.assert_close(ibar, 0.15 * sensitivity)  # beta1 = 0.85 from zero
    torch.testing.assert_close(ubar, 0.15 * (sensitivity - 0.15 * sensitivity).abs())  # against the updated Ibar

    def score(attr: str) -> torch.Tensor:
        return method.exp_avg_ipt[f"{name}.{attr}"] * method.exp_avg_unc[f"{name}.{attr}"]

    # a triplet: its lambda's score plus the mean scores of its row of Q (lora_A) and its column of P (lora_B)
    expected = score("lora_E") + score("lora_A").mean(dim=1) + score("lora_B").mean(dim=0)
    torch.testing.assert_close(method.triplet_scores(name, module), expected)


def test_final_mask_uses_the_importance_of_the_step_before_and_then_stops_updating():
    total, tinit, tfinal = 12, 2, 4  # the final mask at g = 8, our step 9
    _, model, method = adapt("tiny-roberta", "adalora", rank=4, target_r=2, tinit=tinit, tfinal=tfinal, deltaT=100)
    train(model, method, total, lambda step: None, last=8)
    scores = torch.cat([method.triplet_scores(n, m) for n, m in method.adalora_modules(model).items()])
    expected = scores > torch.kthvalue(scores, scores.numel() - 24).values
    train(model, method, total, lambda step: None, first=9, last=9)
    assert torch.equal(torch.cat([m.rank_mask for m in modules_of(model, method)]), expected)
    assert method.exp_avg_ipt == {} and method.exp_avg_unc == {}  # dropped: never updated again
    train(model, method, total, lambda step: None, first=10)
    assert torch.equal(torch.cat([m.rank_mask for m in modules_of(model, method)]), expected)
    assert method.exp_avg_ipt == {} and torch.all(masked_lambdas(model, method) == 0)


def test_allocator_state_survives_a_weights_only_checkpoint():
    _, model, method = adapt("tiny-roberta", "adalora", rank=4, target_r=2, tinit=1, tfinal=4, deltaT=2)
    train(model, method, 14, lambda step: None, last=5)
    buffer = io.BytesIO()
    torch.save(method.checkpoint_state(model), buffer)
    buffer.seek(0)
    _, _, restored = adapt("tiny-roberta", "adalora", rank=4, target_r=2, tinit=1, tfinal=4, deltaT=2)
    restored.load_checkpoint_state(model, torch.load(buffer, weights_only=True))
    assert restored.exp_avg_ipt.keys() == method.exp_avg_ipt.keys() and len(method.exp_avg_ipt) == 36
    for key, value in method.exp_avg_ipt.items():
        assert torch.equal(restored.exp_avg_ipt[key], value)
        assert torch.equal(restored.exp_avg_unc[key], method.exp_avg_unc[key])


def test_allocated_model_survives_save_and_load(tmp_path):
    from subspace_tuning.runio import load_tensors, save_tensors

    _, model, method = adapt("tiny-roberta", "adalora", rank=4, target_r=1, tinit=1, tfinal=2, deltaT=1)
    train(model, method, 6, lambda step: None)
    assert kept(model, method) == 12
    save_tensors(tmp_path / "trained.safetensors", method.state_dict(model))
    _, fresh, fresh_method = adapt("tiny-roberta", "adalora", rank=4, target_r=1)
    fresh_method.load_state_dict(fresh, load_tensors(tmp_path / "trained.safetensors"))
    torch.testing.assert_close(logits(fresh), logits(model))


def test_fraction_phases_scale_with_the_run():
    _, _, method = adapt("tiny-roberta", "adalora", rank=4)  # tinit 0.15, tfinal 0.5
    assert method.phase_steps(1000) == (150, 500)
    assert method.phase_steps(20) == (3, 10)
    _, _, method = adapt("tiny-roberta", "adalora", rank=4, deltaT=0.01)  # the protocols' fractions
    assert (method.interval(1000), method.interval(20)) == (10, 1)


def test_a_warmup_longer_than_the_run_keeps_every_triplet():
    # no budgeting phase (PEFT refuses such a schedule): the final mask at g = T - tfinal keeps the full budget
    _, model, method = adapt("tiny-roberta", "adalora", rank=4, tinit=10)
    train(model, method, 3, lambda step: None)
    assert kept(model, method) == 48
