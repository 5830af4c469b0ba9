"""Prefix tuning (Li and Liang, 2021): learned key and value vectors prepended in every attention layer.

Each layer's self-attention is wrapped: its queries attend to [prefix keys; token keys] and mix
[prefix values; token values]. The prefixes are not tokens: they have no hidden state, no query and
no position.

- RoBERTa / BERT: the prefix keys and values go straight into the model's own attention function
  (eager or SDPA) with the padding mask extended by n "attend" columns; absolute positions are added
  to the token embeddings only, so the real tokens keep their positions.
- DeBERTa-v2/v3 (disentangled attention): the score of query i on prefix j is the content term
  q_i . k_j / sqrt(3 d) alone, with the same scale as DeBERTa's content-to-content term; the
  content-to-position and position-to-content terms are not defined for a position-less prefix and are
  left out. The token-to-token scores, relative positions included, are exactly the model's.

Optionally (``reparameterize``) the prefixes are produced during training by Li and Liang's MLP,
shared by all layers as in Hugging Face PEFT: P = W2 tanh(W1 E + b1) + b2 from n embeddings E. The saved
state is always the folded prefixes (2 x n x hidden per layer), and loading folds the MLP away.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...architectures import architecture_of
from ...errors import ConfigError
from ..base import AdapterModule, register
from .prompt_tuning import VirtualTokenConfig, VirtualTokenMethod, backbone_of

ENCODER_NAME = "prefix_encoder"


@dataclass(kw_only=True)
class PrefixTuningConfig(VirtualTokenConfig):
    reparameterize: bool  # train through Li and Liang's MLP; folded into plain prefixes when saved
    encoder_hidden_size: int  # hidden width of that MLP
    init_std: float  # plain prefixes start at N(0, init_std)


class PrefixEncoder(AdapterModule):
    """The MLP reparameterisation: all layers' prefixes from n embeddings, laid out as PEFT's PrefixEncoder
    (per token: layer 0 key, layer 0 value, layer 1 key, ...)."""

    def __init__(self, num_tokens: int, hidden: int, mlp_hidden: int, num_layers: int, factory: dict) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, hidden, **factory)
        self.transform = nn.Sequential(nn.Linear(hidden, mlp_hidden, **factory), nn.Tanh(),
                                       nn.Linear(mlp_hidden, num_layers * 2 * hidden, **factory))
        self.hidden = hidden

    def layer_prefix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) of one layer, each n x hidden; only that layer's rows of the last linear are used."""
        h = self.transform[1](self.transform[0](self.embedding.weight))
        rows = slice(2 * layer * self.hidden, 2 * (layer + 1) * self.hidden)
        out = nn.functional.linear(h, self.transform[2].weight[rows], self.transform[2].bias[rows])
        return out[:, : self.hidden], out[:, self.hidden:]


def extend_mask(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Prepend n always-attend key columns to a 4-d (batch, 1, query, key) mask (boolean or additive)."""
    if mask is None:
        return None
    if mask.dim() != 4:
        raise ValueError(f"prefix tuning expects a 4-d attention mask, got shape {tuple(mask.shape)}")
    attend = torch.ones if mask.dtype == torch.bool else torch.zeros
    return torch.cat([attend(*mask.shape[:-1], n, dtype=mask.dtype, device=mask.device), mask], dim=-1)


class PrefixAttention(AdapterModule):
    """A frozen self-attention module (``self.base``) whose keys and values get a learned prefix."""

    def __init__(self, base: nn.Module, layer: int, num_tokens: int, init_std: float,
                 encoder: PrefixEncoder | None) -> None:
        super().__init__()
        self.base = base
        self.layer = layer
        self.num_tokens = num_tokens
        self.encoder = (encoder,) if encoder is not None else None  # a reference, not a submodule
        self.prefix_key = self.prefix_value = None
        if encoder is None:
            like = base.key_proj.weight if hasattr(base, "key_proj") else base.key.weight
            factory = {"device": like.device, "dtype": like.dtype}
            self.prefix_key = nn.Parameter(torch.empty(num_tokens, like.shape[0], **factory))
            self.prefix_value = nn.Parameter(torch.empty(num_tokens, like.shape[0], **factory))
            if not like.is_meta:
                nn.init.normal_(self.prefix_key, std=init_std)
                nn.init.normal_(self.prefix_value, std=init_std)

    def prefix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values), each n x hidden."""
        if self.encoder is not None:
            return self.encoder[0].layer_prefix(self.layer)
        return self.prefix_key, self.prefix_value

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the MLP reparameterisation by the prefixes it currently produces."""
        if self.encoder is not None:
            key, value = self.prefix()
            self.prefix_key, self.prefix_value = nn.Parameter(key.clone()), nn.Parameter(value.clone())
            self.encoder = None


class PrefixSelfAttention(PrefixAttention):
    """RoBERTa / BERT self-attention with a prefix, through the model's own attention function."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: Any = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attn = self.base
        if cache is not None:
            raise ValueError("prefix tuning adapts encoders; a decoding cache is not supported")
        kwargs.pop("encoder_hidden_states", None)
        batch, length = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:  # (batch, len, hidden) -> (batch, heads, len, head size)
            return x.view(batch, -1, attn.num_attention_heads, attn.attention_head_size).transpose(1, 2)

        prefix_key, prefix_value = (p.to(hidden_states.dtype).expand(batch, -1, -1) for p in self.prefix())
        query = heads(attn.query(hidden_states))
        key = heads(torch.cat([prefix_key, attn.key(hidden_states)], dim=1))
        value = heads(torch.cat([prefix_value, attn.value(hidden_states)], dim=1))
        eager = sys.modules[type(attn).__module__].eager_attention_forward
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)
        out, weights = interface(attn, query, key, value, extend_mask(attention_mask, self.num_tokens),
                                 dropout=attn.dropout.p if self.training else 0.0, scaling=attn.scaling, **kwargs)
        return out.reshape(batch, length, -1).contiguous(), weights


class PrefixDisentangledAttention(PrefixAttention):
    """DeBERTa-v2/v3 disentangled self-attention with a position-less prefix (see the module docstring)."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False,
                query_states: torch.Tensor | None = None, relative_pos: torch.Tensor | None = None,
                rel_embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        from transformers.models.deberta_v2.modeling_deberta_v2 import scaled_size_sqrt

        attn, n = self.base, self.num_tokens
        heads = attn.num_attention_heads
        query_states = hidden_states if query_states is None else query_states
        batch, length = query_states.shape[:2]
        query = attn.transpose_for_scores(attn.query_proj(query_states), heads)  # (batch * heads, len, head size)
        key = attn.transpose_for_scores(attn.key_proj(hidden_states), heads)
        value = attn.transpose_for_scores(attn.value_proj(hidden_states), heads)
        prefix_key, prefix_value = (attn.transpose_for_scores(p.to(query.dtype).expand(batch, -1, -1), heads)
                                    for p in self.prefix())
        scale_factor = 1 + ("c2p" in attn.pos_att_type) + ("p2c" in attn.pos_att_type)
        scale = scaled_size_sqrt(query, scale_factor).to(dtype=query.dtype)
        scores = torch.bmm(query, key.transpose(-1, -2) / scale)
        if attn.relative_attention:
            scores = scores + attn.disentangled_attention_bias(query, key, relative_pos,
                                                               attn.pos_dropout(rel_embeddings), scale_factor)
        scores = torch.cat([torch.bmm(query, prefix_key.transpose(-1, -2) / scale), scores], dim=-1)
        scores = scores.view(batch, heads, length, -1)
        mask = extend_mask(attention_mask.bool(), n)
        probs = attn.dropout(torch.softmax(scores.masked_fill(~mask, torch.finfo(query.dtype).min), dim=-1))
        context = torch.bmm(probs.view(batch * heads, length, -1), torch.cat([prefix_value, value], dim=1))
        context = context.view(batch, heads, length, -1).permute(0, 2, 1, 3).reshape(batch, length, -1)
        return context, (probs if output_attentions else None)


@register
class PrefixTuning(VirtualTokenMethod):
    """Prefix tuning in every layer: phi(W) = W for every weight; n key and n value vectors per layer train.
    Trainable: 2 x n x hidden per layer (the MLP's parameters instead, when reparameterised). Not an
    identity at init (the prefixes take part of every attention)."""

    name = "prefix_tuning"
    display_name = "Prefix tuning"
    paper_order = 80
    peft_type = "PREFIX_TUNING"
    config_class = PrefixTuningConfig
    adds = "key and value vectors to every attention layer"

    def adapt(self, model: nn.Module) -> None:
        architecture_of(model)  # a clear error for unsupported model types
        deberta = model.config.model_type == "deberta-v2"
        wrapper = PrefixDisentangledAttention if deberta else PrefixSelfAttention
        if wrapper is PrefixSelfAttention and model.config._attn_implementation not in ("eager", "sdpa"):
            raise ConfigError(f"prefix tuning supports the eager and sdpa attention implementations, not "
                              f"{model.config._attn_implementation!r}")
        backbone, c = backbone_of(model), self.config
        layers = backbone.encoder.layer
        encoder = None
        if c.reparameterize:
            weight = backbone.get_input_embeddings().weight
            factory = {"device": weight.device, "dtype": weight.dtype}
            encoder = PrefixEncoder(c.num_virtual_tokens, model.config.hidden_size, c.encoder_hidden_size,
                                    len(layers), factory)
            model.add_module(ENCODER_NAME, encoder)
        for i, layer in enumerate(layers):
            layer.attention.self = wrapper(layer.attention.self, i, c.num_virtual_tokens, c.init_std, encoder)

    def wrappers(self, model: nn.Module) -> dict[str, PrefixAttention]:
        return {name: m for name, m in model.named_modules() if isinstance(m, PrefixAttention)}

    def fold(self, model: nn.Module) -> None:
        """Fold the MLP reparameterisation away: afterwards each layer holds its plain prefixes."""
        for module in self.wrappers(model).values():
            module.fold()
        if hasattr(model, ENCODER_NAME):
            delattr(model, ENCODER_NAME)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The folded prefixes (whether or not an MLP produces them now) and the head."""
        state = {name: t for name, t in super().state_dict(model).items() if not name.startswith(ENCODER_NAME + ".")}
        with torch.no_grad():
            for name, module in self.wrappers(model).items():
                key, value = module.prefix()
                state[f"{name}.prefix_key"], state[f"{name}.prefix_value"] = key.contiguous(), value.contiguous()
        return state

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        self.fold(model)
        super().load_state_dict(model, state)

    def summary(self, model: nn.Module) -> dict[str, Any]:
        folded = sum(t.numel() for name, t in self.state_dict(model).items() if name.endswith(("_key", "_value")))
        return {"prefix_parameters": folded}
