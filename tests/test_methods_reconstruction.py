"""Reconstruction methods: what is particular to each (BitFit's biases, SAM-PARSER's singular values really train,
prompt positions and masks, prefix attention on DeBERTa, the MLP reparameterisation folding away). The properties
every method has are checked by tests/test_methods.py."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batch, tiny_model
from method_properties import N_TOKENS, adapt, logits, perturb_trainable

from subspace_tuning.architectures import head_parameter_names
from subspace_tuning.methods import build_method


def test_bitfit_trains_every_backbone_bias(tiny_name):
    """Linear and LayerNorm biases of every layer, the embedding LayerNorm and DeBERTa's relative-embedding one."""
    _, model, method = adapt(tiny_name, "bitfit")
    config = model.config
    h, layers = config.hidden_size, config.num_hidden_layers
    expected = layers * (7 * h + config.intermediate_size) + h + (h if config.model_type == "deberta-v2" else 0)
    own = {n for n, p in model.named_parameters() if p.requires_grad} - head_parameter_names(model)
    assert sum(model.get_parameter(n).numel() for n in own) == expected
    assert all(n.endswith(".bias") for n in own)
    if config.model_type == "deberta-v2":
        assert "deberta.encoder.LayerNorm.bias" in own


def test_sam_parser_singular_values_train_and_the_loss_falls(tiny_name):
    """sigma must really train (a sigma built inside forward(), after the optimizer exists, never would): with the
    head frozen, sigma alone lowers the loss."""
    _, model, _ = adapt(tiny_name, "sam_parser")
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith(".sigma"))
    sigmas = [p for p in model.parameters() if p.requires_grad]
    assert len(sigmas) == 6 * model.config.num_hidden_layers
    start = [s.detach().clone() for s in sigmas]
    optimizer = torch.optim.AdamW(sigmas, lr=0.1, weight_decay=0.0)
    batch = tiny_batch(batch=8)  # eval mode: no dropout noise, so the loss curve is the optimisation alone
    losses = []
    for _ in range(20):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.02, losses  # a random tiny model with a frozen head: a small but real fall
    assert all(not torch.equal(s, s0) for s, s0 in zip(sigmas, start, strict=True))


def test_sam_parser_svd_is_float32_even_for_half_precision_weights():
    from subspace_tuning.methods.reconstruction.spectral import thin_svds

    weight = torch.randn(48, 16, dtype=torch.float64)
    u, s, vh = thin_svds([weight.to(torch.bfloat16)])[0]
    assert u.dtype == torch.bfloat16 and s.shape == (16,)
    exact = torch.linalg.svdvals(weight.to(torch.bfloat16).double())
    torch.testing.assert_close(s.double(), exact, atol=0.0, rtol=1e-2)  # bf16 storage, float32+ computation


def test_sam_parser_applies_on_meta_without_svd():
    from subspace_tuning.methods.reconstruction.sam_parser import SamParserLinear

    with torch.device("meta"):
        model = tiny_model("tiny-roberta")
    build_method("sam_parser", {}).apply(model)
    modules = [m for m in model.modules() if isinstance(m, SamParserLinear)]
    assert modules and all(m.sigma.is_meta and m.U.shape[1] == m.sigma.shape[0] for m in modules)


def test_sam_parser_saves_only_sigma_and_head():
    _, model, method = adapt("tiny-roberta", "sam_parser")
    names = set(method.state_dict(model))
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(".sigma") or n.startswith("classifier.") for n in names)


def test_prompt_keeps_real_token_positions_and_reads_cls():
    """RoBERTa: the real tokens keep their positions and the head reads <s>, so a prompt whose soft tokens
    are fully masked out of attention changes nothing; position ids never exceed the unprompted ones."""
    base, model, method = adapt("tiny-roberta", "prompt_tuning")
    seen = {}
    model.roberta.embeddings.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    batch = tiny_batch()
    out = logits(model, batch)
    n = method.config.num_virtual_tokens
    positions = seen["position_ids"]
    expected = base.roberta.embeddings.create_position_ids_from_input_ids(batch["input_ids"], 0)
    assert positions.shape[1] == n + batch["input_ids"].shape[1]
    assert torch.equal(positions[:, n:], expected)
    assert torch.equal(positions[:, :n], expected[:, :1].expand(-1, n))
    assert out.shape == (4, 2)


@pytest.mark.parametrize("reparameterize", [False, True])
def test_prefix_deberta_attention_keeps_token_scores(reparameterize):
    """DeBERTa: over the real tokens the prefixed attention is the model's own distribution renormalised, and
    over the prefix it is softmax(q . k_prefix / sqrt(3 d)), content only."""
    from subspace_tuning.methods.reconstruction.prefix_tuning import PrefixDisentangledAttention

    base, model, _ = adapt("tiny-deberta", "prefix_tuning", num_virtual_tokens=3, reparameterize=reparameterize)
    perturb_trainable(model, scale=0.5)
    wrapper = model.deberta.encoder.layer[1].attention.self
    assert isinstance(wrapper, PrefixDisentangledAttention)
    attn = wrapper.base
    encoder = model.deberta.encoder
    hidden = torch.randn(2, 7, model.config.hidden_size)
    mask = encoder.get_attention_mask(torch.tensor([[1] * 7, [1] * 5 + [0] * 2]))
    rel = dict(relative_pos=encoder.get_rel_pos(hidden), rel_embeddings=encoder.get_rel_embedding())
    with torch.no_grad():
        _, plain = attn(hidden, mask, output_attentions=True, **rel)
        _, probs = wrapper(hidden, mask, output_attentions=True, **rel)
        prefix_mass = probs[..., :3].sum(-1, keepdim=True)
        valid = mask[:, :, :, :1].expand(-1, attn.num_attention_heads, -1, -1).bool().squeeze(-1)
        torch.testing.assert_close(probs[..., 3:][valid], (plain * (1 - prefix_mass))[valid])
        heads = attn.num_attention_heads
        q = attn.transpose_for_scores(attn.query_proj(hidden), heads).view(2, heads, 7, -1)
        k = wrapper.prefix()[0].view(3, heads, -1).transpose(0, 1)
        expected = torch.softmax(q @ k.transpose(-1, -2).unsqueeze(0) / (3 * q.shape[-1]) ** 0.5, dim=-1)
        torch.testing.assert_close((probs[..., :3] / prefix_mass)[valid], expected[valid])


def test_prefix_mlp_folds_away_in_saved_state(tiny_name, tmp_path):
    """With the MLP reparameterisation the saved state is the folded prefixes (2 x n x hidden per layer), and a
    model loaded from it (plain prefixes, no MLP) computes the same."""
    from subspace_tuning.runio import load_tensors, save_tensors

    _, model, method = adapt(tiny_name, "prefix_tuning", reparameterize=True)
    assert hasattr(model, "prefix_encoder")
    perturb_trainable(model)
    state = method.state_dict(model)
    config = model.config
    prefix = sum(t.numel() for n, t in state.items() if n.endswith(("prefix_key", "prefix_value")))
    assert prefix == 2 * N_TOKENS * config.hidden_size * config.num_hidden_layers
    assert not any(n.startswith("prefix_encoder.") for n in state)
    save_tensors(tmp_path / "trained.safetensors", state)
    _, fresh, fresh_method = adapt(tiny_name, "prefix_tuning")
    fresh_method.load_state_dict(fresh, load_tensors(tmp_path / "trained.safetensors"))
    torch.testing.assert_close(logits(fresh), logits(model), atol=1e-5, rtol=1e-4)
    method.fold(model)  # folding in place leaves the same function and no MLP
    assert not hasattr(model, "prefix_encoder")
    torch.testing.assert_close(logits(model), logits(fresh), atol=1e-5, rtol=1e-4)
