"""Where the paper's target modules live in each supported transformers architecture.

The paper adapts "all linear layers" of every transformer layer. We name the six kinds once
(query, key, value, attn_out, ffn_in, ffn_out) and map each architecture's module names onto them,
so methods speak of kinds ("key, value and ffn_in") and never of one model's attribute names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .errors import ConfigError, choices_message

ALL_LINEAR: tuple[str, ...] = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class Architecture:
    """Module names of one model family, relative to an encoder layer ``encoder.layer.<i>``."""

    suffixes: dict[str, str]  # kind -> module path inside a layer
    head: tuple[str, ...]  # top-level modules the ForSequenceClassification wrapper adds (always trained)


_BERT_LIKE = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}
_DEBERTA_V2 = {
    **_BERT_LIKE,
    "query": "attention.self.query_proj",
    "key": "attention.self.key_proj",
    "value": "attention.self.value_proj",
}

ARCHITECTURES: dict[str, Architecture] = {
    "roberta": Architecture(_BERT_LIKE, head=("classifier",)),
    "bert": Architecture(_BERT_LIKE, head=("classifier",)),
    # DeBERTa's ContextPooler is created by the classification wrapper (the checkpoint has none).
    "deberta-v2": Architecture(_DEBERTA_V2, head=("pooler", "classifier")),
}

_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.(.+)$")


def architecture_of(model: nn.Module) -> Architecture:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(choices_message("model architecture", model_type, list(ARCHITECTURES)))
    return ARCHITECTURES[model_type]


@dataclass(frozen=True)
class Target:
    """One adapted module: its full name, its kind and the index of its transformer layer."""

    name: str
    kind: str
    layer: int


def find_targets(model: nn.Module, kinds: tuple[str, ...] | list[str] = ALL_LINEAR) -> list[Target]:
    """Every nn.Linear of the given kinds, in model order."""
    unknown = set(kinds) - set(ALL_LINEAR)
    if unknown:
        raise ConfigError(choices_message("target module kind", sorted(unknown)[0], list(ALL_LINEAR)))
    by_suffix = {suffix: kind for kind, suffix in architecture_of(model).suffixes.items() if kind in kinds}
    targets = []
    for name, module in model.named_modules():
        match = _LAYER.search(name)
        if match and match.group(2) in by_suffix and isinstance(module, nn.Linear):
            targets.append(Target(name, by_suffix[match.group(2)], int(match.group(1))))
    if not targets:
        raise ConfigError(f"no target modules of kinds {list(kinds)} found in {type(model).__name__}")
    return targets


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classification head's parameters."""
    prefixes = tuple(f"{module}." for module in architecture_of(model).head)
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
