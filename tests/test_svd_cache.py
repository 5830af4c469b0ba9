"""The thin SVDs behind SAM-PARSER, SVDiff and Spectral Adapter: exact factors for tall and wide weights, and
the on-disk cache that lets a sweep compute each backbone's SVDs once."""

from __future__ import annotations

import logging

import pytest
import torch

from subspace_tuning.methods.reconstruction import spectral
from subspace_tuning.methods.reconstruction.spectral import SVD_CACHE_ENV, thin_svds


def weights() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(24, 40, generator=g), torch.randn(40, 24, generator=g), torch.randn(24, 40, generator=g),
            torch.randn(16, 16, generator=g)]


def test_factors_are_an_exact_thin_svd_for_tall_square_and_wide_weights(monkeypatch, tmp_path):
    monkeypatch.setenv(SVD_CACHE_ENV, "off")
    for weight, (u, s, vh) in zip(weights(), thin_svds(weights()), strict=True):
        k = min(weight.shape)
        assert u.shape == (weight.shape[0], k) and s.shape == (k,) and vh.shape == (k, weight.shape[1])
        torch.testing.assert_close((u * s) @ vh, weight, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(u.T @ u, torch.eye(k), atol=1e-5, rtol=0)
        torch.testing.assert_close(vh @ vh.T, torch.eye(k), atol=1e-5, rtol=0)
        assert torch.all(s[:-1] >= s[1:])
    assert not any(tmp_path.iterdir())


def test_top_rank_triplets_are_the_leading_ones(monkeypatch):
    monkeypatch.setenv(SVD_CACHE_ENV, "off")
    weight = weights()[1]
    u, s, vh = thin_svds([weight], rank=3)[0]
    expected = torch.linalg.svdvals(weight)[:3]
    torch.testing.assert_close(s, expected)
    assert u.shape == (40, 3) and vh.shape == (3, 24)


def test_a_second_apply_reads_the_cache_instead_of_computing(monkeypatch, tmp_path):
    monkeypatch.setenv(SVD_CACHE_ENV, str(tmp_path))
    first = thin_svds(weights())
    assert len(list(tmp_path.glob("*.safetensors"))) == 4

    def no_svd(*args, **kwargs):
        raise AssertionError("the cached SVD should have been used")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    second = thin_svds(weights(), rank=5)
    for (u1, s1, vh1), (u2, s2, vh2) in zip(first, second, strict=True):
        assert torch.equal(u1[:, :5], u2) and torch.equal(s1[:5], s2) and torch.equal(vh1[:5], vh2)


def test_a_changed_weight_is_not_served_a_stale_svd(monkeypatch, tmp_path):
    monkeypatch.setenv(SVD_CACHE_ENV, str(tmp_path))
    weight = weights()[0]
    thin_svds([weight])
    changed = weight.clone()
    changed[0, 0] += 1.0
    u, s, vh = thin_svds([changed])[0]
    torch.testing.assert_close((u * s) @ vh, changed, atol=1e-5, rtol=1e-5)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_an_unreadable_cache_file_is_recomputed_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(SVD_CACHE_ENV, str(tmp_path))
    weight = weights()[0]
    thin_svds([weight])
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger=spectral.__name__):
        u, s, vh = thin_svds([weight])[0]
    assert "unreadable cached SVD" in caplog.text
    torch.testing.assert_close((u * s) @ vh, weight, atol=1e-5, rtol=1e-5)
    assert spectral.read_cached(path, torch.device("cpu")) is not None  # rewritten


@pytest.mark.parametrize("value", ["off", "0", ""])
def test_the_cache_can_be_turned_off(monkeypatch, value):
    monkeypatch.setenv(SVD_CACHE_ENV, value)
    assert spectral.svd_cache_dir() is None
