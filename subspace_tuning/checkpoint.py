"""Epoch checkpoints: everything a killed run needs to continue as if it had never stopped.

A checkpoint holds the trained parameters, the optimizer and scheduler, every RNG and the method's own
state, as tensors and plain data only, so that it loads with ``torch.load(weights_only=True)``: a file
in a run folder can never run code.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .runio import atomic_write

log = logging.getLogger("subspace_tuning")
CHECKPOINT = "checkpoint.pt"


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG as tensors and plain values, so that a checkpoint loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
            "torch": torch.get_rng_state(), "data_order": generator.get_state()}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    kind, keys, pos, has_gauss, cached = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data_order"])


def read_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint's state if it belongs to this configuration, else None.

    Loaded with ``weights_only=True``: tensors and plain data only, so a crafted file cannot run code. A file that
    cannot be read that way (corrupt, truncated, or holding anything else) is moved aside to ``<name>.corrupt``
    with a warning and the run starts again."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
            raise ValueError("not a checkpoint of this runner")
    except Exception as err:  # noqa: BLE001 - whatever the reason, the file is not a usable checkpoint
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("%s could not be read as a checkpoint (%s); it was moved to %s and the run starts again",
                    path, reason[:200], aside)
        return None
    return state if state["fingerprint"] == fingerprint else None


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))
