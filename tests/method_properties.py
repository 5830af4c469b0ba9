"""The properties every method must have (docs/methods.md, "What every method guarantees"), as reusable checks,
the closed-form parameter counts they are checked against, and the matrix of (method, property) cases that
tests/test_methods.py runs for every registered method on tiny RoBERTa and tiny DeBERTa.

A method enters the matrix by being registered: its class variables say which properties apply
(``identity_at_init``, ``mergeable``, ``uses_rank``). The one thing a new method adds here is its row of
``EXPECTED_COUNTS``, an independent closed form of its trainable parameters; a guard test fails without it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from conftest import tiny_batch, tiny_model

from subspace_tuning.architectures import find_targets, head_parameter_names
from subspace_tuning.errors import NotMergeableError
from subspace_tuning.methods import Method, build_method, catalogue
from subspace_tuning.params import count_parameters
from subspace_tuning.step import training_step

ATOL = 1e-5
Shapes = list[tuple[str, int, int]]  # (kind, out, in) of the six linear kinds in every layer
CountFormula = Callable[[Shapes, "int | None", torch.nn.Module], int]  # (shapes, rank, pristine model) -> count


def adapt(model_name: str, method_name: str, rank: int | None = 4, seed: int = 0,
          **options) -> tuple[torch.nn.Module, torch.nn.Module, Method]:
    """(base model, adapted copy, method) in eval mode."""
    base = tiny_model(model_name, seed=seed)
    model = copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    method = build_method(method_name, options, rank)
    method.apply(model)
    return base, model.eval(), method


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    batch = batch or tiny_batch()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def perturb_trainable(model: torch.nn.Module, scale: float = 0.1, seed: int = 3) -> None:
    """Move every trainable parameter away from its init, so merge and save/load tests see a real update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=g, dtype=param.dtype))


# --- the properties -----------------------------------------------------------------------------------------------
def check_identity_at_init(model_name: str, method_name: str, **options) -> None:
    base, model, _ = adapt(model_name, method_name, **options)
    torch.testing.assert_close(logits(model), logits(base), atol=ATOL, rtol=1e-4)


def check_not_identity_at_init(model_name: str, method_name: str, **options) -> None:
    """A method that declares ``identity_at_init = False`` (prompt and prefix tuning) really changes the output."""
    base, model, method = adapt(model_name, method_name, **options)
    assert not method.identity_at_init
    assert not torch.allclose(logits(model), logits(base), atol=ATOL)


def check_only_own_parameters_train(model_name: str, method_name: str, steps: int = 3, **options) -> None:
    """Only the method's parameters and the head require grad, and after a few steps exactly those changed."""
    base, model, method = adapt(model_name, method_name, **options)
    head = head_parameter_names(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert head <= trainable, f"head parameters frozen: {sorted(head - trainable)}"
    if method.family != "reference":
        base_names = {n for n, _ in base.named_parameters()} - head
        # a wrapped module keeps its frozen weight under '.base.'; nothing of the backbone may train
        leaked = {n for n in trainable - head if n.replace(".base.", ".") in base_names
                  and not method_owns_backbone_parameter(method, n)}
        assert not leaked, f"backbone parameters train: {sorted(leaked)[:5]}"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for step in range(1, steps + 1):  # the runner's own step: task loss + regularisers, AdamW, the method's hook
        training_step(model, method, tiny_batch(seed=9 + step), optimizer, step, steps, check_finite=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert changed == trainable, f"trainable parameters never trained: {sorted(trainable - changed)[:5]}"


def method_owns_backbone_parameter(method: Method, name: str) -> bool:
    """Methods such as BitFit train a subset of the backbone's own parameters by design."""
    return bool(getattr(method, "trains_backbone_parameter", lambda n: False)(name))


def check_merge(model_name: str, method_name: str, **options) -> None:
    """merge() leaves plain nn.Linear layers computing the adapted output; the wrapped bases are untouched."""
    _, model, method = adapt(model_name, method_name, **options)
    assert method.merges
    perturb_trainable(model)
    expected = logits(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    merged = method.merge(copy.deepcopy(model))
    torch.testing.assert_close(logits(merged), expected, atol=ATOL, rtol=1e-4)
    for target in find_targets(merged, method.target_kinds):
        assert type(merged.get_submodule(target.name)) is torch.nn.Linear, target.name
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"merge changed the base weight {name}"


def check_not_mergeable(model_name: str, method_name: str, **options) -> None:
    _, model, method = adapt(model_name, method_name, **options)
    assert not method.merges
    try:
        method.merge(model)
    except NotMergeableError as err:
        assert str(err)
    else:
        raise AssertionError(f"{method_name} merged although phi(W) is not linear")


def check_save_load(model_name: str, method_name: str, tmp_path, **options) -> None:
    """Saving the method's state and loading it into a freshly adapted model reproduces the outputs."""
    from subspace_tuning.runio import load_tensors, save_tensors

    _, model, method = adapt(model_name, method_name, **options)
    perturb_trainable(model)
    path = tmp_path / "trained.safetensors"
    save_tensors(path, method.state_dict(model))
    _, fresh, fresh_method = adapt(model_name, method_name, seed=0, **options)
    fresh_method.load_state_dict(fresh, load_tensors(path))
    torch.testing.assert_close(logits(fresh), logits(model), atol=ATOL, rtol=1e-4)


def check_count(model_name: str, method_name: str, expected: CountFormula, rank: int | None = 4, **options) -> None:
    """The counted trainable parameters equal ``expected(shapes, rank, model)``."""
    base = tiny_model(model_name)
    shapes = [(t.kind, *base.get_submodule(t.name).weight.shape) for t in find_targets(base)]
    total = sum(p.numel() for p in base.parameters())
    want = expected(shapes, rank, copy.deepcopy(base))
    method = build_method(method_name, options, rank)
    method.apply(base)
    assert count_parameters(base, method, total)["trainable"] == want


# --- closed-form trainable counts, one row per registered method (docs/methods.md gives each formula) ------------
N_TOKENS = 20  # the YAML default number of virtual tokens


def low_rank(extra_per_module: Callable[[int], int]) -> CountFormula:
    """r (out + in) per module plus a method's core."""
    return lambda shapes, r, _: sum(r * (o + i) + extra_per_module(r) for _, o, i in shapes)


def bottleneck(kinds: set[str], per_rank: int) -> CountFormula:
    """Down (m x out + m) and up (out x m + out) per adapted projection, m = per_rank * r."""
    return lambda shapes, r, _: sum(2 * o * per_rank * r + per_rank * r + o for kind, o, _ in shapes if kind in kinds)


def per_kind(sides: dict[str, str]) -> CountFormula:
    """A scaling method: in, out or both features of each scaled kind."""
    sizes = {"in": lambda o, i: i, "out": lambda o, i: o, "both": lambda o, i: o + i}
    return lambda shapes, r, _: sum(sizes[sides[kind]](o, i) for kind, o, i in shapes if kind in sides)


def lotr_count(shapes: Shapes, r: int, _: torch.nn.Module) -> int:
    """U and V once per module kind, an r x r core per module."""
    kinds = {(kind, o, i) for kind, o, i in shapes}
    return sum(r * (o + i) for _, o, i in kinds) + len(shapes) * r * r


def bitfit_count(shapes: Shapes, r: None, model: torch.nn.Module) -> int:
    """Per layer the six linear biases and two LayerNorm biases, plus the embedding LayerNorm's and, in DeBERTa,
    the relative-embedding LayerNorm's."""
    config = model.config
    h = config.hidden_size
    return sum(o for _, o, _ in shapes) + config.num_hidden_layers * 2 * h + h + \
        (h if config.model_type == "deberta-v2" else 0)


def hidden_and_layers(model: torch.nn.Module) -> tuple[int, int]:
    return model.config.hidden_size, model.config.num_hidden_layers


EXPECTED_COUNTS: dict[str, CountFormula] = {
    "full": lambda shapes, r, model: sum(p.numel() for p in model.parameters()),
    "sam_parser": lambda shapes, r, _: sum(min(o, i) for _, o, i in shapes),
    "ia3": per_kind({"key": "out", "value": "out", "ffn_out": "in"}),
    "ssl": per_kind({"key": "in", "value": "in", "ffn_in": "in"}),
    "ssb": per_kind({"key": "both", "value": "both", "ffn_in": "both"}),
    "bitfit": bitfit_count,
    "prompt_tuning": lambda shapes, r, model: N_TOKENS * hidden_and_layers(model)[0],
    "prefix_tuning": lambda shapes, r, model: 2 * N_TOKENS * hidden_and_layers(model)[0] * hidden_and_layers(model)[1],
    "hadapter": bottleneck({"attn_out", "ffn_out"}, 4),
    "padapter": bottleneck({"ffn_out"}, 8),
    "pa": low_rank(lambda r: 0),
    "lora": low_rank(lambda r: 0),
    "trilora": low_rank(lambda r: r),
    "adalora": low_rank(lambda r: r),
    "flora": low_rank(lambda r: r * r),
    "dora": lambda shapes, r, _: sum(r * (o + i) + o for _, o, i in shapes),  # LoRA plus the magnitude m
    "vera": lambda shapes, r, _: sum(r + o for _, o, _ in shapes),
    "lotr": lotr_count,
    "spectral_adapter": low_rank(lambda r: 0),
    "svdiff": lambda shapes, r, _: sum(min(o, i) for _, o, i in shapes),
    "moslora": low_rank(lambda r: r * r),  # LoRA plus the r x r mixer
    "liera": low_rank(lambda r: 0),
    "pissa": low_rank(lambda r: 0),  # LoRA's A and B; W_res is frozen
    "milora": low_rank(lambda r: 0),
    "flexlora": low_rank(lambda r: r),  # AdaLoRA's r slots per module (the rank mask is a buffer)
    "lora_dash": low_rank(lambda r: 8),  # LoRA plus the 8 coefficients c (the YAML's num_directions)
}

# Settings a property check needs for one method. AdaLoRA's rank allocation would legitimately zero every lambda
# of a module whose triplets it drops in a 3-step run (tests/test_adalora.py checks allocation); while parameters
# are checked to train it waits with a warmup of 10 steps.
CHECK_OPTIONS = {("adalora", "only_own_train"): {"tinit": 10},
                 # LoRA-Dash launches after step 1 of 3, so its coefficients c train in steps 2 and 3 as well
                 ("lora_dash", "only_own_train"): {"prelaunch_steps": 1}}
COUNT_RANKS = (2, 8)


# --- the matrix ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One property of one method at one rank (None for rank-free methods)."""

    method: str
    check: str
    rank: int | None

    @property
    def id(self) -> str:
        return f"{self.method}-{self.check}" + ("" if self.rank is None else f"-r{self.rank}")


def cases_of(cls: type[Method]) -> list[Case]:
    """The properties a method declares, from its class variables."""
    rank = 4 if cls.uses_rank else None
    checks = ["identity" if cls.identity_at_init else "not_identity", "only_own_train",
              "merge" if cls.mergeable else "refuses_merge", "save_load"]
    cases = [Case(cls.name, check, rank) for check in checks]
    return cases + [Case(cls.name, "count", r) for r in (COUNT_RANKS if cls.uses_rank else (None,))]


def matrix_cases() -> list[Case]:
    """Every registered method x every property it declares."""
    return [case for cls in catalogue() for case in cases_of(cls)]


def run_case(model_name: str, case: Case, tmp_path) -> None:
    options = {"rank": case.rank, **CHECK_OPTIONS.get((case.method, case.check), {})}
    if case.check == "count":
        check_count(model_name, case.method, EXPECTED_COUNTS[case.method], **options)
    elif case.check == "save_load":
        check_save_load(model_name, case.method, tmp_path, **options)
    else:
        checks = {"identity": check_identity_at_init, "not_identity": check_not_identity_at_init,
                  "only_own_train": check_only_own_parameters_train, "merge": check_merge,
                  "refuses_merge": check_not_mergeable}
        checks[case.check](model_name, case.method, **options)
