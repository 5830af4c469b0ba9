"""Hydra callbacks: the output location is checked before Hydra creates the run folder in it.

Hydra makes the run folder (and writes ``.hydra/``) before the task starts, so an output root that is a file,
read-only or on a full disk would end in Hydra's own traceback; this callback says so in one paragraph first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckOutputLocation(Callback):
    """``on_run_start`` / ``on_multirun_start``: the folder a run or sweep writes into must be writable."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check(Path(str(config.hydra.sweep.dir)))


def check(folder: Path) -> None:
    from .errors import OutputError
    from .runio import ensure_writable_dir

    try:
        ensure_writable_dir(folder)
    except OutputError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        sys.exit(2)
