"""What makes a run "already done": its metrics.json says completed for the same configuration.

The fingerprint hashes the resolved configuration minus the settings that cannot change a result
(progress bars, logging cadence, cache and output locations), so relaunching a sweep skips finished
runs, re-runs failed or half-done ones, and re-runs a folder whose configuration was changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

# settings that do not change what a run computes
COSMETIC = {("train", "progress"), ("train", "log_every"), ("data", "cache_dir"), ("data", "num_workers"),
            ("output_root",), ("experiment_name",), ("run_path",), ("train", "save_trained"),
            ("train", "threads")}


def config_fingerprint(cfg: DictConfig) -> str:
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)  # a sweeper sees the hydra node, the job does not
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    for path in COSMETIC:
        node = resolved
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def completed_metrics(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The metrics of a completed run of this exact configuration in ``folder``, else None."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("status") == "completed" and metrics.get("config_fingerprint") == fingerprint:
        return metrics
    return None
