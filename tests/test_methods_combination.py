"""Combination methods (DoRA, Spectral Adapter, SVDiff) against the SPEC.md properties, plus DoRA's norm handling
and the parameter table rows of every method this family and the reconstruction family own."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batch
from method_properties import (
    adapt,
    check_count,
    check_identity_at_init,
    check_merge,
    check_only_own_parameters_train,
    check_save_load,
    perturb_trainable,
)

# closed-form trainable counts: shapes = [(kind, out, in)] of the six linear kinds in every layer
EXPECTED_COUNTS = {
    "dora": lambda shapes, r: sum(r * (o + i) + o for _, o, i in shapes),
    "spectral_adapter": lambda shapes, r: sum(r * (o + i) for _, o, i in shapes),
    "svdiff": lambda shapes, r: sum(min(o, i) for _, o, i in shapes),
}
METHODS = sorted(EXPECTED_COUNTS)


@pytest.mark.parametrize("check", ["identity", "only_own_train", "merge", "save_load"])
@pytest.mark.parametrize("method", METHODS)
def test_spec_property(tiny_name, method, check, tmp_path):
    """The SPEC.md properties (method_properties.py); all four apply to every method of this family."""
    if check == "save_load":
        check_save_load(tiny_name, method, tmp_path)
    else:
        {"identity": check_identity_at_init, "only_own_train": check_only_own_parameters_train,
         "merge": check_merge}[check](tiny_name, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rank", [2, 8])
def test_closed_form_count(tiny_name, method, rank):
    check_count(tiny_name, method, EXPECTED_COUNTS[method], rank=rank)


def test_dora_magnitude_starts_at_row_norms_and_norm_is_detached_by_default():
    from subspace_tuning.methods.combination.dora import DoRALinear

    _, model, _ = adapt("tiny-roberta", "dora")
    module = model.roberta.encoder.layer[0].attention.self.query
    assert isinstance(module, DoRALinear) and module.detach_norm
    torch.testing.assert_close(module.magnitude, module.base.weight.norm(dim=1))
    perturb_trainable(model)
    x = torch.randn(3, module.in_features)

    def grad_of_a(detach: bool) -> torch.Tensor:
        module.detach_norm = detach
        module.lora_A.grad = None
        module(x).square().sum().backward()
        return module.lora_A.grad.clone()

    with_norm_gradient, detached = grad_of_a(False), grad_of_a(True)
    assert not torch.allclose(with_norm_gradient, detached)  # the flag changes backward...
    module.detach_norm = True
    out_detached = module(x)
    module.detach_norm = False
    torch.testing.assert_close(module(x), out_detached)  # ...and never the forward


def test_dora_materialises_the_updated_weight_once_per_forward(monkeypatch):
    from subspace_tuning.methods.combination.dora import DoRALinear

    _, model, _ = adapt("tiny-roberta", "dora")
    calls = []
    original = DoRALinear.updated_weight
    monkeypatch.setattr(DoRALinear, "updated_weight", lambda self: calls.append(1) or original(self))
    modules = sum(isinstance(m, DoRALinear) for m in model.modules())
    model.train()
    model(**tiny_batch()).loss.backward()
    assert len(calls) == modules


def test_svdiff_shift_goes_through_relu():
    """A shift below -sigma clips the singular value at zero: phi(W) loses that direction."""
    from subspace_tuning.methods.combination.svdiff import SVDiffLinear

    _, model, _ = adapt("tiny-deberta", "svdiff")
    module = next(m for m in model.modules() if isinstance(m, SVDiffLinear))
    with torch.no_grad():
        module.delta.fill_(-1e3)
    torch.testing.assert_close(module.merged_weight_and_bias()[0], torch.zeros_like(module.base.weight),
                               atol=1e-5, rtol=0)


def test_spectral_adapter_only_moves_top_r_directions():
    """With A' = 0 only B' trained, phi(W) - W = U_r Sigma_r B'^T: its column space is the top-r left singular
    space."""
    from subspace_tuning.methods.combination.spectral_adapter import SpectralAdapterLinear

    _, model, _ = adapt("tiny-roberta", "spectral_adapter", rank=2)
    module = next(m for m in model.modules() if isinstance(m, SpectralAdapterLinear))
    with torch.no_grad():
        module.spectral_B.normal_()
    delta = module.delta_weight()
    projector = module.U @ module.U.T
    torch.testing.assert_close(projector @ delta, delta, atol=1e-5, rtol=1e-4)
    assert torch.linalg.matrix_rank(delta) == 2
    x = torch.randn(5, module.in_features)
    with torch.no_grad():
        torch.testing.assert_close(module(x), module.base(x) + x @ delta.T, atol=1e-5, rtol=1e-4)


# The paper's %Params (per mille of RoBERTa-base) for the methods of these two families, SPEC.md.
SPEC_PER_MILLE = {("sam_parser", None): 0.44, ("ia3", None): 0.44, ("ssl", None): 0.22, ("ssb", None): 0.66,
                  ("bitfit", None): 0.82, ("dora", 2): 3.32, ("dora", 4): 5.97, ("dora", 8): 11.28,
                  ("dora", 16): 21.90}


def test_roberta_base_parameter_table_matches_the_paper():
    """Counted on the meta device, as ``python -m subspace_tuning.params`` does, for these rows only."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification

    from subspace_tuning.config import CONF_DIR
    from subspace_tuning.methods import build_method
    from subspace_tuning.models import architecture_config
    from subspace_tuning.params import count_parameters

    config = architecture_config(OmegaConf.load(CONF_DIR / "model" / "roberta-base.yaml"))
    for (name, rank), paper in SPEC_PER_MILLE.items():
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
        total = sum(p.numel() for p in model.parameters())
        options = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml"))
        options.pop("name")
        method = build_method(name, options, rank)
        per_mille = count_parameters(method.apply(model), method, total)["per_mille"]
        assert abs(per_mille - paper) <= 0.01 * paper, (name, rank, per_mille, paper)

