"""A Hydra sweeper for paper tables: explicit rows crossed with a grid, resumable, with a dry run.

The basic sweeper only forms cartesian products, but a paper table is a list of rows (LoRA at four
ranks, BitFit once, AdaLoRA with and without MPC_o) crossed with tasks and seeds. This sweeper adds

- ``rows``: a list of override strings (``"method=lora rank=8 mpc=o"``), each crossed with the grid of
  ``params`` and command-line sweeps (row overrides win over grid values for the same key);
- ``skip_completed``: jobs whose run folder holds a completed metrics.json of the same configuration
  are not launched again, so relaunching an interrupted sweep only runs what is missing;
- jobs that are the same run (same folder and configuration, e.g. ``method=ia3 rank=2,8``: a rank-free
  method ignores the rank) are launched once;
- ``dry_run``: print the grid (size, how many are done) and launch nothing.

Launching is still Hydra's: any launcher (basic, joblib, submitit) receives the remaining jobs.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional  # no PEP 604 here: Hydra loads plugins without sys.modules and OmegaConf

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.subspace_tuning_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[dict[str, str]] = None  # noqa: UP045
    rows: list[str] = field(default_factory=list)
    skip_completed: bool = True
    dry_run: bool = False


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="subspace-tuning")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


class GridSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None, rows: list[str] | None = None,
                 skip_completed: bool = True, dry_run: bool = False) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.rows = [row.split() for row in rows or []]
        self.skip_completed = skip_completed
        self.dry_run = dry_run

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        (grid,) = BasicSweeper.split_arguments(overrides, None)
        jobs = grid
        if self.rows:
            jobs = [[o for o in combo if _key(o) not in {_key(r) for r in row}] + row
                    for row in self.rows for combo in grid]
        unique = self._distinct_runs(jobs)
        # composing every job is what it costs to know its folder; a sweep with no finished run skips that
        check = self.skip_completed and any(Path(self.config.hydra.sweep.dir).glob("**/metrics.json"))
        pending = [job for job in unique if not (check and self._completed(job))]
        same = len(jobs) - len(unique)
        done = len(unique) - len(pending)
        if self.dry_run:
            print(f"grid: {len(unique)} runs ({len(self.rows) or 1} rows x {len(grid)} grid points"
                  + (f", less {same} that repeat a run" if same else "")
                  + f"); {done} already complete, {len(pending)} to run")
            for job in pending:
                print("  " + " ".join(job))
            return []
        if done or same:
            log.info("skipping %d completed runs of %d (and %d jobs that repeat a run); launching %d",
                     done, len(unique), same, len(pending))
        size = max_batch_size or max(len(pending), 1)
        return [pending[i:i + size] for i in range(0, len(pending), size)]

    def _distinct_runs(self, jobs: list[list[str]]) -> list[list[str]]:
        """The jobs without those that repeat an earlier one: the same overrides, where a rank-free method's
        rank does not count (``-m method=ia3 rank=2,8`` is one run, in one folder)."""
        from subspace_tuning.resume import uses_rank

        seen, distinct = set(), []
        for job in jobs:
            settings = dict(o.split("=", 1) for o in job if "=" in o)
            method = settings.get("method", OmegaConf.select(self.config, "method.name"))
            key = frozenset((k, v) for k, v in settings.items() if k != "rank" or uses_rank(str(method)))
            if key not in seen:
                seen.add(key)
                distinct.append(job)
        return distinct

    def _completed(self, job: list[str]) -> bool:
        from subspace_tuning.config import register_resolvers
        from subspace_tuning.resume import completed_metrics, config_fingerprint

        register_resolvers()
        cfg: Any = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
        folder = Path(cfg.hydra.sweep.dir) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
        return completed_metrics(folder, config_fingerprint(cfg)) is not None
