"""A run's identity: which folder it owns, what makes it "already done", and what may never be overwritten.

- The folder is ``<model>/<task>/<method>/<r8 | no-rank>/mpc-<mpc>/[<variant>/]seed<seed>``: the readable path,
  plus, for a run whose command line changes a setting outside the path (``optim.lr=1e-3``,
  ``method.alpha=32``, ``protocol=scripts``), a variant folder that names those settings. Two
  configurations that differ on the command line therefore never share a folder.
- The fingerprint hashes the resolved configuration minus the settings that cannot change a result
  (progress bars, logging cadence, cache and output locations), plus a hash of the data's content. A rank
  given to a rank-free method is not part of it, so ``-m method=ia3 rank=2,8`` is one run. Lookup tables (an
  experiment's per-task or per-method values) are not part of it either: the values a run resolves from them
  are, so a new entry for another method leaves every recorded run its own.
- A recorded run is judged by the rules of the running version: its saved ``config.yaml`` and data hash are
  fingerprinted again, so a run recorded before a rule changed is still found complete.
- A completed run is skipped; a folder holding a completed run of a *different* configuration is never
  overwritten: the run stops with a message naming the settings that differ. When only the data changed,
  the old run is moved aside (``<folder>.superseded-<time>``) and the run starts again on the new data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import ConfigError
from .paths import CONF_DIR

# The settings in the readable part of the folder (as command-line override keys). ``experiment`` and
# ``hparams_search`` name the first level (their experiment_name), not a variant: a search's trials differ by
# their sampled overrides, which do name the variant.
PATH_KEYS = frozenset({"model", "task", "method", "rank", "mpc", "seed", "experiment", "hparams_search"})
# Settings that do not change what a run computes (dotted keys). ``task.data_dir`` is a location: the
# data's content is fingerprinted instead, so moving the data re-runs nothing and editing it re-runs.
# ``train.log_with`` only reports; ``train.gradient_checkpointing`` recomputes the same activations with the same
# dropout masks (memory for time).
COSMETIC = frozenset({"train.progress", "train.log_every", "train.threads", "train.save_trained", "train.checkpoint",
                      "data.cache_dir", "data.num_workers", "task.data_dir", "output_root", "experiment_name",
                      "train.log_with", "train.gradient_checkpointing"})
# Settings that change a result but came after runs were recorded: at this value a run computes what it did
# before the setting existed, so the identity leaves it out there and an earlier run keeps its fingerprint.
# ``train.grad_accum_steps`` changes the optimizer steps (their number, batch, schedule, AdaLoRA's allocation);
# ``train.early_stopping_patience`` where training ends; ``train.compile`` the numbers (inductor's dropout draws
# other random masks than eager's, so a compiled run is not the eager run of the same seed).
NEUTRAL = {"train.grad_accum_steps": 1, "train.early_stopping_patience": None, "train.compile": False}
# Lookup tables read only through other settings' interpolations; the identity holds what they resolve to, so a
# new entry (another method's lr, a protocol's new key) leaves every recorded run its own. ``optim.lr`` resolves
# its method's entry of ``optim.lr_by_method``; every ``protocol`` value reaches the run through ``data``, ``optim``,
# ``train``, ``model``, ``method`` and ``mpc`` (docs/protocol.md), and its name is recorded in metrics.json. Top-level
# keys outside conf/config.yaml and its config groups (an experiment's ``study_lr``, ``study_budget``) are lookup
# tables too: no code reads them.
LOOKUPS = frozenset({"optim.lr_by_method", "protocol"})
log = logging.getLogger("subspace_tuning")
SUPERSEDED = ".superseded-"  # suffix of a run folder moved aside because its data changed
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")
MAX_VARIANT_CHARS = 100  # longer variant names become a prefix plus a hash (folder names stop at 255 bytes)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def canonical(value: str) -> str:
    """One spelling per number (``1e-3``, ``0.001`` and ``1.0e-3`` are ``0.001``; ``8`` stays ``8``), so that a
    single run and a sweep job of the same setting name the same folder (a sweep hands its jobs parsed values)."""
    for parse in (int, float):
        try:
            return repr(parse(value))
        except ValueError:
            continue
    return value


def variant(overrides: Iterable[str]) -> dict[str, str]:
    """The command-line settings outside the readable path that can change a result: key -> value (canonical)."""
    pairs = (str(o).lstrip("+~").split("=", 1) for o in overrides)
    found = {key: canonical(value) for key, value, *_ in (p + [""] for p in pairs)
             if key not in PATH_KEYS and key not in COSMETIC and not key.startswith("hydra")}
    return dict(sorted(found.items()))


def safe_component(text: object) -> str:
    """``text`` as one folder name: characters outside letters, digits and ``. _ = , + -`` become ``_``,
    and ``.`` / ``..`` / an empty name are never produced (nothing is written outside the output tree)."""
    name = _UNSAFE.sub("_", str(text))
    return name if name.strip(".") else name.replace(".", "_") or "_"


def variant_folder(overrides: Iterable[str]) -> str:
    """The variant part of a run folder ('' for the experiment's own settings), ending with '/'."""
    settings = variant(overrides)
    if not settings:
        return ""
    text = ",".join(f"{k}={v}" for k, v in settings.items())
    name = safe_component(text)
    if name != text or len(name) > MAX_VARIANT_CHARS:  # a changed or shortened name gets a hash: no collisions
        name = f"{name[:MAX_VARIANT_CHARS]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return name + "/"


def run_folder(model: str, task: str, method: str, rank: Any, mpc: str, seed: Any, overrides: Any = ()) -> str:
    """The run's folder below ``<output_root>/<experiment_name>`` (the ``run_folder`` resolver of conf/config.yaml)."""
    parts = [model, task, method, f"r{rank}" if uses_rank(str(method)) else "no-rank", f"mpc-{mpc}"]
    return "/".join(safe_component(p) for p in parts) + "/" + variant_folder(overrides or ()) \
        + safe_component(f"seed{seed}")


def uses_rank(method_name: str) -> bool:
    from .errors import SubspaceTuningError
    from .methods import method_class

    try:
        return method_class(method_name).uses_rank
    except SubspaceTuningError:  # an unknown method is reported by the run itself, with the choices
        return True


@functools.cache
def setting_roots() -> frozenset[str]:
    """The top-level keys a run reads: those of conf/config.yaml and the names of its config groups."""
    primary = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))
    groups = {name for entry in primary.get("defaults", []) if isinstance(entry, dict) for name in entry}
    return frozenset((primary.keys() | groups) - {"defaults", "hydra"})


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings that can change a result (the fingerprint's input, minus the data hash)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)  # a sweeper sees the hydra node, the job does not
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    for key in resolved.keys() - setting_roots():
        resolved.pop(key)
    for dotted in COSMETIC | LOOKUPS | NEUTRAL.keys():
        *parents, leaf = dotted.split(".")
        node = resolved
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and (dotted not in NEUTRAL or node.get(leaf, NEUTRAL[dotted]) == NEUTRAL[dotted]):
            node.pop(leaf, None)
    if not uses_rank(str(resolved.get("method", {}).get("name"))):
        resolved["rank"] = None
    return resolved


def data_digest(cfg: DictConfig) -> str:
    """A hash of the data's content ('unreadable' when it cannot be read: the run itself reports why)."""
    from .data import data_fingerprint
    from .errors import SubspaceTuningError

    try:
        return data_fingerprint(cfg.task)
    except (OSError, SubspaceTuningError):
        return "unreadable"


def hash_identity(settings: dict[str, Any], data: str) -> str:
    record = {"config": settings, "data": data}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_fingerprint(cfg: DictConfig) -> str:
    return hash_identity(identity(cfg), data_digest(cfg))


def saved_identity(folder: Path) -> dict[str, Any] | None:
    """The identity, by this version's rules, of the configuration saved in ``folder/config.yaml`` (None when it
    cannot be read or resolved)."""
    try:
        return identity(OmegaConf.load(folder / "config.yaml"))
    except Exception:  # noqa: BLE001 - an unreadable or unresolvable old config is "unknown", reported by the caller
        return None


def saved_as(record: dict[str, Any], saved: dict[str, Any] | None, wanted: str) -> bool:
    """Whether a run record whose saved config has the identity ``saved`` (``saved_identity``) is of the
    configuration fingerprinted ``wanted`` under this version's rules (with the data hash it recorded)."""
    return saved is not None and hash_identity(saved, str(record.get("data_fingerprint"))) == wanted


def is_this_configuration(folder: Path, record: dict[str, Any], wanted: str) -> bool:
    """Whether the run recorded in ``folder`` is of the configuration fingerprinted ``wanted``: by the fingerprint
    it recorded, or else by its saved config fingerprinted again (``saved_as``)."""
    return record.get("config_fingerprint") == wanted or saved_as(record, saved_identity(folder), wanted)


def load_record(folder: Path) -> dict[str, Any] | None:
    """``metrics.json`` of ``folder`` if it is a run record (a JSON object with a status), else None; reads only."""
    try:
        record = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("status"), str) else None


def read_record(folder: Path) -> dict[str, Any] | None:
    """``load_record``, and anything else found as ``metrics.json`` (not JSON, a list, a truncated file) is moved
    aside as ``metrics.json.invalid`` so that it never aborts a sweep and is never mistaken for a result."""
    record = load_record(folder)
    path = folder / "metrics.json"
    if record is None and path.exists():
        try:
            path.replace(path.with_name("metrics.json.invalid"))
        except OSError:
            pass
    return record


def completed_metrics(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The metrics of a completed run of this exact configuration in ``folder``, else None (reads only: data-parallel
    followers and the sweeper call it, and only the run's owner moves files)."""
    record = load_record(folder)
    if record is not None and record["status"] == "completed" and is_this_configuration(folder, record, fingerprint):
        return record
    return None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 8) -> list[str]:
    """'optim.lr 0.001 -> 0.002' for every setting that differs (at most ``limit``, then a count)."""
    flat_old, flat_new = flatten(old), flatten(new)
    changed = [f"{k} {flat_old.get(k, '(absent)')} -> {flat_new.get(k, '(absent)')}"
               for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


def claim_folder(folder: Path, cfg: DictConfig, fingerprint: str) -> dict[str, Any] | None:
    """Decide what a launch does with ``folder``: the completed metrics of this configuration (skip), or None
    (train). Raises ConfigError when the folder holds a completed run of another configuration."""
    record = read_record(folder)
    if record is None or record.get("status") != "completed":
        return None
    if record.get("config_fingerprint") == fingerprint:
        return record
    old_identity = saved_identity(folder)  # read once: for the fingerprint again, then for the message
    if saved_as(record, old_identity, fingerprint):
        return record
    old_identity = old_identity or {}
    changed = differences(old_identity, identity(cfg)) if old_identity else []
    data_changed = record.get("data_fingerprint") not in (None, data_digest(cfg))
    if old_identity and not changed and data_changed:
        aside = folder.with_name(folder.name + SUPERSEDED + time.strftime("%Y%m%d-%H%M%S"))
        folder.rename(aside)
        log.warning("the data changed since %s completed; that run was moved to %s and this one starts again",
                    folder, aside)
        return None
    if changed:
        what = f"it differs in: {'; '.join(changed)}"
    elif old_identity:
        what = "its config.yaml shows no difference: it was recorded by another version of subspace-tuning"
    else:
        what = "its config.yaml cannot be read"
    raise ConfigError(
        f"{folder} holds a completed run of a different configuration ({what}). It is not overwritten. To run this "
        "configuration, give it its own folder by setting the differing values on the command line (command-line "
        "settings outside the folder path get a variant folder of their own), or move that folder away.")
