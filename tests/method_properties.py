"""The properties every method must have (SPEC.md), as reusable checks.

Each family's test module parametrises these over its methods, on tiny RoBERTa and tiny DeBERTa:
identity at init, only the method's parameters (and the head) train, merge equivalence, save/load
round trip, and the closed-form trainable-parameter count.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from conftest import tiny_batch, tiny_model

from subspace_tuning.architectures import find_targets, head_parameter_names
from subspace_tuning.errors import NotMergeableError
from subspace_tuning.methods import Method, build_method
from subspace_tuning.params import count_parameters

ATOL = 1e-5


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


def check_identity_at_init(model_name: str, method_name: str, **options) -> None:
    base, model, _ = adapt(model_name, method_name, **options)
    torch.testing.assert_close(logits(model), logits(base), atol=ATOL, rtol=1e-4)


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
    for step in range(steps):
        loss = model(**tiny_batch(seed=10 + step)).loss
        loss = loss + sum(method.regularizers(model).values(), torch.zeros(()))
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(model, step + 1, steps)
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert changed == trainable, f"trainable parameters never trained: {sorted(trainable - changed)[:5]}"


def method_owns_backbone_parameter(method: Method, name: str) -> bool:
    """Methods such as BitFit train a subset of the backbone's own parameters by design."""
    return bool(getattr(method, "trains_backbone_parameter", lambda n: False)(name))


def check_merge(model_name: str, method_name: str, **options) -> None:
    """merge() leaves plain nn.Linear layers computing the adapted output; the wrapped bases are untouched."""
    _, model, method = adapt(model_name, method_name, **options)
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


def check_count(model_name: str, method_name: str, expected: Callable[[list[tuple[str, int, int]], int], int],
                rank: int | None = 4, **options) -> None:
    """The counted trainable parameters equal ``expected(shapes, rank)``; shapes = [(kind, out, in)] of all
    six linear kinds in every layer."""
    base = tiny_model(model_name)
    shapes = [(t.kind, *base.get_submodule(t.name).weight.shape) for t in find_targets(base)]
    total = sum(p.numel() for p in base.parameters())
    method = build_method(method_name, options, rank)
    method.apply(base)
    assert count_parameters(base, method, total)["trainable"] == expected(shapes, rank)
