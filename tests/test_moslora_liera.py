"""MoSLoRA and LieRA: phi(W) against hand-computed numbers, their inits, every factor they create trains, and which
MPC constraints they take. The properties every method has are checked by tests/test_methods.py."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batch
from method_properties import adapt
from torch import nn

from subspace_tuning.errors import ConfigError
from subspace_tuning.methods import AdaptedLinear, build_method
from subspace_tuning.methods.combination.liera import LieRALinear
from subspace_tuning.methods.extension.moslora import MoSLoRALinear

# W (out 2 x in 3), bias b, r = 2 and alpha = 4, so s = alpha / r = 2; one input x.
W = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
BIAS = torch.tensor([0.5, -0.5])
A = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
B = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
M = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
X = torch.tensor([[1.0, 2.0, 3.0]])
# MoSLoRA: A x = [4, 2], M A x = [8, 2], B M A x = [8, 10], times s = [16, 20]; W x + b = [5.5, 6.5].
# Merged: B M A = [[1, 2, 1], [1, 3, 1]], W + s B M A = [[3, 6, 2], [2, 5, 5]].
MOSLORA_Y = torch.tensor([[21.5, 26.5]])
MOSLORA_W = torch.tensor([[3.0, 6.0, 2.0], [2.0, 5.0, 5.0]])
# LieRA: s B A = [[2, 0, 2], [2, 2, 2]], W * s B A = [[2, 0, 0], [0, -2, 6]], W + that = [[3, 2, 0], [0, -3, 9]];
# times x = [7, 21], plus b = [7.5, 20.5].
LIERA_Y = torch.tensor([[7.5, 20.5]])
LIERA_W = torch.tensor([[3.0, 2.0, 0.0], [0.0, -3.0, 9.0]])


def fixed_linear() -> nn.Linear:
    linear = nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(W)
        linear.bias.copy_(BIAS)
    return linear


def set_factors(module: AdaptedLinear, **factors: torch.Tensor) -> AdaptedLinear:
    with torch.no_grad():
        for name, value in factors.items():
            getattr(module, name).copy_(value)
    return module.eval()


@pytest.mark.parametrize("dropout", [0.0, 0.5])  # 0.5: LieRA's two-GEMM path (dropout is off in eval)
def test_phi_w_equals_hand_computed_values(dropout):
    moslora = set_factors(MoSLoRALinear(fixed_linear(), 2, 4.0, dropout), lora_A=A, lora_B=B, lora_G=M)
    liera = set_factors(LieRALinear(fixed_linear(), 2, 4.0, dropout), lora_A=A, lora_B=B)
    for module, y, weight in ((moslora, MOSLORA_Y, MOSLORA_W), (liera, LIERA_Y, LIERA_W)):
        with torch.no_grad():
            torch.testing.assert_close(module(X), y)
            merged, bias = module.merged_weight_and_bias()
        torch.testing.assert_close(merged, weight)
        assert torch.equal(bias, BIAS) and torch.equal(module.base.weight, W)


def test_inits():
    """MoSLoRA: B = 0, A and the mixer kaiming-uniform (bound 1 / sqrt(fan_in)), so the mixer is not zero; LieRA:
    LoRA's init, so phi(W) is exactly W."""
    torch.manual_seed(0)
    moslora = MoSLoRALinear(nn.Linear(64, 32), 8, 16.0, 0.0)
    assert torch.count_nonzero(moslora.lora_B) == 0
    for param, fan_in in ((moslora.lora_A.detach(), 64), (moslora.lora_G.detach(), 8)):
        assert torch.count_nonzero(param) == param.numel()
        assert float(param.abs().max()) <= fan_in ** -0.5
        assert float(param.abs().max()) > 0.8 * fan_in ** -0.5  # uniform, not N(0, 0.02)
    liera = LieRALinear(nn.Linear(64, 32), 8, 16.0, 0.0)
    assert torch.count_nonzero(liera.lora_B) == 0 and torch.count_nonzero(liera.lora_A) == liera.lora_A.numel()
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.equal(liera(x), liera.base(x))
        assert torch.equal(liera.merged_weight_and_bias()[0], liera.base.weight)


FACTORS = {"moslora": {"lora_A", "lora_B", "lora_G"}, "liera": {"lora_A", "lora_B"}}


def train_steps(model: nn.Module, steps: int = 3) -> None:
    """Adam without weight decay: a parameter moves only if it got a nonzero gradient, and by about lr whatever
    its gradient's scale (LieRA's gradients carry a factor W, small in the tiny models)."""
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        model(**tiny_batch(seed=10 + step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("method_name", sorted(FACTORS))
def test_every_created_parameter_trains(tiny_name, method_name):
    """Each adapted module holds exactly its method's factors, and every one of them changes in a few steps (B = 0
    at init: A and the mixer first get a gradient at the second step)."""
    _, model, _ = adapt(tiny_name, method_name)
    modules = {name: m for name, m in model.named_modules() if isinstance(m, AdaptedLinear)}
    assert len(modules) == 12
    created = {}
    for name, module in modules.items():
        own = {n for n, _ in module.named_parameters() if not n.startswith("base.")}
        assert own == FACTORS[method_name], name
        created.update({f"{name}.{n}": p.detach().clone() for n, p in module.named_parameters() if n in own})
    train_steps(model)
    params = dict(model.named_parameters())
    unchanged = [n for n, before in created.items() if torch.equal(params[n], before)]
    assert not unchanged, f"never trained: {unchanged[:5]}"


def test_a_zero_mixer_would_never_train():
    """Why MoSLoRA's mixer is random: with B = 0 and M = 0 no factor gets a gradient (the test above can fail)."""
    _, model, _ = adapt("tiny-roberta", "moslora")
    modules = [m for m in model.modules() if isinstance(m, MoSLoRALinear)]
    with torch.no_grad():
        for m in modules:
            m.lora_G.zero_()
    before = [(m.lora_A.clone(), m.lora_B.clone()) for m in modules]
    train_steps(model)
    assert all(torch.equal(m.lora_A, a) and torch.equal(m.lora_B, b) and not m.lora_G.any()
               for m, (a, b) in zip(modules, before, strict=True))


def test_mpc_composition():
    """Both take MPC_o and MPC_d on A and B; MoSLoRA takes MPC_n (before the mixer), LieRA refuses it: its update
    multiplies the matrix B A into W element-wise, and MPC_n leaves no such matrix."""
    for name in FACTORS:
        for kind in ("o", "d"):
            assert build_method(name, {}, 4, {"name": kind, "weight": 0.1}).mpc.name == kind
    assert not build_method("moslora", {}, 4, {"name": "n"}).merges
    with pytest.raises(ConfigError, match="supports only mpc=o|d"):
        build_method("liera", {}, 4, {"name": "n"})
