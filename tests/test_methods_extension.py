"""Extension methods: what is particular to each (VeRA's seeded frozen projections, LoTR's shared factors, the
adapters' placement, bad settings). The properties every method has are checked by tests/test_methods.py."""

from __future__ import annotations

import pytest
import torch
from method_properties import adapt

from subspace_tuning.architectures import find_targets
from subspace_tuning.errors import ConfigError
from subspace_tuning.methods import build_method
from subspace_tuning.methods.extension.adapters import BottleneckAdapterLinear


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
