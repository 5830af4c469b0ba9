"""The MPC framework: penalty values, composition with the A-and-B methods, config errors, MPC_n."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_batch, tiny_model
from method_properties import ATOL, logits
from omegaconf import OmegaConf

from subspace_tuning.config import compose
from subspace_tuning.errors import ConfigError, NotMergeableError
from subspace_tuning.methods import build_method
from subspace_tuning.methods.mpc import MPC, mpc_d_penalty, mpc_o_penalty

A_SMALL = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # r = 2, in = 3: A A^T = diag(1, 4)
B_SMALL = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])  # out = 3, r = 2: B^T B = [[1, 1], [1, 2]]


def test_penalties_equal_hand_computed_values():
    # ||A A^T - I||^2 = ||diag(0, 3)||^2 = 9; ||B^T B - I||^2 = ||[[0, 1], [1, 1]]||^2 = 3;
    # ||B^T B - diag(B^T B)||^2 = ||[[0, 1], [1, 0]]||^2 = 2
    assert float(mpc_o_penalty(A_SMALL, B_SMALL)) == pytest.approx(12.0)
    assert float(mpc_d_penalty(A_SMALL, B_SMALL)) == pytest.approx(11.0)
    assert float(MPC("o", weight=0.1).penalty(A_SMALL, B_SMALL)) == pytest.approx(1.2)
    q, _ = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))
    assert float(mpc_o_penalty(q.T, q)) == pytest.approx(0.0, abs=1e-12)  # orthonormal: no penalty
    assert float(mpc_d_penalty(q.T, 3 * q)) == pytest.approx(0.0, abs=1e-12)  # MPC_d leaves column norms free


def adapted(method_name: str, mpc: dict | None, rank: int = 4, seed: int = 0, **options):
    model = tiny_model("tiny-roberta", seed=seed)
    torch.manual_seed(seed + 1)
    method = build_method(method_name, options, rank, mpc)
    method.apply(model)
    return model.eval(), method


@pytest.mark.parametrize("method_name", ["lora", "trilora", "adalora", "flora", "pa"])
@pytest.mark.parametrize("kind", ["o", "d"])
def test_regularizer_is_the_weighted_sum_over_modules(method_name, kind):
    model, method = adapted(method_name, {"name": kind, "weight": 0.3})
    modules = method.low_rank_modules(model).values()
    eye = torch.eye(4)
    expected = 0.0
    for m in modules:  # the formula of SPEC.md, written out with numpy-style norms
        a, b = m.lora_A.detach(), m.lora_B.detach()
        gram_b = b.T @ b
        target_b = eye if kind == "o" else torch.diag(torch.diagonal(gram_b))
        expected += torch.linalg.norm(a @ a.T - eye) ** 2 + torch.linalg.norm(gram_b - target_b) ** 2
    terms = method.regularizers(model)
    assert list(terms) == [f"mpc_{kind}"] and len(modules) == 12
    assert float(terms[f"mpc_{kind}"].detach()) == pytest.approx(0.3 * float(expected), rel=1e-5)
    assert terms[f"mpc_{kind}"].requires_grad


def test_no_constraint_adds_no_term():
    for mpc in (None, {"name": "none", "weight": 0.0}, {"name": "n"}):
        model, method = adapted("lora", mpc)
        assert method.regularizers(model) == {}


def orthogonality_after_training(mpc: dict | None, steps: int = 10) -> dict[str, float]:
    model, method = adapted("lora", mpc)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for step in range(steps):
        loss = model(**tiny_batch(seed=step)).loss + sum(method.regularizers(model).values(), torch.zeros(()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return method.summary(model)["pattern_errors"]


def test_training_with_mpc_lowers_the_pattern_errors():
    free = orthogonality_after_training(None)
    orthonormal = orthogonality_after_training({"name": "o", "weight": 0.1})
    diagonal = orthogonality_after_training({"name": "d", "weight": 0.1})
    assert orthonormal["A_rows_orthonormal"] < 0.5 * free["A_rows_orthonormal"]  # about 0.3 vs 1.3
    assert orthonormal["B_columns_orthonormal"] < 0.9 * free["B_columns_orthonormal"]  # B starts at 0: slower
    assert diagonal["A_rows_orthonormal"] < 0.5 * free["A_rows_orthonormal"]
    assert diagonal["B_columns_orthogonal"] < free["B_columns_orthogonal"]


@pytest.mark.parametrize("method_name", ["vera", "lotr", "hadapter", "padapter", "full"])
def test_mpc_without_a_and_b_is_a_config_error(method_name):
    rank = None if method_name == "full" else 4
    with pytest.raises(ConfigError, match="no low-rank factors A and B"):
        build_method(method_name, {}, rank, {"name": "o", "weight": 0.1})


def test_bad_mpc_settings_are_config_errors():
    with pytest.raises(ConfigError, match="supports only"):
        build_method("pa", {}, 4, {"name": "n"})  # PA already has MPC_n's nonlinearity
    with pytest.raises(ConfigError, match="unknown mpc"):
        build_method("lora", {}, 4, {"name": "x"})
    with pytest.raises(ConfigError, match="activation"):
        build_method("lora", {}, 4, {"name": "n", "activation": "nope"})
    with pytest.raises(ConfigError, match="no setting"):
        build_method("lora", {}, 4, {"name": "o", "wieght": 0.1})


@pytest.mark.parametrize("kind, weight", [("o", 0.1), ("d", 0.1), ("n", 0.0)])
def test_config_group_composes(kind, weight):
    cfg = compose([f"mpc={kind}", "method=trilora"])
    method = build_method("trilora", {}, 4, OmegaConf.to_container(cfg.mpc))
    assert method.mpc.name == kind and method.mpc.weight == weight


@pytest.mark.parametrize("method_name", ["lora", "trilora", "adalora", "flora"])
def test_mpc_n_is_identity_at_init_nonlinear_and_not_mergeable(method_name):
    base = tiny_model("tiny-roberta")
    model, method = adapted(method_name, {"name": "n"})
    torch.testing.assert_close(logits(model), logits(base), atol=ATOL, rtol=1e-4)
    with pytest.raises(NotMergeableError, match="mpc=n"):
        method.merge(copy.deepcopy(model))
    module = next(iter(method.low_rank_modules(model).values()))
    with torch.no_grad():
        for param in (module.lora_B, getattr(module, "lora_E", None), getattr(module, "lora_G", None)):
            if param is not None:
                param.normal_()
        x = torch.randn(3, module.in_features)
        delta = module(x) - module.base(x)
        assert not torch.allclose(delta + (module(-x) - module.base(-x)), torch.zeros_like(delta), atol=1e-4)


def test_lora_with_mpc_n_is_pa():
    lora, _ = adapted("lora", {"name": "n"})
    pa, _ = adapted("pa", None)
    for p_lora, p_pa in zip(lora.parameters(), pa.parameters(), strict=True):
        assert torch.equal(p_lora, p_pa)  # same seed, same init
    with torch.no_grad():
        for model in (lora, pa):
            torch.manual_seed(7)
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.1 * torch.randn_like(param))
    torch.testing.assert_close(logits(lora), logits(pa))
