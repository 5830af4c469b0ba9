"""PiSSA and MiLoRA: PiSSA in lockstep with PEFT's ``init_lora_weights="pissa"`` (init, gradients, a few AdamW
steps), which triplets each one takes, every factor it creates trains, what a run saves, and which MPC
constraints they take. The properties every method has are checked by tests/test_methods.py."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_batch, tiny_model
from method_properties import adapt, logits
from torch import nn

from subspace_tuning.architectures import find_targets, head_parameter_names
from subspace_tuning.errors import ConfigError
from subspace_tuning.methods import build_method
from subspace_tuning.methods.combination.pissa import PiSSALinear

RANK = 4
METHODS = ("pissa", "milora")


def train_steps(model: nn.Module, steps: int = 3, lr: float = 1e-3) -> None:
    """AdamW on the same batches, in eval mode (no dropout), so two models can be compared step by step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    for step in range(steps):
        model(**tiny_batch(seed=10 + step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def pissa_modules(model: nn.Module) -> dict[str, PiSSALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PiSSALinear)}


def test_pissa_matches_peft_in_lockstep(tiny_name):
    """Same factors (up to the sign of each singular pair), W_res, logits and gradients at init, and the same logits
    and factors after three identical AdamW steps. alpha = 16 != r, so PEFT's S / scaling convention is exercised."""
    peft = pytest.importorskip("peft")
    base = tiny_model(tiny_name)
    names = [t.name for t in find_targets(base)]
    ours = copy.deepcopy(base)
    build_method("pissa", {"alpha": 16.0}, RANK).apply(ours)
    config = peft.LoraConfig(r=RANK, lora_alpha=16, init_lora_weights="pissa", target_modules=names)
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    inner = theirs.base_model.model
    for name in head_parameter_names(ours):  # PEFT freezes the head unless told; both train it here
        inner.get_parameter(name).requires_grad_(True)
    # a singular pair (u, v) is defined up to a common sign; Adam is sign-equivariant, so fix it once
    signs = {name: torch.sign((ours.get_submodule(name).lora_A * inner.get_submodule(name).lora_A["default"].weight)
                              .sum(1)).detach() for name in names}

    def compare(grads: bool) -> None:
        torch.testing.assert_close(logits(theirs), logits(ours), atol=1e-5, rtol=1e-4)
        for name in names:
            mine, peer = ours.get_submodule(name), inner.get_submodule(name)
            pairs = [(mine.lora_A, peer.lora_A["default"].weight, signs[name][:, None]),
                     (mine.lora_B, peer.lora_B["default"].weight, signs[name][None, :])]
            for a, b, sign in pairs:
                torch.testing.assert_close(a.detach() * sign, b.detach(), atol=1e-5, rtol=1e-4)
                if grads:
                    torch.testing.assert_close(a.grad * sign, b.grad, atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(mine.base.weight, peer.base_layer.weight, atol=1e-6, rtol=1e-5)

    for model in (ours, theirs):
        model(**tiny_batch(seed=9)).loss.backward()
    compare(grads=True)
    for model in (ours, theirs):
        model.zero_grad()
        train_steps(model)
    assert (logits(ours) - logits(base)).abs().max() > 1e-3, "the training steps changed nothing"
    compare(grads=False)


@pytest.mark.parametrize("method_name", METHODS)
def test_takes_its_singular_triplets(method_name):
    """s B A is the best rank-r approximation's part (PiSSA) or the r smallest triplets' part (MiLoRA) of W, W_res
    the rest; with the default alpha (= r, s = 1) B = U_r S_r^(1/2) and A = S_r^(1/2) V_r^T."""
    base, model, _ = adapt("tiny-roberta", method_name, rank=RANK)
    for name, module in pissa_modules(model).items():
        weight = base.get_submodule(name).weight.double()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        keep = slice(0, RANK) if method_name == "pissa" else slice(s.shape[0] - RANK, s.shape[0])
        part = (u[:, keep] * s[keep]) @ vh[keep]
        assert module.scaling == 1.0
        product = (module.lora_B @ module.lora_A).detach().double()
        torch.testing.assert_close(product, part, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(module.base.weight.double(), weight - part, atol=1e-5, rtol=1e-4)
        root = s[keep].sqrt().float()
        torch.testing.assert_close(module.lora_B.detach().norm(dim=0), root, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(module.lora_A.detach().norm(dim=1), root, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method_name", METHODS)
def test_every_created_parameter_trains(tiny_name, method_name):
    """Each adapted module holds exactly A and B, and every one of them changes in a few steps (the authors'
    toolkit creates MiLoRA's factors in the first forward, after the optimizer exists, so they never train)."""
    _, model, _ = adapt(tiny_name, method_name, rank=RANK)
    modules = pissa_modules(model)
    assert len(modules) == 12
    created = {}
    for name, module in modules.items():
        own = {n for n, _ in module.named_parameters() if not n.startswith("base.")}
        assert own == {"lora_A", "lora_B"}, name
        created.update({f"{name}.{n}": p.detach().clone() for n, p in module.named_parameters() if n in own})
    train_steps(model, lr=1e-2)
    params = dict(model.named_parameters())
    unchanged = [n for n, before in created.items() if torch.equal(params[n], before)]
    assert not unchanged, f"never trained: {unchanged[:5]}"


@pytest.mark.parametrize("method_name", METHODS)
def test_saves_factors_and_recomputes_the_residual(tmp_path, method_name):
    """A run saves A, B and the head, never W_res: a fresh backbone with the method applied recomputes W_res from
    the pretrained W (the same SVD) and, with the saved state loaded, reproduces the trained logits."""
    from subspace_tuning.runio import load_tensors, save_tensors

    _, model, method = adapt("tiny-roberta", method_name, rank=RANK)
    train_steps(model, lr=1e-2)
    state = method.state_dict(model)
    head = head_parameter_names(model)
    assert {k.rsplit(".", 1)[1] for k in state if k not in head} == {"lora_A", "lora_B"}
    save_tensors(tmp_path / "trained.safetensors", state)
    _, fresh, fresh_method = adapt("tiny-roberta", method_name, rank=RANK, seed=0)
    fresh_method.load_state_dict(fresh, load_tensors(tmp_path / "trained.safetensors"))
    torch.testing.assert_close(logits(fresh.eval()), logits(model.eval()), atol=1e-5, rtol=1e-4)


def test_mpc_composition():
    """MPC_o and MPC_d constrain A and B as for LoRA; MPC_n is refused: B act(A x) + W_res x is not W x at init."""
    for name in METHODS:
        for kind in ("o", "d"):
            assert build_method(name, {}, RANK, {"name": kind, "weight": 0.1}).mpc.name == kind
        with pytest.raises(ConfigError, match="supports only mpc=o|d"):
            build_method(name, {}, RANK, {"name": "n"})
