"""Hugging Face PEFT's AdaLoRA (peft 0.21.2) as an oracle for our AdaLoRA's training dynamics.

A lockstep run: the same tiny model adapted by ours and by PEFT (all six linear kinds), PEFT's initial P, Q and
lambda copied into ours, the same batches, dropout off (both models stay in eval mode), AdamW on both, MPC_o
with weight 0.1 on ours and PEFT's orth_reg_weight = 0.1. After every step the rank patterns must be identical
and the logits agree within 1e-5.

Step convention: our training loop counts optimizer steps from 1 and calls
``method.after_optimizer_step(model, step, total_steps)`` after ``optimizer.step()``; PEFT's
``update_and_allocate(global_step)`` is called at the same point with global_step counted from 0 (as in PEFT's
examples and the AdaLoRA authors' trainer, which pass the step count before incrementing it). So our step s is
PEFT's global_step s - 1, and total_steps is PEFT's total_step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_batch, tiny_model
from method_properties import logits

from subspace_tuning.architectures import find_targets, head_parameter_names
from subspace_tuning.methods import build_method
from subspace_tuning.methods.extension.adalora import AdaLoRA

peft = pytest.importorskip("peft")

RANK, TARGET_R, ALPHA, WEIGHT = 4, 2, 16.0, 0.1
TOTAL, TINIT, TFINAL, DELTA_T = 30, 5, 10, 3  # PEFT global steps 6, 9, ..., 18 allocate, 20 fixes the mask


def peft_adalora_pair(tiny_name: str, **schedule) -> tuple[torch.nn.Module, AdaLoRA, torch.nn.Module]:
    """(ours, our method, PEFT's model) on the same tiny model, with PEFT's initial P, Q, lambda copied into ours
    and the classification head trainable in both. ``schedule``: total_step, tinit, tfinal, deltaT."""
    base = tiny_model(tiny_name)
    names = [t.name for t in find_targets(base)]
    ours = copy.deepcopy(base)
    method = build_method("adalora", {"alpha": ALPHA, "target_r": TARGET_R, "tinit": schedule["tinit"],
                                      "tfinal": schedule["tfinal"], "deltaT": schedule["deltaT"]},
                          RANK, {"name": "o", "weight": WEIGHT})
    method.apply(ours)
    config = peft.AdaLoraConfig(init_r=RANK, target_r=TARGET_R, lora_alpha=ALPHA, lora_dropout=0.0,
                                target_modules=names, orth_reg_weight=WEIGHT, beta1=0.85, beta2=0.85, **schedule)
    torch.manual_seed(5)
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    inner = theirs.base_model.model
    with torch.no_grad():
        for name in head_parameter_names(ours):
            inner.get_parameter(name).requires_grad_(True)
        for name in names:
            mine, peft_module = ours.get_submodule(name), inner.get_submodule(name)
            mine.lora_A.copy_(peft_module.lora_A["default"])  # Q
            mine.lora_B.copy_(peft_module.lora_B["default"])  # P
            mine.lora_E.copy_(peft_module.lora_E["default"][:, 0])  # lambda
    return ours.eval(), method, theirs.eval()


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def peft_lambdas(theirs: torch.nn.Module, name: str) -> torch.Tensor:
    return theirs.base_model.model.get_submodule(name).lora_E["default"][:, 0]


def test_lockstep_with_peft_adalora(tiny_name):
    ours, method, theirs = peft_adalora_pair(tiny_name, total_step=TOTAL, tinit=TINIT, tfinal=TFINAL,
                                             deltaT=DELTA_T)
    modules = method.adalora_modules(ours)
    assert len(modules) == 12 and len(trainable(ours)) == len(trainable(theirs))
    opt_ours = torch.optim.AdamW(trainable(ours), lr=1e-2)
    opt_theirs = torch.optim.AdamW(trainable(theirs), lr=1e-2)
    eval_batch = tiny_batch(seed=0)
    patterns, regrown = [], False
    for step in range(1, TOTAL + 1):
        batch = tiny_batch(seed=step)
        loss = ours(**batch).loss + sum(method.regularizers(ours).values())
        loss.backward()
        opt_ours.step()
        method.after_optimizer_step(ours, step, TOTAL)
        opt_ours.zero_grad()
        theirs.base_model(**batch).loss.backward()  # AdaLoraModel.forward adds orth_reg_weight * its regulariser
        opt_theirs.step()
        theirs.base_model.update_and_allocate(step - 1)
        opt_theirs.zero_grad()

        peft_pattern = theirs.peft_config["default"].rank_pattern  # None until the first allocation
        for name, module in modules.items():
            expected = [True] * RANK if peft_pattern is None else peft_pattern[f"{name}.lora_E.default"]
            assert module.rank_mask.tolist() == expected, f"rank pattern of {name} at step {step}"
            torch.testing.assert_close(module.lora_E, peft_lambdas(theirs, name), atol=1e-5, rtol=1e-4)
            regrown |= bool(module.lora_E[~module.rank_mask].abs().sum() > 0)
        torch.testing.assert_close(logits(ours, eval_batch), logits(theirs, eval_batch), atol=1e-5, rtol=1e-5)
        patterns.append(torch.cat([m.rank_mask for m in modules.values()]))
    kept = [int(p.sum()) for p in patterns]
    # our step 7 (index 6) = global step 6, the first allocation; the last = the target budget
    assert kept[:6] == [12 * RANK] * 6 and kept[6] < 12 * RANK and kept[-1] == 12 * TARGET_R
    assert len({tuple(p.tolist()) for p in patterns}) >= 4, "the masks never changed: the comparison is weak"
    assert regrown, "masked lambdas never regrew between allocations (the reference lets them)"
