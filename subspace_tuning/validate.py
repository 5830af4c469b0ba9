"""Every setting of a run checked before any work starts: one ConfigError that names each bad value.

The training loop calls ``validate_settings`` first, so a typo on the command line (``train.batch_size=0``,
``optim.lr=-1e-3``, ``seed=abc``) is reported as the setting the user typed, with what is allowed, instead of
failing deep inside the model or the optimizer. All bad settings are collected and reported together.

Hydra passes command-line values as typed: ``seed=abc`` arrives as the string 'abc', ``optim.lr='1e-3'`` as a
string, ``rank=2.5`` as a float. Number settings accept any string ``float()`` reads; count settings accept whole
numbers written as floats or strings ('4', 4.0); either is handed back as the number it means. ``seed`` and
``rank`` must be plain integers because they name the run folder (``seed3``, ``r8``): ``seed=3.0`` would make a
second folder for the same run. Booleans are never numbers.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

Verdict = tuple[Any, str | None]  # (the value as the run reads it, why it is refused or None)
Check = Callable[[Any], Verdict]

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")  # accelerate's names, and auto (README: train.mixed_precision)
MIN_LENGTH = 8
# Model types whose position ids count from pad_token_id + 1 (fairseq's make_positions, which transformers'
# RobertaEmbeddings.create_position_ids_from_input_ids copies): a sequence of n tokens uses ids up to
# n + pad_token_id, so n <= max_position_embeddings - (pad_token_id + 1). roberta-base: 514 - 2 = 512.
OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta"})
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_ABSENT = object()


class PositionLimit(NamedTuple):
    """The longest input a model can read, and why (for the message)."""

    tokens: int
    why: str


# --- reading values ---------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """``value`` as a float: an int, a float or a string float() reads; None otherwise (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _integer(value: Any, strict: bool) -> int | None:
    """``value`` as an int; unless ``strict``, also a whole float (2.0) or a string int() reads ('4')."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if strict:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def shown(value: Any) -> str:
    """A value as the user would type it: null, true, 0.001, [0.9, 0.999]; strings quoted, so 'abc' reads as text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (ListConfig, list, tuple)):
        return "[" + ", ".join(shown(item) for item in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


# --- checks: each returns (the value as the run reads it, None) or (value, why it is refused: "it must be ...") ---
def integer(minimum: int, nullable: bool = False, strict: bool = False, note: str = "") -> Check:
    allowed = f"it must be {'null or ' if nullable else ''}an integer >= {minimum}{note}"

    def check(value: Any) -> Verdict:
        if value is None and nullable:
            return None, None
        count = _integer(value, strict)
        return (count, None) if count is not None and count >= minimum else (value, allowed)

    return check


def number(low: float, low_open: bool, high: float | None = None, nullable: bool = False, note: str = "") -> Check:
    """A finite number above ``low`` (or at it unless ``low_open``), below ``high`` when given (never at it)."""
    if high is None:
        allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g})"
    allowed = f"it must be {'null or ' if nullable else ''}{allowed}{note}"

    def check(value: Any) -> Verdict:
        if value is None and nullable:
            return None, None
        x = _number(value)
        if (x is not None and math.isfinite(x) and (x > low if low_open else x >= low)
                and (high is None or x < high)):
            return (x if isinstance(value, str) else value), None  # only text is rewritten: 0 stays 0
        return value, allowed

    return check


def steps_or_fraction(value: Any) -> Verdict:
    """A step setting read by ``config.steps_of``: steps when >= 1, a fraction of the run when in (0, 1)."""
    count, fraction = _integer(value, strict=False), _number(value)
    if value is None or (count is not None and count >= 1):
        return count, None
    if fraction is not None and 0 < fraction < 1:
        return fraction, None
    return value, "it must be null, an integer >= 1 (steps) or a number in (0, 1) (a fraction of the run)"


def pair_in(low: float, high: float) -> Check:
    """Two numbers in [low, high) (Adam's betas)."""
    inside = number(low, low_open=False, high=high)

    def check(value: Any) -> Verdict:
        if isinstance(value, (ListConfig, list, tuple)) and len(value) == 2:
            items = [inside(x) for x in value]
            if all(why is None for _, why in items):
                return [x for x, _ in items], None
        return value, f"it must be two numbers in [{low:g}, {high:g})"

    return check


def one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> Verdict:
        return value, None if isinstance(value, str) and value in choices else f"it must be one of {', '.join(choices)}"

    return check


def boolean(value: Any) -> Verdict:
    return value, None if isinstance(value, bool) else "it must be true or false"


def trackers(value: Any) -> Verdict:
    """``train.log_with``: null, or accelerate's name of a tracker (or a list of them) whose package is installed
    (accelerate itself would drop a missing one without a word)."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    if value is None:
        return None, None
    known = [str(kind) for kind in LoggerType]
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (ListConfig, list, tuple)) else []
    if not names or not all(isinstance(name, str) and name in known for name in names):
        return value, f"it must be null, one of {', '.join(known)} (accelerate's tracker names) or a list of them"
    available = {str(kind) for kind in get_available_trackers()}
    missing = [name for name in names if name != "all" and name not in available]
    if missing:
        return value, (f"the package of {', '.join(missing)} is not installed (pip install -e \".[trackers]\" "
                       "installs tensorboard, wandb, mlflow and trackio; pip install the others by name)")
    return value, None


def folder_name(value: Any) -> Verdict:
    """Names that become folders of the run path (README, "What a run writes")."""
    name = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if name is not None and _NAME.fullmatch(name) and name not in (".", ".."):
        return value, None
    return value, ("it names a folder of the run path, so it must be non-empty and use only letters, digits, "
                   "'-', '_' and '.' (and not be '.' or '..')")


# (dotted key as typed on the command line, check, required): a key that is not required may be absent from
# an older config (optim.warmup_steps, model.classifier_dropout, train.grad_accum_steps and the train switches
# after train.mixed_precision came later).
RULES: tuple[tuple[str, Check, bool], ...] = (
    ("seed", integer(0, strict=True, note=" (digits only: it names the run folder)"), True),
    ("rank", integer(1, strict=True, note=" (digits only, even for rank-free methods, which ignore it)"), True),
    ("experiment_name", folder_name, True),
    ("model.name", folder_name, True),
    ("task.name", folder_name, True),
    ("method.name", folder_name, True),
    ("mpc.name", folder_name, True),
    ("model.classifier_dropout", number(0, low_open=False, high=1, nullable=True, note=" (null = the model's own)"),
     False),
    ("optim.lr", number(0, low_open=True), True),
    ("optim.head_lr", number(0, low_open=True, nullable=True, note=" (null = optim.lr)"), True),
    ("optim.weight_decay", number(0, low_open=False), True),
    ("optim.head_weight_decay", number(0, low_open=False, nullable=True, note=" (null = optim.weight_decay)"), True),
    ("optim.eps", number(0, low_open=True), True),
    ("optim.betas", pair_in(0, 1), True),
    ("optim.max_grad_norm", number(0, low_open=False, nullable=True, note=" (null or 0 = no clipping)"), True),
    ("optim.warmup_ratio", number(0, low_open=False, high=1), False),
    ("optim.warmup_steps", integer(0, nullable=True, note=" (when set it replaces optim.warmup_ratio)"), False),
    ("train.epochs", integer(1), True),
    ("train.batch_size", integer(1), True),
    ("train.eval_batch_size", integer(1), True),
    ("train.grad_accum_steps", integer(1, note=" (micro-batches per optimizer step)"), False),
    ("train.max_steps", integer(1, nullable=True), True),
    ("train.eval_steps", steps_or_fraction, True),
    ("train.log_every", integer(1), True),
    ("train.threads", integer(1, nullable=True, note=" (null = torch's choice)"), True),
    ("train.mixed_precision", one_of(MIXED_PRECISION), True),
    ("train.log_with", trackers, False),
    ("train.gradient_checkpointing", boolean, False),
    ("train.early_stopping_patience",
     integer(1, nullable=True, note=" (evaluations without a new best; null = off)"), False),
    ("train.compile", boolean, False),
    ("method.dropout", number(0, low_open=False, high=1, note=" (dropout on the adapter's input)"), False),
    ("data.max_train_samples", integer(1, nullable=True), True),
    ("data.max_eval_samples", integer(1, nullable=True), True),
    ("data.heldout_samples", integer(1, nullable=True, note=" (rows of train scored instead of dev)"), False),
)


# --- the model's positions ------------------------------------------------------------------------------
def position_limit(model_cfg: DictConfig) -> PositionLimit | None:
    """The most tokens ``model_cfg``'s architecture reads, or None when positions set no limit (or are unknown).

    Read from the transformers config built from ``model.arch`` (the same config ``build_model`` uses, with
    transformers' defaults for keys the YAML leaves out); a Hub model's ``arch`` mirrors its Hub config.
    - BERT (minilm), DeBERTa with ``position_biased_input: true``: ids 0 .. n-1, so n <= max_position_embeddings.
    - RoBERTa: ids from pad_token_id + 1 (``OFFSET_POSITIONS``), so n <= max_position_embeddings - pad_token_id - 1.
    - DeBERTa-v2/v3 with ``position_biased_input: false``: no absolute positions; relative positions are
      bucketed and clamped, so any length runs.
    """
    from .models import architecture_config

    if OmegaConf.select(model_cfg, "arch") is None:
        return None
    try:
        config = architecture_config(model_cfg)
    except (KeyError, ValueError, TypeError, OmegaConfBaseException):
        return None  # an unknown architecture is reported when the model is built, with the choices
    if not getattr(config, "position_biased_input", True):
        return None
    positions = int(config.max_position_embeddings)
    if config.model_type in OFFSET_POSITIONS:
        offset = int(config.pad_token_id) + 1
        return PositionLimit(positions - offset, f"{positions} position embeddings less {offset}: "
                                                 f"{config.model_type} numbers positions from pad_token_id + 1")
    return PositionLimit(positions, f"{positions} position embeddings")


def _check_max_length(cfg: DictConfig, value: Any) -> Verdict:
    length, why = integer(MIN_LENGTH)(value)
    if why is None:
        limit = position_limit(cfg.model)
        if limit is not None and length > limit.tokens:
            why = (f"model {cfg.model.name} reads at most {limit.tokens} tokens ({limit.why}), "
                   f"so use data.max_length={limit.tokens} or less")
    return length, why


def _check_alpha(cfg: DictConfig, value: Any) -> Verdict:
    """``method.alpha`` (s = alpha / r): a positive number; null only where the method's own YAML defaults to null
    (PiSSA and MiLoRA: alpha = r)."""
    if value is None:
        from .methods.defaults import method_defaults

        try:
            nullable = method_defaults(str(cfg.method.name)).get("alpha", 0) is None
        except ConfigError:
            nullable = False  # an unknown method is reported with the choices when it is built
        if nullable:
            return None, None
    return number(0, low_open=True, note=" (the update's scale is alpha / r)")(value)


# --- the entry point ------------------------------------------------------------------------------------
def _read(cfg: DictConfig, key: str) -> tuple[Any, str | None]:
    """The resolved value at ``key`` (``_ABSENT`` if not there), or why it could not be read."""
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=True), None
    except OmegaConfBaseException as err:
        return _ABSENT, f"{key} could not be resolved: {str(err).splitlines()[0]}"


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (so '4' and 4, or 2.0 and 2, differ), lists item by item."""
    if isinstance(a, (ListConfig, list)) and isinstance(b, (ListConfig, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _judge(cfg: DictConfig, key: str, check: Check, required: bool) -> tuple[str | None, Any]:
    """(the problem with ``key``, or None; the value to write back when it was given in another form, else _ABSENT)."""
    value, unreadable = _read(cfg, key)
    if unreadable:
        return unreadable, _ABSENT
    if value is _ABSENT:
        return (f"{key} is missing: {check(None)[1] or 'it must be set'}" if required else None), _ABSENT
    read, why = check(value)
    if why:
        return f"{key}={shown(value)} is not allowed: {why}", _ABSENT
    return None, (_ABSENT if _same(read, value) else read)


def validate_settings(cfg: DictConfig) -> DictConfig:
    """Check every setting of a run; raise one ConfigError (one paragraph) naming each bad one.

    Nothing is clamped: a value that is not allowed is refused with what is allowed. Accepted values written in
    another form are returned as the number they mean (``optim.lr='1e-3'`` -> 0.001, ``train.batch_size=4.0`` -> 4)
    in a copy of ``cfg``, so that the run reads numbers everywhere; otherwise ``cfg`` itself is returned.
    """
    problems: list[str] = []
    rewrites: dict[str, Any] = {}
    # data.max_length defaults to task.max_length (conf/config.yaml); its upper limit comes from the model
    length_key = "data.max_length"
    if OmegaConf.select(cfg, length_key, default=_ABSENT, throw_on_resolution_failure=False) is _ABSENT:
        length_key = "task.max_length"
    rules = [*RULES, (length_key, lambda value: _check_max_length(cfg, value), True),
             ("method.alpha", lambda value: _check_alpha(cfg, value), False)]
    for key, check, required in rules:
        problem, read = _judge(cfg, key, check, required)
        if problem:
            problems.append(problem)
        elif read is not _ABSENT:
            rewrites[key] = read
    if problems:
        raise ConfigError(". ".join(problems) + ".")
    if rewrites:
        cfg = copy.deepcopy(cfg)
        with read_write(cfg):
            for key, value in rewrites.items():
                OmegaConf.update(cfg, key, value, merge=False)
    return cfg
