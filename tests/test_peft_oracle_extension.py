"""Hugging Face PEFT as an oracle for LoRA, AdaLoRA and VeRA: identical parameters, identical outputs.

Each test adapts the same tiny model with our method and with PEFT (on all six linear kinds), moves our
parameters away from their init, copies every one of them into PEFT's model, and compares the logits
within atol = rtol = 1e-5 (float32; PEFT's AdaLoRA divides by rank + 1e-5, a 2.5e-6 relative difference).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from conftest import tiny_model
from method_properties import logits, perturb_trainable

from subspace_tuning.architectures import find_targets, head_parameter_names
from subspace_tuning.methods import build_method

peft = pytest.importorskip("peft")

RANK = 4
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def compare_with_peft(tiny_name: str, method_name: str, options: dict, peft_config: Callable[[list[str]], object],
                      copy_into: Callable[[torch.nn.Module, torch.nn.Module, torch.nn.Module], None]) -> None:
    base = tiny_model(tiny_name)
    names = [t.name for t in find_targets(base)]
    ours = copy.deepcopy(base)
    torch.manual_seed(1)
    method = build_method(method_name, options, RANK)
    method.apply(ours)
    perturb_trainable(ours.eval(), scale=1.0)  # large, so that a 1% error in the update shows
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(names)).eval()
    inner = theirs.base_model.model
    with torch.no_grad():
        for name in head_parameter_names(ours):  # the head trains (and was perturbed) in ours
            inner.get_parameter(name).copy_(ours.get_parameter(name))
        for name in names:
            copy_into(ours.get_submodule(name), inner.get_submodule(name), theirs.base_model)
    expected = logits(ours)
    assert (expected - logits(base)).abs().max() > 0.1, "the comparison would be vacuous"
    torch.testing.assert_close(logits(theirs), expected, **TOLERANCE)


def test_lora_matches_peft(tiny_name):
    def copy_into(mine, theirs, _):
        theirs.lora_A["default"].weight.copy_(mine.lora_A)
        theirs.lora_B["default"].weight.copy_(mine.lora_B)

    compare_with_peft(tiny_name, "lora", {"alpha": 16.0},
                      lambda names: peft.LoraConfig(r=RANK, lora_alpha=16, target_modules=names), copy_into)


def test_adalora_matches_peft(tiny_name):
    def copy_into(mine, theirs, _):
        theirs.lora_A["default"].copy_(mine.lora_A)  # Q
        theirs.lora_B["default"].copy_(mine.lora_B)  # P
        theirs.lora_E["default"].copy_(mine.lora_E[:, None])  # lambda

    # PEFT's scaling is lora_alpha / (initial rank + 1e-5); ours alpha / initial rank
    compare_with_peft(tiny_name, "adalora", {"alpha": 16.0},
                      lambda names: peft.AdaLoraConfig(init_r=RANK, target_r=2, lora_alpha=16, total_step=100,
                                                       tinit=10, tfinal=10, target_modules=names), copy_into)


def test_vera_matches_peft(tiny_name):
    def copy_into(mine, theirs, peft_model):
        theirs.vera_lambda_d["default"].copy_(mine.vera_d)
        theirs.vera_lambda_b["default"].copy_(mine.vera_b)
        shared = mine.projections[0]
        assert peft_model.vera_A["default"].shape == shared.A.shape  # both size them by the largest layer
        peft_model.vera_A["default"].copy_(shared.A)
        peft_model.vera_B["default"].copy_(shared.B)

    compare_with_peft(tiny_name, "vera", {"d_initial": 0.1},
                      lambda names: peft.VeraConfig(r=RANK, target_modules=names, d_initial=0.1), copy_into)
