"""Hugging Face PEFT's counterpart of one of our methods: the same modules, rank, alpha, dropout and initial values.

Which methods have one is the method class's ``peft_type`` (its catalogue entry, docs/methods.md). The benchmark's
``peft:<method>`` rows are built from ``peft_config``; the PEFT oracle tests can build theirs the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..methods import LinearMethod, Method, build_method, method_class
from ..methods.reconstruction.scaling import IN, ScalingMethod


def has_peft_counterpart(method_name: str) -> bool:
    """Whether Hugging Face PEFT has the method (its class declares a ``peft_type``)."""
    return method_class(method_name).peft_type is not None


def peft_targets(method: Method, model: nn.Module) -> tuple[list[str], list[str]]:
    """(every module ``method`` adapts in ``model``, by full name; those of them PEFT's (IA)3 calls feedforward:
    scaled on their input side). Methods that adapt no linear module (prompt and prefix tuning) have none."""
    if not isinstance(method, LinearMethod):
        return [], []
    targets = method.targets(model)
    inputs = [t.name for t in targets if isinstance(method, ScalingMethod) and method.side(t.kind) == IN]
    return [t.name for t in targets], inputs


def peft_config(method_name: str, rank: int | None, target_module_names: Sequence[str] | str,
                settings: Mapping[str, Any] | None = None, *, feedforward_module_names: Sequence[str] = (),
                total_step: int | None = None, orth_reg_weight: float = 0.0) -> Any:
    """The ``peft.PeftConfig`` of our method ``method_name`` at ``rank``, adapting ``target_module_names`` (full
    module names, or PEFT's regular expression). ``settings`` are our method's (conf/method/<name>.yaml keys; the
    missing ones take the YAML's values). AdaLoRA needs ``total_step`` (its schedule's length; a fraction in
    tinit / tfinal / deltaT is one of it, as in our AdaLoRA) and takes ``orth_reg_weight`` (0: our adalora with
    mpc=none has no orthogonality term; PEFT still computes it). (IA)3 takes ``feedforward_module_names``, the
    modules scaled on their input side. The classification head trains in both (task_type SEQ_CLS)."""
    import peft

    ours = build_method(method_name, dict(settings or {}), rank)
    c, peft_type = ours.config, method_class(method_name).peft_type
    common = {"task_type": peft.TaskType.SEQ_CLS}
    if peft_type == "LORA":
        return peft.LoraConfig(**common, r=ours.rank, lora_alpha=c.alpha, lora_dropout=c.dropout,
                               target_modules=target_module_names, use_dora=method_name == "dora")
    if peft_type == "IA3":
        return peft.IA3Config(**common, target_modules=target_module_names,
                              feedforward_modules=list(feedforward_module_names))
    if peft_type == "VERA":
        return peft.VeraConfig(**common, r=ours.rank, target_modules=target_module_names, d_initial=c.d_initial,
                               vera_dropout=c.dropout, projection_prng_key=c.projection_seed)
    if peft_type == "ADALORA":
        return adalora_config(ours, target_module_names, total_step, orth_reg_weight)
    if peft_type == "PROMPT_TUNING":  # PEFT's random init instead of vocabulary rows: the same cost
        return peft.PromptTuningConfig(**common, num_virtual_tokens=c.num_virtual_tokens)
    if peft_type == "PREFIX_TUNING":
        return peft.PrefixTuningConfig(**common, num_virtual_tokens=c.num_virtual_tokens,
                                       prefix_projection=c.reparameterize, encoder_hidden_size=c.encoder_hidden_size)
    raise KeyError(f"no PEFT config for method {method_name!r} (peft_type {peft_type!r})")


def adalora_config(ours: Method, target_module_names: Sequence[str] | str, total_step: int | None,
                   orth_reg_weight: float) -> Any:
    """PEFT's AdaLoRA with our AdaLoRA ``ours``'s ranks, alpha, dropout, smoothing and schedule (in steps of a
    ``total_step``-step run)."""
    import peft

    if total_step is None:
        raise ValueError("PEFT's AdaLoRA needs total_step, the length of its schedule")
    c = ours.config
    tinit, tfinal = ours.phase_steps(total_step)
    return peft.AdaLoraConfig(task_type=peft.TaskType.SEQ_CLS, init_r=ours.rank, target_r=ours.target_r,
                              lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=target_module_names,
                              total_step=total_step, tinit=tinit, tfinal=tfinal, deltaT=ours.interval(total_step),
                              beta1=c.beta1, beta2=c.beta2, orth_reg_weight=orth_reg_weight)
