"""Results apart from their rendering: run records, their aggregation and the paper's published numbers.

- Run records: every ``metrics.json`` below the given folders is one run (``read_run``, ``find_runs``); two
  records of one run (the same model, task, row and seed, e.g. a sweep folder copied twice) are never counted as
  more seeds: one is kept, the others are attached to it as ``duplicates``.
- Aggregation (``build_tables``): one ``ModelTable`` per model, rows keyed by (method, rank, MPC, variant), one
  ``Cell`` per task holding the completed runs' scores and the counts of the others, summarised as the mean and
  standard error over seeds or the median (``STATISTICS``); a row's average needs every task cell complete.
- The paper's numbers: Tables II-IV of arXiv 2407.05417v2, shipped as ``paper_results.json`` (``load_paper``).

The report (``subspace_tuning.report``: Markdown, CSV, LaTeX) and the figures (``subspace_tuning.figures``) both
render these and import nothing from each other. Only the standard library is imported here; method display
names, the paper's row order and the families come from the method classes (``subspace_tuning.methods``, which
imports torch) the first time a row is labelled or sorted.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SubspaceTuningError

if TYPE_CHECKING:
    from .methods import Method


GLUE_TASKS = ("mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb")
# The paper's headline metric per task; a cell scored otherwise is not compared with it.
PAPER_METRICS = {"mnli": "accuracy", "sst2": "accuracy", "cola": "matthews", "qqp": "accuracy", "qnli": "accuracy",
                 "rte": "accuracy", "mrpc": "accuracy", "stsb": "pearson"}
MPC_ORDER = ("none", "o", "d", "n")
STATUSES = ("completed", "failed", "running")
PAPER_FILE = Path(__file__).with_name("paper_results.json")
# What a cell shows: the mean with its standard error (the default), or the median that some peers report.
STATISTICS = {"mean": "mean ± standard error over seeds", "median": "median over seeds"}
# Marks a cell some of whose seeds predicted one class (or a constant) on the dev set: '72.00 ± 1.15 (3)†2'.
DEGENERATE_MARK = "†"
# Variant settings that can change a method's parameter count: a row with one gets no looked-up budget.
BUDGET_KEYS = ("method.", "model.")

BudgetLookup = Callable[[str, list[tuple[str, int | None]]], dict[tuple[str, int | None], float]]
Variant = tuple[tuple[str, str], ...]


class ReportError(SubspaceTuningError):
    """The folders or files given to the report cannot be aggregated."""


# --- the method catalogue ---------------------------------------------------------------------------
@functools.cache
def _registry() -> dict[str, type[Method]]:
    """The live method registry, every method module imported once (so methods registered later are seen)."""
    from .methods import REGISTRY, load_all

    load_all()
    return REGISTRY


def method_entry(method: str) -> type[Method] | None:
    """The registered class of ``method`` (its display name, paper order, family), None for a method that is not
    registered (a run of a method since removed, or registered only by another program)."""
    return _registry().get(method)


def display_name(method: str) -> str:
    """The method as the paper writes it ('(IA)3', 'Fully FT'); an unregistered method by its name."""
    entry = method_entry(method)
    return method if entry is None else entry.display_name


def family(method: str) -> str | None:
    """The paper's family of ``method`` (reference, reconstruction, extension, combination); None if unregistered."""
    entry = method_entry(method)
    return None if entry is None else entry.family


# --- reading runs ---------------------------------------------------------------------------------
def _natural(value: str) -> tuple[int, float, str]:
    """Sort numbers by value ('3e-4' before '0.001'), then any other text alphabetically."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


@dataclass(frozen=True)
class RowKey:
    """One row of a table: a method at a rank (None for rank-free methods) with an MPC variant, and the
    settings its runs changed on the command line (``variant``: sorted (key, value) pairs; () for none)."""

    method: str
    rank: int | None
    mpc: str
    variant: Variant = ()

    @property
    def base(self) -> RowKey:
        """The row without its variant: the paper's row of the same method, rank and MPC."""
        return RowKey(self.method, self.rank, self.mpc)

    @property
    def variant_text(self) -> str:
        """'method.alpha=32,optim.lr=0.001' ('' for the experiment's own settings)."""
        return ",".join(f"{key}={value}" for key, value in self.variant)

    @property
    def label(self) -> str:
        """The paper's row name: 'LoRA + MPC_o'; AdaLoRA's own regulariser is MPC_o ('AdaLoRA - MPC_o'); a variant
        follows in brackets: 'LoRA [optim.lr=0.001]'."""
        name = display_name(self.method)
        if self.method == "adalora":
            name = {"none": "AdaLoRA - MPC_o", "o": name}.get(self.mpc, f"{name} - MPC_o + MPC_{self.mpc}")
        elif self.mpc != "none":
            name = f"{name} + MPC_{self.mpc}"
        return f"{name} [{self.variant_text}]" if self.variant else name

    def sort_key(self) -> tuple[Any, ...]:
        """The paper's row order: rank-free rows first, then each rank block in the methods' paper order (methods
        that are not registered last), MPC none, o, d, n, the variants by their settings."""
        entry = method_entry(self.method)
        method = (1, 0) if entry is None else (0, entry.paper_order)
        mpc = MPC_ORDER.index(self.mpc) if self.mpc in MPC_ORDER else len(MPC_ORDER)
        variant = [(key, _natural(value)) for key, value in self.variant]
        return (self.rank is not None, self.rank or 0, method, self.method, mpc, self.mpc, variant)


@dataclass
class RunRecord:
    """What the report needs from one ``metrics.json``; scores in percent. ``duplicates``: other records of
    the same run (row, task and seed) that were left out in favour of this one."""

    path: Path
    model: str
    task: str
    key: RowKey
    seed: Any
    status: str
    metric: str
    best: float | None
    last: float | None
    per_mille: float | None
    error: str | None
    protocol: str | None = None
    fingerprint: str | None = None
    duplicates: list[RunRecord] = field(default_factory=list)
    degenerate_best: bool = False
    degenerate_last: bool = False
    majority_baseline: float | None = None  # the dev split's most frequent label's share, in percent (accuracy)

    def score(self, last: bool) -> float | None:
        return self.last if last else self.best

    def degenerate(self, last: bool) -> bool:
        """Whether the scored evaluation's dev predictions were all one class, or constant (runner's metrics.json
        ``degenerate``; runs recorded before it was kept are taken as not degenerate)."""
        return self.degenerate_last if last else self.degenerate_best


def _headline(path: Path, data: dict[str, Any], which: str) -> float | None:
    record = data.get(which)
    if record is None:
        if data["status"] == "completed":
            raise ReportError(f"{path} says the run completed but has no '{which}' evaluation; the file is not "
                              f"a run record this version of the runner writes.")
        return None
    try:
        return 100.0 * float(record["scores"][data["metric"]])
    except (KeyError, TypeError, ValueError) as err:
        raise ReportError(f"{path}: its '{which}' evaluation has no score for the headline metric "
                          f"{data['metric']!r} ({err!r}).") from None


def _degenerate(data: dict[str, Any], which: str) -> bool:
    """The run's flag for its best or last evaluation; the evaluation record's own when the top level lacks it."""
    flags = data.get("degenerate")
    if isinstance(flags, dict) and flags.get(which) is not None:
        return bool(flags[which])
    record = data.get(which)
    return bool(record.get("degenerate")) if isinstance(record, dict) else False


def _majority_baseline(data: dict[str, Any]) -> float | None:
    """The dev labels' majority share (percent) its last evaluation recorded; None before runs recorded it."""
    record = data.get("last")
    summary = record.get("predictions") if isinstance(record, dict) else None
    share = summary.get("label_majority_share") if isinstance(summary, dict) else None
    return 100.0 * float(share) if isinstance(share, int | float) else None


def _variant(path: Path, data: dict[str, Any]) -> Variant:
    """The run's command-line settings as sorted pairs; files written before runs recorded them have none."""
    variant = data.get("variant") or {}
    if not isinstance(variant, dict):
        raise ReportError(f"{path}: 'variant' is {variant!r}, not an object of setting -> value; the file is not a "
                          f"run record this version of the runner writes.")
    return tuple(sorted((str(key), str(value)) for key, value in variant.items()))


def read_run(path: Path) -> RunRecord:
    """Read one ``metrics.json``; a clear ReportError names the file when it is not a readable run record."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror or err}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f"{err.msg} at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) \
            else "not UTF-8 text"
        raise ReportError(f"{path} is not valid JSON ({where}). A run always writes it whole, so it was edited or "
                          f"copied partly; rerun that run or remove its folder.") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a run record (a JSON object).")
    missing = [k for k in ("status", "model", "task", "method", "mpc", "seed", "metric") if k not in data]
    if missing:
        raise ReportError(f"{path} is not a run record: it has no {', '.join(map(repr, missing))}.")
    if data["status"] not in STATUSES:
        raise ReportError(f"{path} has status {data['status']!r}; expected one of {', '.join(STATUSES)}.")
    try:
        rank = None if data.get("rank") is None else int(data["rank"])
        params = data.get("parameters") or {}
        per_mille = None if params.get("per_mille") is None else float(params["per_mille"])
    except (TypeError, ValueError, AttributeError) as err:
        raise ReportError(f"{path}: its rank or parameter budget is not a number ({err}).") from None
    protocol = data.get("protocol")
    return RunRecord(path=path, model=str(data["model"]), task=str(data["task"]),
                     key=RowKey(str(data["method"]), rank, str(data["mpc"]), _variant(path, data)),
                     seed=data["seed"], status=data["status"], metric=str(data["metric"]),
                     best=_headline(path, data, "best"), last=_headline(path, data, "last"), per_mille=per_mille,
                     error=data.get("error"), protocol=None if protocol is None else str(protocol),
                     fingerprint=data.get("config_fingerprint"), degenerate_best=_degenerate(data, "best"),
                     degenerate_last=_degenerate(data, "last"), majority_baseline=_majority_baseline(data))


def find_runs(folders: Iterable[Path]) -> list[RunRecord]:
    """Every run below ``folders``, one record per (model, task, row, seed): further records of the same run
    are attached to the one kept (``RunRecord.duplicates``), never counted as more seeds."""
    runs: dict[tuple[Any, ...], list[RunRecord]] = {}
    for folder in folders:
        if not folder.exists():
            raise ReportError(f"no such folder: {folder}")
        files = [folder] if folder.is_file() else sorted(folder.rglob("metrics.json"))
        if not files:
            raise ReportError(f"found no metrics.json under {folder}. A run writes <sweep>/<model>/<task>/<method>/"
                              f"<r8 | no-rank>/mpc-<mpc>/[<variant>/]seed<seed>/metrics.json; give a sweep folder "
                              f"such as outputs/<experiment_name>.")
        for path in files:
            run = read_run(path)
            runs.setdefault((run.model, run.task, run.key, str(run.seed)), []).append(run)
    kept = []
    for copies in runs.values():
        # Keep the completed and newest; the others are listed under the table (a copied sweep folder, or
        # runs of different settings that recorded no variant).
        copies.sort(key=lambda r: (r.status == "completed", r.path.stat().st_mtime), reverse=True)
        copies[0].duplicates = copies[1:]
        kept.append(copies[0])
    return kept


# --- aggregation ------------------------------------------------------------------------------------
@dataclass
class Stat:
    """A central value (mean or median) with its standard error (None from one value, and for the median)
    over n_min..n_max seeds."""

    value: float
    se: float | None
    n_min: int
    n_max: int

    def text(self, extra: str = "") -> str:
        """'85.23 ± 0.41 (5)'; ``extra`` goes inside the parentheses."""
        seeds = str(self.n_min) if self.n_min == self.n_max else f"{self.n_min}-{self.n_max}"
        spread = "" if self.se is None else f" ± {self.se:.2f}"
        return f"{self.value:.2f}{spread} ({seeds}{extra})"


@dataclass
class Cell:
    """The runs of one (row, task): scores of the completed ones, counts of the others, summarised by
    ``statistic`` (a key of STATISTICS)."""

    metric: str
    statistic: str = "mean"
    values: list[float] = field(default_factory=list)
    failed: int = 0
    running: int = 0
    duplicates: int = 0
    degenerate: int = 0  # how many of ``values`` come from runs whose dev predictions were one class / constant

    @property
    def complete(self) -> bool:
        return bool(self.values) and not self.failed and not self.running

    def stat(self) -> Stat | None:
        if not self.values:
            return None
        n = len(self.values)
        if self.statistic == "median":
            return Stat(statistics.median(self.values), None, n, n)
        se = statistics.stdev(self.values) / math.sqrt(n) if n > 1 else None
        return Stat(statistics.fmean(self.values), se, n, n)

    def text(self) -> str:
        stat = self.stat()
        others = ", ".join(f"{count} {name}" for count, name in (
            (self.failed, "failed"), (self.running, "running"),
            (self.duplicates, "duplicate" if self.duplicates == 1 else "duplicates")) if count)
        if stat is None:
            return f"– ({others})"
        marker = f"{DEGENERATE_MARK}{self.degenerate}" if self.degenerate else ""
        return stat.text(f"; {others}" if others else "") + marker


@dataclass
class Row:
    key: RowKey
    per_mille: float | None
    cells: dict[str, Cell]

    def average(self, tasks: list[str]) -> Stat | None:
        """Mean of the task means (or medians), only when every task cell is complete; its SE (means only)
        assumes independent tasks."""
        cells = [self.cells.get(task) for task in tasks]
        if not tasks or not all(cell is not None and cell.complete for cell in cells):
            return None
        stats = [cell.stat() for cell in cells]
        ses = [s.se for s in stats]
        se = None if None in ses else math.sqrt(sum(s * s for s in ses)) / len(ses)
        return Stat(statistics.fmean(s.value for s in stats), se, min(s.n_min for s in stats),
                    max(s.n_max for s in stats))

    def protocols(self, runs: list[RunRecord]) -> list[str]:
        """The protocols recorded by this row's runs (files written before runs recorded one have none)."""
        return sorted({run.protocol for run in runs if run.key == self.key and run.protocol is not None})


@dataclass
class ModelTable:
    """One model's table: its tasks (columns) with their headline metric, and rows; ``statistic`` summarises
    a cell's seeds."""

    model: str
    tasks: list[str]
    metrics: dict[str, str]
    rows: list[Row]
    runs: list[RunRecord]
    statistic: str = "mean"

    def row(self, key: RowKey) -> Row | None:
        return next((row for row in self.rows if row.key == key), None)


def task_order(tasks: Iterable[str]) -> list[str]:
    """GLUE tasks in the paper's column order, then any other task alphabetically."""
    tasks = set(tasks)
    return [t for t in GLUE_TASKS if t in tasks] + sorted(tasks - set(GLUE_TASKS))


def build_tables(runs: list[RunRecord], last: bool = False, budget_lookup: BudgetLookup | None = None,
                 statistic: str = "mean") -> list[ModelTable]:
    """Group runs into one table per model. ``budget_lookup`` supplies per-mille budgets for rows none of whose
    runs recorded one (it is given the model and the (method, rank) pairs); ``statistic``: a key of STATISTICS."""
    if statistic not in STATISTICS:
        raise ReportError(f"unknown statistic {statistic!r}; choose one of: {', '.join(STATISTICS)}.")
    tables = []
    for model in sorted({run.model for run in runs}):
        model_runs = [run for run in runs if run.model == model]
        metrics: dict[str, str] = {}
        cells: dict[RowKey, dict[str, Cell]] = {}
        budgets: dict[RowKey, list[float]] = {}
        for run in model_runs:
            if metrics.setdefault(run.task, run.metric) != run.metric:
                other = next(r for r in model_runs if r.task == run.task and r.metric != run.metric)
                raise ReportError(f"{model} {run.task}: runs score different headline metrics ({run.metric} in "
                                  f"{run.path}, {other.metric} in {other.path}); report them separately.")
            cell = cells.setdefault(run.key, {}).setdefault(run.task, Cell(run.metric, statistic))
            if run.status == "completed":
                cell.values.append(run.score(last))
                cell.degenerate += run.degenerate(last)
            elif run.status == "failed":
                cell.failed += 1
            else:
                cell.running += 1
            cell.duplicates += len(run.duplicates)
            if run.per_mille is not None:
                budgets.setdefault(run.key, []).append(run.per_mille)
        keys = sorted(cells, key=RowKey.sort_key)
        # The closed-form budget is the default settings': not for a variant that changes the method or model.
        unknown = [k for k in keys if k not in budgets and not any(key.startswith(BUDGET_KEYS) for key, _ in k.variant)]
        pairs = list(dict.fromkeys((k.method, k.rank) for k in unknown))
        looked_up = budget_lookup(model, pairs) if pairs and budget_lookup else {}
        rows = [Row(k, statistics.median(budgets[k]) if k in budgets
                    else looked_up.get((k.method, k.rank)) if k in unknown else None, cells[k]) for k in keys]
        tables.append(ModelTable(model, task_order(metrics), metrics, rows, model_runs, statistic))
    return tables


def lookup_budgets(model: str, pairs: list[tuple[str, int | None]]) -> dict[tuple[str, int | None], float]:
    """Closed-form per-mille budgets from ``subspace_tuning.params`` (imports torch; only when needed)."""
    try:
        from .params import table_rows

        rows = table_rows(model, sorted({method for method, _ in pairs}))
    except (SubspaceTuningError, ImportError, OSError):
        return {}  # an unknown model or method: the budget shows as missing
    return {(row["method"], row["rank"]): row["per_mille"] for row in rows}


# --- the paper's numbers -----------------------------------------------------------------------------
@dataclass
class Paper:
    """The published numbers (``paper_results.json``), by model and row."""

    source: str
    rows: dict[str, dict[RowKey, dict[str, Any]]]

    def row(self, model: str, key: RowKey) -> dict[str, Any] | None:
        """The published row of ``key``'s method, rank and MPC; a variant row is compared with it too."""
        return self.rows.get(model, {}).get(key.base)

    def score(self, model: str, key: RowKey, task: str, metric: str) -> float | None:
        row = self.row(model, key)
        if row is None or PAPER_METRICS.get(task) != metric:
            return None
        return row["scores"].get(task)

    def average(self, table: ModelTable, key: RowKey) -> tuple[float | None, bool]:
        """The published average over all 8 tasks, or the mean of the published scores over the subset of them
        in ``table`` (flagged True: computed here from the paper's numbers, to compare like with like). None
        when a task of the table has no published number in the metric it is scored in."""
        scores = [self.score(table.model, key, task, table.metrics[task]) for task in table.tasks]
        if not scores or None in scores:
            return None, False
        if table.tasks == list(GLUE_TASKS):
            return self.row(table.model, key)["avg"], False
        return statistics.fmean(scores), True


def load_paper(path: Path = PAPER_FILE) -> Paper:
    """The published numbers; a clear ReportError when the shipped file cannot be read."""
    try:
        data = json.loads(path.read_text())
        rows = {model: {RowKey(r["method"], r["rank"], r["mpc"]): r for r in table["rows"]}
                for model, table in data["tables"].items()}
        return Paper(data["source"]["citation"], rows)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ReportError(f"the paper's numbers ({path}) cannot be read: {err!r}; reinstall the package.") from None


# --- names of what is written ------------------------------------------------------------------------
def output_suffix(last: bool, statistic: str) -> str:
    """'' for the default report, '_last' / '_median' / '_last_median' otherwise: no option overwrites
    another's files."""
    return ("_last" if last else "") + ("" if statistic == "mean" else f"_{statistic}")
