"""Prompt tuning (Lester et al., 2021): learned soft tokens prepended to the input embeddings (Mode 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, NotMergeableError
from ..base import AdapterModule, Method, MethodConfig, register

INITS = ("vocab", "normal")


@dataclass(kw_only=True)
class VirtualTokenConfig(MethodConfig):
    num_virtual_tokens: int


@dataclass(kw_only=True)
class PromptTuningConfig(VirtualTokenConfig):
    init: str  # one of INITS: vocab, embeddings of random vocabulary tokens (Lester et al.); normal, N(0, 0.02)


def backbone_of(model: nn.Module) -> nn.Module:
    """The encoder model inside a transformers ForSequenceClassification wrapper (``model.roberta`` etc.)."""
    backbone = getattr(model, "base_model", None)
    if backbone is None or not hasattr(backbone, "encoder"):
        raise ConfigError(f"{type(model).__name__} has no transformers encoder backbone to prompt")
    return backbone


def absolute_positions(embeddings: nn.Module, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor,
                       position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """The position ids the model would give the real tokens, or None if it adds no absolute positions."""
    if getattr(embeddings, "position_embeddings", None) is None:
        return None  # DeBERTa-v3 (position_biased_input false): relative positions only, from the sequence itself
    if position_ids is not None:
        return position_ids
    if hasattr(embeddings, "create_position_ids_from_input_ids"):  # RoBERTa: counted from padding_idx + 1
        if input_ids is not None:
            return embeddings.create_position_ids_from_input_ids(input_ids, embeddings.padding_idx)
        return embeddings.create_position_ids_from_inputs_embeds(inputs_embeds, embeddings.padding_idx)
    return embeddings.position_ids[:, : inputs_embeds.shape[1]].expand(inputs_embeds.shape[:2])


class SoftPrompt(AdapterModule):
    """n trainable embeddings put in front of every input, and hooks that keep the rest of the model unchanged.

    - the attention mask gets n leading ones and token type ids n leading zeros;
    - absolute positions (RoBERTa, BERT): the real tokens keep exactly the positions they have without the
      prompt, and the soft tokens take the position of the first token (<s> / [CLS]); a constant position
      vector is absorbed by a free embedding, and this way a prompt never pushes the input past the
      model's maximum position (RoBERTa at max_length 512);
    - relative positions (DeBERTa-v3): the soft tokens simply come first, so distances between real tokens
      are unchanged and soft token j sits n - j positions before <s> / [CLS];
    - the n soft positions are dropped from the last layer's output, so the classification head (and
      BERT's pooler) reads <s> / [CLS] as it does without a prompt. (Hugging Face PEFT instead lets the
      head read the first virtual token.)
    """

    def __init__(self, backbone: nn.Module, num_tokens: int, init: str) -> None:
        super().__init__()
        words = backbone.get_input_embeddings()
        weight = words.weight
        self.embedding = nn.Parameter(torch.empty(num_tokens, weight.shape[1], device=weight.device,
                                                  dtype=weight.dtype))
        if not weight.is_meta:
            with torch.no_grad():
                if init == "vocab":
                    self.embedding.copy_(weight[torch.randint(0, weight.shape[0], (num_tokens,))])
                else:
                    nn.init.normal_(self.embedding, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.embedding.shape[0]

    def prepend(self, backbone: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """Forward pre-hook of the backbone: rewrite its inputs with the prompt in front."""
        if len(args) > 1:
            raise TypeError("prompt tuning needs the backbone's inputs after input_ids as keyword arguments")
        kwargs = dict(kwargs)
        input_ids = args[0] if args else kwargs.get("input_ids")
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = backbone.get_input_embeddings()(input_ids)
        batch, length, n = embeds.shape[0], embeds.shape[1], self.num_tokens
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        if mask.dim() != 2:
            raise ValueError("prompt tuning needs a 2-d (batch x length) attention mask")
        positions = absolute_positions(backbone.embeddings, input_ids, embeds, kwargs.get("position_ids"))
        kwargs.update(input_ids=None, inputs_embeds=torch.cat([self.embedding.to(embeds.dtype).expand(batch, -1, -1),
                                                               embeds], dim=1),
                      attention_mask=torch.cat([mask.new_ones(batch, n), mask], dim=1))
        if positions is not None:
            positions = positions.expand(batch, -1)
            kwargs["position_ids"] = torch.cat([positions[:, :1].expand(-1, n), positions], dim=1)
        if kwargs.get("token_type_ids") is not None:
            token_types = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([token_types.new_zeros(batch, n), token_types], dim=1)
        return (), kwargs

    def strip(self, layer: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook of the last layer: drop the soft positions from its hidden states."""
        if isinstance(output, torch.Tensor):
            return output[:, self.num_tokens:]
        return (output[0][:, self.num_tokens:], *output[1:])


class VirtualTokenMethod(Method):
    """Prompt and prefix tuning: rank-free, n virtual tokens, not an identity at init, and nothing to merge."""

    family = "reconstruction"
    uses_rank = False
    identity_at_init = False
    mergeable = False  # virtual tokens are not a change of any weight
    adds: str  # what the method adds, for the not-mergeable message

    def __init__(self, config: VirtualTokenConfig) -> None:
        super().__init__(config)
        if config.num_virtual_tokens < 1:
            raise ConfigError(f"{self.name} needs num_virtual_tokens >= 1, got {config.num_virtual_tokens}")

    def merge(self, model: nn.Module) -> nn.Module:
        raise NotMergeableError(f"{self.name} adds {self.adds}, not a change of any weight, so it cannot be merged "
                                "into plain nn.Linear layers; use the run's trained.safetensors with this project's "
                                "code")


@register
class PromptTuning(VirtualTokenMethod):
    """Prompt tuning: phi(W) = W for every weight; n soft tokens in front of the input are all that trains.
    Trainable: n x embedding size. Not an identity at init (the prompt changes every attention)."""

    name = "prompt_tuning"
    display_name = "Prompt tuning"
    paper_order = 70
    peft_type = "PROMPT_TUNING"
    config_class = PromptTuningConfig
    adds = "soft input tokens"

    def __init__(self, config: PromptTuningConfig) -> None:
        super().__init__(config)
        if config.init not in INITS:
            raise ConfigError(f"unknown prompt_tuning init {config.init!r}; choose one of: {', '.join(INITS)}")

    def adapt(self, model: nn.Module) -> None:
        backbone = backbone_of(model)
        prompt = SoftPrompt(backbone, self.config.num_virtual_tokens, self.config.init)
        backbone.add_module("soft_prompt", prompt)
        backbone.register_forward_pre_hook(prompt.prepend, with_kwargs=True)
        backbone.encoder.layer[-1].register_forward_hook(prompt.strip)
