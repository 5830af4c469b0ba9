"""Extension methods (and the full fine-tuning reference) against the SPEC.md properties."""

from __future__ import annotations

import pytest
from method_properties import (
    check_count,
    check_identity_at_init,
    check_merge,
    check_only_own_parameters_train,
    check_save_load,
)

# closed-form trainable counts: shapes = [(kind, out, in)] of the six linear kinds in every layer
EXPECTED_COUNTS = {
    "lora": lambda shapes, r: sum(r * (o + i) for _, o, i in shapes),
}
MERGEABLE = ["lora"]


@pytest.mark.parametrize("method", sorted(EXPECTED_COUNTS))
def test_identity_at_init(tiny_name, method):
    check_identity_at_init(tiny_name, method)


@pytest.mark.parametrize("method", sorted(EXPECTED_COUNTS))
def test_only_own_parameters_train(tiny_name, method):
    check_only_own_parameters_train(tiny_name, method)


@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_matches_adapted_forward(tiny_name, method):
    check_merge(tiny_name, method)


@pytest.mark.parametrize("method", sorted(EXPECTED_COUNTS))
def test_save_load_round_trip(tiny_name, method, tmp_path):
    check_save_load(tiny_name, method, tmp_path)


@pytest.mark.parametrize("method", sorted(EXPECTED_COUNTS))
@pytest.mark.parametrize("rank", [2, 8])
def test_closed_form_count(tiny_name, method, rank):
    check_count(tiny_name, method, EXPECTED_COUNTS[method], rank=rank)
