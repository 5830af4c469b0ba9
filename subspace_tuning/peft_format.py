"""A trained run as a Hugging Face PEFT adapter folder: ``adapter_config.json`` + ``adapter_model.safetensors``,
which ``peft.PeftModel.from_pretrained(base, folder)`` loads onto the unmodified pretrained backbone.

Which PEFT tuner a method maps to is the method class's ``peft_type`` (its catalogue entry, docs/methods.md) and
the config is the benchmark's ``peft_config`` (the same modules, rank, alpha and dropout); nothing here lists
method names. The export builds PEFT's own model on a fresh backbone, copies our trained tensors into it and lets
PEFT write the folder, so the key naming is PEFT's by construction. The classification head (and DeBERTa's pooler)
is saved as ``modules_to_save``.

- LoRA, DoRA (``use_dora``), VeRA (the shared projections saved in the file), (IA)3: parameter for parameter.
- AdaLoRA: P, Q and lambda with the final ``rank_pattern``, which PEFT uses to cut every module to its kept
  triplets; PEFT's scaling alpha / (initial r + 1e-5) is matched by rescaling lambda.
- Every other method whose modules are ``s B C act(A x)`` with no nonlinearity (TriLoRA, FLoRA, MoSLoRA: C the
  r x r core) is exactly a LoRA with B' = B C. PiSSA and MiLoRA also changed the frozen weight to
  W_res = W - s B0 A0; relative to the original W their update is s (B A - B0 A0), a rank-2r LoRA with
  B' = [B, -B0], A' = [A; A0] (PEFT's own route for PiSSA, "converting PiSSA to LoRA" in its docs); B0 and A0 are
  recomputed by applying the method to the fresh backbone (the same cached SVD).
- Refused with the reason: prompt tuning (PEFT's prompt tuning shifts the real tokens' positions and its head
  reads the first virtual token; ours keep their positions and the head reads <s> / [CLS], so no PEFT folder
  computes our model), prefix tuning (PEFT 0.21 cannot run prefix tuning on transformers 5 encoders: they take no
  past key values), and methods with no PEFT counterpart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .architectures import architecture_of, head_parameter_names
from .bench.peft_rows import peft_config, peft_targets
from .errors import NotMergeableError
from .methods import Method, catalogue, method_class
from .methods.base import AdaptedLinear
from .methods.extension.lora import LowRankLinear, LowRankMethod

# The peft_types we write parameter for parameter; LORA also covers the methods that are LoRA after a change of
# factors (module docstring).
WRITTEN = ("LORA", "ADALORA", "VERA", "IA3")
# Why PEFT's counterpart of a method cannot reproduce our trained model (module docstring)
REFUSED = {
    "PROMPT_TUNING": "PEFT's prompt tuning is a different model: it shifts the real tokens' positions by the number "
                     "of virtual tokens and its classification head reads the first virtual token, while ours keep "
                     "their positions and the head reads <s> / [CLS], so no PEFT adapter computes this run's logits",
    "PREFIX_TUNING": "PEFT 0.21 cannot run prefix tuning on transformers 5 encoders (it needs past key values, which "
                     "RoBERTa, BERT and DeBERTa no longer take), so PeftModel.from_pretrained would give a model "
                     "that fails on its first forward",
}


LOW_RANK_FORM = ("forward", "merged_weight_and_bias", "delta_weight")  # what makes phi(W) = W + s B C A


class NotExportableError(NotMergeableError):
    """The method (or this run's variant of it) has no exact Hugging Face PEFT adapter."""


def lora_expressible(cls: type[Method]) -> bool:
    """Whether every module of the method is LoRA's ``W x + s B C act(A x)`` (a ``LowRankLinear`` that keeps its
    forward and merge, changing at most the r x r core C, the scaling or the initial values) and mergeable, so that
    with no nonlinearity (mpc != n) it is exactly a LoRA with B' = B C."""
    linear = getattr(cls, "linear_class", None)
    return (issubclass(cls, LowRankMethod) and cls.mergeable and linear is not None
            and all(getattr(linear, f) is getattr(LowRankLinear, f) for f in LOW_RANK_FORM))


def peft_exportable(cls: type[Method]) -> bool:
    """Whether runs of method class ``cls`` can be written as PEFT adapters (with mpc=none|o|d)."""
    return cls.peft_type in WRITTEN or lora_expressible(cls)


def refusal(method: Method, why: str) -> NotExportableError:
    names = ", ".join(cls.name for cls in catalogue() if peft_exportable(cls))
    return NotExportableError(f"method {method.name} cannot be exported in PEFT format: {why}. The methods that can "
                              f"be are {names} (with mpc=none, o or d); use --format merged where the method merges")


def check_exportable(method: Method) -> None:
    """Raise ``NotExportableError`` (one paragraph) unless ``method`` as configured has an exact PEFT adapter."""
    peft_type = method_class(method.name).peft_type
    if peft_type in REFUSED:
        raise refusal(method, REFUSED[peft_type])
    if not peft_exportable(type(method)):
        raise refusal(method, "Hugging Face PEFT has no counterpart of it and its update is not a LoRA")
    if not method.merges:
        raise refusal(method, "this run has a nonlinearity between A and B (mpc=n), which no PEFT tuner has")


def adapted_modules(model: nn.Module) -> dict[str, AdaptedLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def peft_model_of(method: Method, adapted: nn.Module, base: nn.Module, settings: dict[str, Any],
                  initial: Callable[[], nn.Module], total_steps: int) -> Any:
    """PEFT's model on ``base`` (a fresh copy of the pretrained backbone, modified in place) holding the trained
    state of ``adapted`` (our model with ``method`` applied). ``settings`` are the run's method settings,
    ``initial()`` gives ``base`` adapted by the method at its initialisation (PiSSA / MiLoRA's B0 and A0), and
    ``total_steps`` is the run's length (AdaLoRA's schedule in the config)."""
    import peft

    check_exportable(method)
    peft_type = method_class(method.name).peft_type
    modules = adapted_modules(adapted)
    targets, feedforward = peft_targets(method, base)
    with torch.no_grad():
        for name in head_parameter_names(adapted):  # PEFT copies the head into modules_to_save as it is now
            base.get_parameter(name).copy_(adapted.get_parameter(name))
    if peft_type in ("ADALORA", "VERA", "IA3") or peft_type == "LORA" and not lora_expressible(type(method)):
        config = peft_config(method.name, method.rank, targets, settings, feedforward_module_names=feedforward,
                             total_step=total_steps)
        copy_into = {"ADALORA": copy_adalora, "VERA": copy_vera, "IA3": copy_ia3, "LORA": copy_dora}[peft_type]
        factors = None
    else:
        factors = lora_factors(modules, base, initial)
        rank, scaling = next(iter(factors.values()))[2:]
        config = peft_config("lora", rank, targets, {"alpha": scaling * rank, "dropout": settings.get("dropout", 0.0),
                                                     "targets": None})
        copy_into = copy_lora
    config.modules_to_save = list(architecture_of(base).head)
    model = peft.get_peft_model(base, config)
    inner = model.base_model.model
    with torch.no_grad():
        for name, mine in modules.items():
            copy_into(mine, inner.get_submodule(name), model, factors[name] if factors else None)
    if peft_type == "ADALORA":
        model.peft_config["default"].rank_pattern = {f"{name}.lora_E": kept(mine).tolist()
                                                     for name, mine in modules.items()}
    return model.eval()


def lora_factors(modules: dict[str, AdaptedLinear], base: nn.Module,
                 initial: Callable[[], nn.Module]) -> dict[str, tuple[torch.Tensor, torch.Tensor, int, float]]:
    """(A', B', rank, scaling) per module such that W + scaling B' A' is the module's phi(W), W the original weight."""
    factors, start = {}, None
    for name, mine in modules.items():
        b, a = mine.lora_B @ core(mine).T, mine.lora_A  # s B C A = s (B C) A
        if not torch.equal(mine.base.weight, base.get_submodule(name).weight):  # PiSSA / MiLoRA: W_res
            start = start or adapted_modules(initial())
            b, a = torch.cat([b, -start[name].lora_B], 1), torch.cat([a, start[name].lora_A], 0)
        factors[name] = (a, b, a.shape[0], float(mine.scaling))
    if len({f[2:] for f in factors.values()}) != 1:
        raise AssertionError("every module of a low-rank method has the same rank and scaling")
    return factors


def core(mine: LowRankLinear) -> torch.Tensor:
    """C^T of ``s B C A``: the core applied to the identity (``LowRankLinear.delta_weight`` reads it the same way)."""
    return mine.core(torch.eye(mine.rank, dtype=mine.lora_A.dtype, device=mine.lora_A.device))


def copy_lora(mine: AdaptedLinear, theirs: nn.Module, model: Any, factors: tuple) -> None:
    a, b = factors[:2]
    theirs.lora_A["default"].weight.copy_(a)
    theirs.lora_B["default"].weight.copy_(b)


def copy_dora(mine: AdaptedLinear, theirs: nn.Module, model: Any, _: None) -> None:
    copy_lora(mine, theirs, model, (mine.lora_A, mine.lora_B))
    theirs.lora_magnitude_vector["default"].weight.copy_(mine.magnitude)


def kept(mine: AdaptedLinear) -> torch.Tensor:
    """The triplets AdaLoRA kept: its rank mask, plus any masked lambda that regrew after the last allocation (a
    run that ended before the mask was fixed), so that dropping the others changes nothing."""
    return mine.rank_mask | (core(mine).diagonal() != 0)


def copy_adalora(mine: AdaptedLinear, theirs: nn.Module, model: Any, _: None) -> None:
    theirs.lora_A["default"].copy_(mine.lora_A)  # Q
    theirs.lora_B["default"].copy_(mine.lora_B)  # P
    # PEFT scales by alpha / (ranknum + 1e-5), ranknum the initial rank; ours by mine.scaling (alpha / initial r,
    # or alpha / kept triplets with scaling=current_rank): lambda absorbs the ratio
    theirs_scaling = theirs.scaling["default"] / (theirs.ranknum["default"] + 1e-5)
    # the effective lambda is the diagonal core (a subclass may mask or gate lambda there)
    theirs.lora_E["default"].copy_((core(mine).diagonal() * (mine.scaling / theirs_scaling))[:, None])


def copy_vera(mine: AdaptedLinear, theirs: nn.Module, model: Any, _: None) -> None:
    theirs.vera_lambda_d["default"].copy_(mine.vera_d)
    theirs.vera_lambda_b["default"].copy_(mine.vera_b)
    shared = mine.projections[0]  # PEFT and ours both size the shared projections by the largest layer
    model.base_model.vera_A["default"].copy_(shared.A)
    model.base_model.vera_B["default"].copy_(shared.B)


def copy_ia3(mine: AdaptedLinear, theirs: nn.Module, model: Any, _: None) -> None:
    scale = mine.scale_in if theirs.is_feedforward else mine.scale_out
    theirs.ia3_l["default"].copy_(scale.view_as(theirs.ia3_l["default"]))

