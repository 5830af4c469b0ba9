"""FlexLoRA's rank allocation: the entropy, the rule on a hand-made case (which module shrinks, which grows, which
direction goes, the grown one's zero impact), the limits, the schedule in optimizer steps, the budget over a real
run, merge and save/load after directions moved, and resuming a killed run. (tests/test_mpc.py checks MPC on it.)
(tests/test_methods.py checks the registry properties: identity at init, training, merge, save/load, count.)"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_batch
from method_properties import adapt, logits
from test_resume import SHORT, comparable

from subspace_tuning.errors import ConfigError
from subspace_tuning.methods import build_method
from subspace_tuning.methods.extension.flexlora import b_at, spectral_entropy
from subspace_tuning.runio import load_tensors, save_tensors
from subspace_tuning.step import training_step

# H = -sum p log(p + 1e-8) / log(k), p = lambda^2 / sum lambda^2, worked out by hand
ENTROPIES = [
    ([1.0, 1.0, 1.0, 1.0], 1.0),  # energy spread evenly
    ([-2.0, 2.0], 1.0),  # the sign does not matter, the energy does
    ([3.0, 4.0], 0.942683),  # p = 0.36, 0.64: (0.36 ln(1/0.36) + 0.64 ln(1/0.64)) / ln 2
    ([1.0, 0.0, 0.0], 0.0),  # all energy in one direction
    ([0.5], 1.0),  # one direction: evenly spread by convention (the toolkit's 0/0)
    ([0.0, 0.0], 0.0),  # no energy at all
]


@pytest.mark.parametrize("lambdas, entropy", ENTROPIES)
def test_spectral_entropy_matches_the_formula(lambdas, entropy):
    assert spectral_entropy(torch.tensor(lambdas)) == pytest.approx(entropy, abs=1e-6)


def set_lambdas(module, values: list[float]) -> None:
    """The module's active lambdas, in slot order."""
    with torch.no_grad():
        module.lora_E[module.rank_mask] = torch.tensor(values, dtype=module.lora_E.dtype)


def test_most_concentrated_module_loses_its_weakest_direction_and_most_even_gains_a_zero_impact_one(tiny_name):
    _, model, method = adapt(tiny_name, "flexlora", rank=4, active_r=2, b=1)
    modules = method.adalora_modules(model)
    names = list(modules)
    shrinking, growing = modules[names[0]], modules[names[-1]]
    for module in modules.values():
        set_lambdas(module, [1.0, 0.5])  # H = 0.72 everywhere else
    set_lambdas(shrinking, [-1.0, 0.01])  # H = 0.0015: nearly all energy in slot 0; the toolkit's argmin prunes it
    set_lambdas(growing, [0.7, -0.7])  # H = 1
    before = {name: copy.deepcopy(m) for name, m in modules.items()}

    method.reallocate(modules, b=1)

    assert shrinking.rank_mask.tolist() == [True, False, False, False]  # slot 1, |lambda| = 0.01, went
    assert float(shrinking.lora_E.detach()[1]) == 0.0
    assert growing.rank_mask.tolist() == [True, True, True, False]  # the first free slot came in
    assert float(growing.lora_E.detach()[2]) == 0.0
    torch.testing.assert_close(growing.delta_weight(), before[names[-1]].delta_weight(), atol=0, rtol=0)
    assert not torch.equal(growing.lora_A[2], before[names[-1]].lora_A[2])  # a fresh direction, N(0, 1)
    a, b = growing.lora_A.detach()[2], growing.lora_B.detach()[:, 2]
    assert 0.5 < float(a.std()) < 2.0 and 0.5 < float(b.std()) < 2.0
    for name in names[1:-1]:
        assert modules[name].rank_mask.tolist() == [True, True, False, False], name
        assert torch.equal(modules[name].lora_E, before[name].lora_E), name
    assert method.moves == 1
    assert method.importance[names[0]] < 0.01 and method.importance[names[-1]] == pytest.approx(1.0)


def test_a_full_module_does_not_grow_and_a_one_direction_module_does_not_shrink(tiny_name):
    _, model, method = adapt(tiny_name, "flexlora", rank=3, active_r=2, b=1)
    modules = method.adalora_modules(model)
    names = list(modules)
    for module in modules.values():
        set_lambdas(module, [1.0, 0.5])
    full, single, runner_up = modules[names[0]], modules[names[1]], modules[names[2]]
    full.rank_mask.fill_(True)
    set_lambdas(full, [1.0, 1.0, 1.0])  # H = 1 but no free slot
    single.rank_mask[1] = False
    set_lambdas(single, [1.0])  # H = 1 by convention; lowest possible after it, but it cannot shrink
    set_lambdas(runner_up, [1.0, 0.9])  # the highest H that can grow... after `single`
    set_lambdas(modules[names[3]], [1.0, 0.1])  # the lowest H that can shrink

    method.reallocate(modules, b=1)

    assert full.rank_mask.tolist() == [True, True, True]
    assert single.rank_mask.tolist() == [True, True, False]  # grown: H = 1, with a free slot
    assert modules[names[3]].rank_mask.tolist() == [True, False, False]
    assert runner_up.rank_mask.tolist() == [True, True, False]


def test_nothing_moves_when_no_module_can_shrink_and_the_run_says_so_once(tiny_name, caplog):
    _, model, method = adapt(tiny_name, "flexlora", rank=2, active_r=1, b=4)  # rank 2's default active_r
    modules = method.adalora_modules(model)
    for module in modules.values():
        set_lambdas(module, [1.0])
    method.reallocate(modules, b=4)
    method.reallocate(modules, b=4)
    assert all(m.rank_mask.tolist() == [True, False] for m in modules.values())
    assert method.moves == 0
    assert [r.getMessage() for r in caplog.records] == [
        "flexlora at rank 2 with active_r 1: no module can lose a direction, so the ranks never move; use a rank "
        ">= 3 with 1 < active_r < rank"]


def test_b_schedule():
    assert [b_at(g, 20, 4, 3, 5, "constant") for g in (4, 7, 14)] == [4, 4, 4]
    # round(4 (1 - ((g - 3) / 12)^3)): g = 7 -> 3.85, g = 11 -> 2.81, g = 14 -> 0.92, g = 15 -> 0
    assert [b_at(g, 20, 4, 3, 5, "cubic") for g in (3, 7, 11, 14, 15)] == [4, 4, 3, 1, 0]


def train_steps(model, method, total: int, first: int = 1, last: int | None = None) -> None:
    """The runner's own optimizer steps ``first``..``last`` of ``total`` (the hook counts them)."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for step in range(first, (last or total) + 1):
        training_step(model, method, tiny_batch(seed=step), optimizer, step, total, check_finite=False)
    model.eval()


@pytest.mark.parametrize("schedule, expected", [("constant", [(8, 4), (12, 4)]), ("cubic", [(8, 4), (12, 3)])])
def test_allocations_happen_at_the_reference_steps(monkeypatch, schedule, expected):
    # T = 20, tinit = 3, tfinal = 5, deltaT = 4: 3 < g < 15 and (g - 3) % 4 == 0 -> g = 7, 11, i.e. steps 8, 12
    _, model, method = adapt("tiny-roberta", "flexlora", rank=4, tinit=3, tfinal=5, deltaT=4, b=4,
                             b_schedule=schedule)
    calls = []
    step = {"now": 0}
    original = method.after_optimizer_step

    def hook(model, now, total):
        step["now"] = now
        original(model, now, total)

    monkeypatch.setattr(method, "after_optimizer_step", hook)
    monkeypatch.setattr(method, "reallocate", lambda modules, b: calls.append((step["now"], b)))
    train_steps(model, method, total=20)
    assert calls == expected


def test_a_run_moves_directions_within_the_budget_and_still_merges_and_reloads(tiny_name, tmp_path):
    _, model, method = adapt(tiny_name, "flexlora", rank=4, tinit=1, tfinal=1, deltaT=1, b=2)
    modules = method.adalora_modules(model)
    train_steps(model, method, total=12)
    ranks = [int(m.rank_mask.sum()) for m in modules.values()]
    assert sum(ranks) == 3 * len(modules)  # active_r = round(8 / 3) = 3 per module on average, throughout
    assert set(ranks) != {3} and method.moves > 0
    assert method.summary(model)["total_rank"] == sum(ranks)

    expected = logits(model)
    torch.testing.assert_close(logits(method.merge(copy.deepcopy(model))), expected, atol=1e-5, rtol=1e-4)
    save_tensors(tmp_path / "trained.safetensors", method.state_dict(model))
    _, fresh, fresh_method = adapt(tiny_name, "flexlora", rank=4)
    fresh_method.load_state_dict(fresh, load_tensors(tmp_path / "trained.safetensors"))  # masks are buffers
    torch.testing.assert_close(logits(fresh), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options, message", [
    ({"active_r": 5}, "active_r must be between 1 and the rank 4"),
    ({"b": -1}, "b must be an integer >= 0"),
    ({"b_schedule": "linear"}, "unknown b_schedule 'linear'"),
    ({"grow_std": 0.0}, "grow_std must be > 0"),
])
def test_bad_settings_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("flexlora", options, 4)


def test_killed_run_resumes_to_the_same_allocation(tmp_path, monkeypatch):
    from conftest import run_in_process

    from subspace_tuning.methods.extension.flexlora import FlexLoRA
    from subspace_tuning.train import CHECKPOINT

    # allocations at every step from the second on, two modules each way, with the optimizer's own steps
    overrides = [*SHORT, "method=flexlora", "rank=4", "method.tinit=1", "method.tfinal=1", "method.deltaT=1",
                 "method.b=2"]
    uninterrupted = run_in_process(tmp_path / "a", overrides)
    original = FlexLoRA.after_optimizer_step

    def killed_at_step_6(self, model, step, total_steps):
        original(self, model, step, total_steps)
        if step == 6:  # mid-way through the second of three epochs (4 steps each), after an allocation
            raise KeyboardInterrupt

    monkeypatch.setattr(FlexLoRA, "after_optimizer_step", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(tmp_path / "b", overrides)
    folder = tmp_path / "b" / "run"
    assert json.loads((folder / "metrics.json").read_text())["status"] == "failed"
    assert (folder / CHECKPOINT).is_file()
    monkeypatch.undo()

    resumed = run_in_process(tmp_path / "b", overrides)
    assert resumed["status"] == "completed"
    assert comparable(resumed) == comparable(uninterrupted)
    summary, expected = resumed["method_summary"], uninterrupted["method_summary"]
    assert summary["moves"] > 0 and summary["final_ranks"] == expected["final_ranks"]
    assert summary["moves"] == expected["moves"]
