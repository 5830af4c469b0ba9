"""Combination methods: what is particular to each (DoRA's magnitude and norm handling, SVDiff's ReLU, Spectral
Adapter's top-r directions). The properties every method has are checked by tests/test_methods.py."""

from __future__ import annotations

import torch
from conftest import tiny_batch
from method_properties import adapt, perturb_trainable


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
