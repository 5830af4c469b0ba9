"""Extension methods against the SPEC.md properties, on tiny RoBERTa and tiny DeBERTa, plus the
roberta-base parameter budgets of SPEC.md's table.

Zero-initialised cores (TriLoRA's e, AdaLoRA's lambda, FLoRA's G, VeRA's b, LoTR's G_l, the adapters'
up projection) give the other factors a zero gradient on the first step only, so three AdamW steps
move every trainable parameter.
"""

from __future__ import annotations

import copy

import pytest
import torch
from method_properties import (
    adapt,
    check_count,
    check_identity_at_init,
    check_merge,
    check_not_mergeable,
    check_only_own_parameters_train,
    check_save_load,
)

from subspace_tuning.architectures import find_targets
from subspace_tuning.errors import ConfigError
from subspace_tuning.methods import build_method
from subspace_tuning.methods.extension.adapters import BottleneckAdapterLinear


def low_rank(extra_per_module):
    """r (out + in) per module plus a method's core."""
    return lambda shapes, r: sum(r * (o + i) + extra_per_module(r) for _, o, i in shapes)


def bottleneck(kinds, per_rank):
    """Down (m x out + m) and up (out x m + out) per adapted projection, m = per_rank * r."""
    return lambda shapes, r: sum(2 * o * per_rank * r + per_rank * r + o for kind, o, _ in shapes if kind in kinds)


def lotr_count(shapes, r):
    """U and V once per module kind, an r x r core per module."""
    kinds = {(kind, o, i) for kind, o, i in shapes}
    return sum(r * (o + i) for _, o, i in kinds) + len(shapes) * r * r


# closed-form trainable counts: shapes = [(kind, out, in)] of the six linear kinds in every layer
EXPECTED_COUNTS = {
    "lora": low_rank(lambda r: 0),
    "pa": low_rank(lambda r: 0),
    "trilora": low_rank(lambda r: r),
    "adalora": low_rank(lambda r: r),
    "flora": low_rank(lambda r: r * r),
    "vera": lambda shapes, r: sum(r + o for _, o, _ in shapes),
    "lotr": lotr_count,
    "hadapter": bottleneck({"attn_out", "ffn_out"}, 4),
    "padapter": bottleneck({"ffn_out"}, 8),
}
MERGEABLE = ["adalora", "flora", "lora", "lotr", "trilora", "vera"]
NOT_MERGEABLE = ["hadapter", "pa", "padapter"]  # a nonlinearity in the update
assert set(MERGEABLE) | set(NOT_MERGEABLE) == set(EXPECTED_COUNTS)


@pytest.mark.parametrize("method", sorted(EXPECTED_COUNTS))
def test_identity_at_init(tiny_name, method):
    check_identity_at_init(tiny_name, method)


# AdaLoRA's rank allocation would legitimately zero every lambda of a module whose triplets it drops in
# a 3-step run (tests/test_adalora.py checks allocation); here it waits with its warmup of 10 steps.
TRAIN_OPTIONS = {"adalora": {"tinit": 10}}


@pytest.mark.parametrize("method", sorted(EXPECTED_COUNTS))
def test_only_own_parameters_train(tiny_name, method):
    check_only_own_parameters_train(tiny_name, method, **TRAIN_OPTIONS.get(method, {}))


@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_matches_adapted_forward(tiny_name, method):
    check_merge(tiny_name, method)


@pytest.mark.parametrize("method", NOT_MERGEABLE)
def test_nonlinear_methods_refuse_to_merge(tiny_name, method):
    check_not_mergeable(tiny_name, method)


@pytest.mark.parametrize("method", sorted(EXPECTED_COUNTS))
def test_save_load_round_trip(tiny_name, method, tmp_path):
    check_save_load(tiny_name, method, tmp_path)


@pytest.mark.parametrize("method", sorted(EXPECTED_COUNTS))
@pytest.mark.parametrize("rank", [2, 8])
def test_closed_form_count(tiny_name, method, rank):
    check_count(tiny_name, method, EXPECTED_COUNTS[method], rank=rank)


# --- roberta-base budgets (SPEC.md, per mille of all parameters), counted on the meta device -------------
PAPER_PER_MILLE = {
    "lora": (2.65, 5.31, 10.62, 21.24),
    "pa": (2.65, 5.31, 10.62, 21.24),
    "trilora": (2.65, 5.31, 10.62, 21.24),
    "adalora": (2.65, 5.31, 10.62, 21.24),
    "flora": (2.65, 5.31, 10.64, 21.38),
    "hadapter": (2.50, 4.87, 9.59, 19.03),
    "padapter": (2.43, 4.80, 9.52, 18.96),
}


def test_roberta_base_budgets_match_the_paper():
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification

    from subspace_tuning.config import CONF_DIR
    from subspace_tuning.models import architecture_config
    from subspace_tuning.params import RANKS, count_parameters

    config = architecture_config(OmegaConf.load(CONF_DIR / "model" / "roberta-base.yaml"))
    with torch.device("meta"):
        pristine = AutoModelForSequenceClassification.from_config(config)
    total = sum(p.numel() for p in pristine.parameters())
    for name, expected in PAPER_PER_MILLE.items():
        for rank, paper in zip(RANKS, expected, strict=True):
            model = copy.deepcopy(pristine)  # building roberta-base, even on meta, takes a while
            method = build_method(name, {}, rank)
            method.apply(model)
            ours = count_parameters(model, method, total)["per_mille"]
            assert ours == pytest.approx(paper, rel=0.01), f"{name} r={rank}: {ours:.3f} vs paper {paper}"


# --- method-specific details ------------------------------------------------------------------------------
def test_vera_projections_come_from_the_seed_and_are_frozen(tiny_name):
    _, first, _ = adapt(tiny_name, "vera", seed=0)
    _, second, _ = adapt(tiny_name, "vera", seed=5)  # another run seed: same projections
    _, other, _ = adapt(tiny_name, "vera", seed=0, projection_seed=1)
    assert not first.vera_projections.A.requires_grad
    assert first.vera_projections.A.abs().sum() > 0
    assert torch.equal(first.vera_projections.A, second.vera_projections.A)
    assert not torch.equal(first.vera_projections.A, other.vera_projections.A)


def test_lotr_factors_are_shared_across_layers(tiny_name):
    base, model, _ = adapt(tiny_name, "lotr")
    queries = [model.get_submodule(t.name) for t in find_targets(base, ["query"])]
    assert len(queries) == 2 and queries[0].shared()[0] is queries[1].shared()[0]
    assert queries[0].lotr_G is not queries[1].lotr_G


@pytest.mark.parametrize("method, kinds, bottleneck_size", [("hadapter", {"attn_out", "ffn_out"}, 16),
                                                            ("padapter", {"ffn_out"}, 32)])
def test_adapters_sit_on_the_output_projections(tiny_name, method, kinds, bottleneck_size):
    base, model, _ = adapt(tiny_name, method, rank=4)
    for target in find_targets(base):
        module = model.get_submodule(target.name)
        assert isinstance(module, BottleneckAdapterLinear) == (target.kind in kinds), target.name
        if target.kind in kinds:
            assert module.adapter_down.out_features == bottleneck_size


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="target_r"):
        build_method("adalora", {"target_r": 9}, 8)
    for name in ("hadapter", "padapter", "pa"):
        with pytest.raises(ConfigError, match="activation"):
            build_method(name, {"activation": "sigmoidish"}, 8)
