"""Aggregate run folders into the paper's tables (and figures).

    python -m subspace_tuning.report outputs/table2_roberta_base            # Markdown, CSV and LaTeX
    python -m subspace_tuning.report outputs/a outputs/b --last --paper      # last-epoch scores, paper beside
    python -m subspace_tuning.report outputs/mini_glue --figures --out docs  # PNG + PDF figures as well

Every ``metrics.json`` below the given folders is one run. Rows are (method, rank, MPC, variant) with their
per-mille parameter budget, columns are the GLUE tasks present (in the paper's order) and their average. The
variant is the settings a run changed on the command line (``optim.lr=1e-3``; recorded in ``metrics.json``),
so runs of different configurations are never averaged together: each variant is a row of its own. A cell is
the mean and standard error over seeds of the best-epoch dev score (``--last``: the last epoch's), in percent,
with the seed count; ``--stat median`` gives the median over seeds instead (the average column is then the mean
of the task medians). Failed and running runs are counted and marked in their cell, never averaged in; the
average column is only computed when every task cell of the row is complete. Two records of one run (the same
row, task and seed, e.g. a sweep folder copied twice) are never averaged: one is used, the others are listed
under the table. ``--paper`` adds the published numbers of the paper (``paper_results.json``) and our
difference to them under each row.

Only the standard library is imported here, so the command starts at once; matplotlib is imported for
``--figures`` only, and the parameter-budget fallback (rows without any run that recorded its budget)
imports torch lazily through ``subspace_tuning.params``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from .errors import SubspaceTuningError

GLUE_TASKS = ("mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb")
TASK_TITLES = {"mnli": "MNLI", "sst2": "SST-2", "cola": "CoLA", "qqp": "QQP", "qnli": "QNLI", "rte": "RTE",
               "mrpc": "MRPC", "stsb": "STS-B"}
METRIC_TITLES = {"accuracy": "Acc", "matthews": "Mcc", "pearson": "Pearson", "spearman": "Spearman", "f1": "F1"}
# The paper's headline metric per task; a cell scored otherwise is not compared with it.
PAPER_METRICS = {"mnli": "accuracy", "sst2": "accuracy", "cola": "matthews", "qqp": "accuracy", "qnli": "accuracy",
                 "rte": "accuracy", "mrpc": "accuracy", "stsb": "pearson"}
# Row order of the paper's tables: rank-free rows first, then each rank block in this method order.
METHOD_ORDER = ("full", "sam_parser", "ia3", "ssl", "ssb", "bitfit", "prompt_tuning", "prefix_tuning",
                "hadapter", "padapter", "pa", "lora", "trilora", "adalora", "flora", "dora", "vera", "lotr",
                "spectral_adapter", "svdiff")
MPC_ORDER = ("none", "o", "d", "n")
METHOD_NAMES = {"full": "Fully FT", "sam_parser": "SAM-PARSER", "ia3": "(IA)3", "ssl": "SSL", "ssb": "SSB",
                "bitfit": "BitFit", "prompt_tuning": "Prompt tuning", "prefix_tuning": "Prefix tuning",
                "hadapter": "HAdapter", "padapter": "PAdapter", "pa": "PA", "lora": "LoRA", "trilora": "TriLoRA",
                "adalora": "AdaLoRA", "flora": "FLoRA", "dora": "DoRA", "vera": "VeRA", "lotr": "LoTR",
                "spectral_adapter": "Spectral Adapter", "svdiff": "SVDiff"}
STATUSES = ("completed", "failed", "running")
NO_PAPER = "no published number"
PAPER_FILE = Path(__file__).with_name("paper_results.json")
FORMATS = ("md", "csv", "tex")
# What a cell shows: the mean with its standard error (the default), or the median that some peers report.
STATISTICS = {"mean": "mean ± standard error over seeds", "median": "median over seeds"}
MAX_LISTED = 20  # failed runs (and duplicate records) listed under a table
# Variant settings that can change a method's parameter count: a row with one gets no looked-up budget.
BUDGET_KEYS = ("method.", "model.")

BudgetLookup = Callable[[str, list[tuple[str, int | None]]], dict[tuple[str, int | None], float]]
Variant = tuple[tuple[str, str], ...]


class ReportError(SubspaceTuningError):
    """The folders or files given to the report cannot be aggregated."""


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
        name = METHOD_NAMES.get(self.method, self.method)
        if self.method == "adalora":
            name = {"none": "AdaLoRA - MPC_o", "o": name}.get(self.mpc, f"{name} - MPC_o + MPC_{self.mpc}")
        elif self.mpc != "none":
            name = f"{name} + MPC_{self.mpc}"
        return f"{name} [{self.variant_text}]" if self.variant else name

    def sort_key(self) -> tuple[Any, ...]:
        method = METHOD_ORDER.index(self.method) if self.method in METHOD_ORDER else len(METHOD_ORDER)
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

    def score(self, last: bool) -> float | None:
        return self.last if last else self.best


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
                     fingerprint=data.get("config_fingerprint"))


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
        return stat.text(f"; {others}" if others else "")


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
    try:
        data = json.loads(path.read_text())
        rows = {model: {RowKey(r["method"], r["rank"], r["mpc"]): r for r in table["rows"]}
                for model, table in data["tables"].items()}
        return Paper(data["source"]["citation"], rows)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ReportError(f"the paper's numbers ({path}) cannot be read: {err!r}; reinstall the package.") from None


# --- output ---------------------------------------------------------------------------------------------
def diff_text(ours: float, published: float) -> str:
    """'+0.41' / '-2.39'; a difference that rounds to zero is '+0.00', never '-0.00'."""
    return f"{(round(ours - published, 2) or 0.0):+.2f}"


def budget_text(per_mille: float | None) -> str:
    return "–" if per_mille is None else f"{per_mille:.2f}"


def rank_text(rank: int | None) -> str:
    return "–" if rank is None else str(rank)


def paper_cells(table: ModelTable, row: Row, paper: Paper) -> tuple[list[str], list[str], bool]:
    """Texts of the paper row and the difference row under ``row`` (task cells, then the average), and
    whether the average is a subset mean computed here."""
    published, diffs = [], []
    for task in table.tasks:
        value = paper.score(table.model, row.key, task, table.metrics[task])
        stat = row.cells[task].stat() if task in row.cells else None
        published.append(NO_PAPER if value is None else f"{value:.2f}")
        diffs.append("–" if value is None or stat is None else diff_text(stat.value, value))
    avg, computed = paper.average(table, row.key)
    ours = row.average(table.tasks)
    published.append(NO_PAPER if avg is None else f"{avg:.2f}" + ("*" if computed else ""))
    diffs.append("–" if avg is None or ours is None else diff_text(ours.value, avg))
    return published, diffs, computed


def table_lines(table: ModelTable, paper: Paper | None) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body rows (lists of cell texts) and footnotes of one model's table."""
    header = ["Method", "r", "‰Params"] + [
        f"{TASK_TITLES.get(t, t)} ({METRIC_TITLES.get(table.metrics[t], table.metrics[t])})" for t in table.tasks
    ] + ["Avg"]
    has_paper = paper is not None and table.model in paper.rows
    body, computed_any = [], False
    for row in table.rows:
        avg = row.average(table.tasks)
        body.append([row.key.label, rank_text(row.key.rank), budget_text(row.per_mille)]
                    + [row.cells[t].text() if t in row.cells else "–" for t in table.tasks]
                    + [avg.text() if avg else "incomplete"])
        if has_paper:
            published, diffs, computed = paper_cells(table, row, paper)
            computed_any |= computed
            paper_row = paper.row(table.model, row.key)
            body.append(["↳ paper", "", budget_text(paper_row["per_mille"]) if paper_row else ""] + published)
            body.append(["↳ ours − paper", "", ""] + diffs)
    notes = []
    if paper is not None and not has_paper:
        notes.append(f"{NO_PAPER} for {table.model}: the paper's GLUE tables cover "
                     f"{', '.join(paper.rows)}.")
    if computed_any:
        notes.append("* the paper's average over the tasks shown, computed from its per-task numbers "
                     "(its printed average covers all 8 tasks).")
    return header, body, notes


def _run_name(run: RunRecord) -> str:
    return f"{run.task} {run.key.label} r={rank_text(run.key.rank)} seed {run.seed}"


def _listed(kind: str, lines: list[str]) -> list[str]:
    """At most MAX_LISTED of ``lines``, then a count of the rest."""
    more = [f"- ... and {len(lines) - MAX_LISTED} more {kind}"] if len(lines) > MAX_LISTED else []
    return lines[:MAX_LISTED] + more


def duplicate_line(run: RunRecord) -> str:
    """'- duplicate: <run>: 2 records, used <path>; left out <paths> (<whether the configurations agree>)'."""
    fingerprints = {r.fingerprint for r in (run, *run.duplicates)}
    if None in fingerprints:
        why = ""
    elif len(fingerprints) == 1:
        why = " (the same configuration: copies of one run)"
    else:
        why = (" (different configurations: their config fingerprints differ; runs that record their variant never "
               "collide, so rerun them or report the folders separately)")
    return (f"- duplicate: {_run_name(run)}: {1 + len(run.duplicates)} records, used {run.path}; left out "
            f"{', '.join(str(r.path) for r in run.duplicates)}{why}")


def run_summary(table: ModelTable) -> list[str]:
    """How many runs completed, failed and are running, which failed with what error, the duplicate records
    left out, and rows whose runs recorded different protocols."""
    counts = {status: sum(run.status == status for run in table.runs) for status in STATUSES}
    duplicated = [run for run in table.runs if run.duplicates]
    left_out = sum(len(run.duplicates) for run in duplicated)
    lines = [f"Runs: {counts['completed']} completed, {counts['failed']} failed, {counts['running']} running"
             + (f", {left_out} duplicate records left out" if left_out else "")
             + " (failed and running runs are marked in their cell and never averaged)."]
    lines += _listed("failed runs", [
        f"- failed: {_run_name(run)}: "
        f"{((run.error or '').strip().splitlines() or ['no error recorded'])[0][:160]} ({run.path})"
        for run in table.runs if run.status == "failed"])
    lines += _listed("duplicate records", [duplicate_line(run) for run in duplicated])
    for row in table.rows:
        protocols = row.protocols(table.runs)
        if len(protocols) > 1:  # an experiment's own protocol is not a command-line variant
            lines.append(f"- mixed protocols: {row.key.label} r={rank_text(row.key.rank)} averages runs of the "
                         f"{', '.join(protocols)} protocols; report those sweeps separately.")
    return lines


def legend(last: bool, statistic: str = "mean") -> str:
    epoch = "last-epoch" if last else "best-epoch"
    average = "mean over the tasks shown" if statistic == "mean" else "mean of the task medians"
    return (f"Dev-set {epoch} scores in %, {STATISTICS[statistic]} (number of seeds); '–' no run, "
            f"'(k failed)' / '(k running)' runs left out of the {statistic} (a killed run stays 'running'), "
            f"'(k duplicate)' further records of one run, left out and listed under the table. ‰Params: "
            f"trainable parameters per mille of all model parameters. Avg: {average}, only where "
            f"every task cell is complete. A row label's [key=value] are settings its runs changed on the command "
            f"line.")


def _statistic(tables: list[ModelTable]) -> str:
    return tables[0].statistic if tables else "mean"


def to_markdown(tables: list[ModelTable], last: bool, paper: Paper | None) -> str:
    statistic = _statistic(tables)
    title = f"{'last' if last else 'best'} epoch" + ("" if statistic == "mean" else f", {STATISTICS[statistic]}")
    out = [f"# Results ({title})", "", legend(last, statistic)]
    if paper is not None:
        out += ["", f"Paper rows (↳ paper): {paper.source} Difference rows (↳ ours − paper): our {statistic} minus "
                    f"the published number."]
    for table in tables:
        header, body, footnotes = table_lines(table, paper)
        out += ["", f"## {table.model}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join(" --- " for _ in header) + "|"]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in body]
        out += [""] + footnotes + ([""] if footnotes else []) + run_summary(table)
    return "\n".join(out) + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def to_csv(tables: list[ModelTable], last: bool, paper: Paper | None) -> str:
    """One line per row, the paper's layout: per task the mean and standard error (or the median), the seed
    count and the number of failed / running runs and duplicate records; with ``paper`` the published number
    and our difference."""
    statistic = _statistic(tables)
    values = ("mean", "se", "n") if statistic == "mean" else ("median", "n")
    tasks = task_order(t for table in tables for t in table.tasks)
    columns = ["model", "epoch", "statistic", "method", "label", "rank", "mpc", "variant", "protocol", "per_mille"]
    for task in [*tasks, "avg"]:
        columns += [f"{task}_{k}" for k in values]
        columns += [f"{task}_{k}" for k in ("failed", "running", "duplicates")] if task != "avg" else []
        columns += [f"{task}_{k}" for k in ("paper", "diff")] if paper is not None else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for row in table.rows:
            line: dict[str, Any] = {
                "model": table.model, "epoch": "last" if last else "best", "statistic": statistic,
                "method": row.key.method, "label": row.key.label, "rank": "" if row.key.rank is None else row.key.rank,
                "mpc": row.key.mpc, "variant": row.key.variant_text, "protocol": "+".join(row.protocols(table.runs)),
                "per_mille": _number(row.per_mille)}
            stats = {t: row.cells[t].stat() if t in row.cells else None for t in table.tasks}
            stats["avg"] = row.average(table.tasks)
            for task, stat in stats.items():
                line |= {f"{task}_{statistic}": _number(stat and stat.value), f"{task}_n": "" if stat is None
                         else stat.n_min}
                if statistic == "mean":
                    line[f"{task}_se"] = _number(stat and stat.se)
                if task in row.cells:
                    cell = row.cells[task]
                    line |= {f"{task}_failed": cell.failed, f"{task}_running": cell.running,
                             f"{task}_duplicates": cell.duplicates}
                if paper is not None:
                    if task == "avg":
                        value = paper.average(table, row.key)[0]
                    else:
                        value = paper.score(table.model, row.key, task, table.metrics[task])
                    line |= {f"{task}_paper": _number(value),
                             f"{task}_diff": _number(None if value is None or stat is None else stat.value - value)}
            writer.writerow(line)
    return buffer.getvalue()


LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                 "±": r"$\pm$", "–": "--", "−": "$-$", "‰": r"\textperthousand{}", "↳": r"$\hookrightarrow$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters; 'MPC_o' becomes MPC with a subscript o."""
    escaped = "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)
    return re.sub(r"MPC\\_(\w)", r"MPC$_\1$", escaped)


def to_latex(tables: list[ModelTable], last: bool, paper: Paper | None) -> str:
    """One booktabs table per model (needs \\usepackage{booktabs,graphicx,textcomp})."""
    statistic = _statistic(tables)
    what = {"mean": "mean $\\pm$ standard error over seeds (seeds)",
            "median": "median over seeds (seeds); Avg: mean of the task medians"}[statistic]
    out = [f"% Generated by python -m subspace_tuning.report. {latex_escape(legend(last, statistic))}"]
    for table in tables:
        header, body, footnotes = table_lines(table, paper)
        out += ["\\begin{table*}[t]", "\\centering",
                f"\\caption{{{latex_escape(table.model)}: GLUE dev {'last' if last else 'best'}-epoch scores "
                f"(\\%), {what}.}}",
                f"\\label{{tab:{table.model}{output_suffix(last, statistic).replace('_', '-')}}}",
                "\\resizebox{\\textwidth}{!}{%",
                "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\toprule",
                " & ".join(latex_escape(h) for h in header) + " \\\\", "\\midrule"]
        out += [" & ".join(latex_escape(c) for c in cells) + " \\\\" for cells in body]
        out += ["\\bottomrule", "\\end{tabular}}"]
        out += [f"\\par\\footnotesize {latex_escape(note)}" for note in footnotes]
        out += ["\\end{table*}", ""]
    return "\n".join(out)


def output_suffix(last: bool, statistic: str) -> str:
    """'' for the default report, '_last' / '_median' / '_last_median' otherwise: no option overwrites
    another's files."""
    return ("_last" if last else "") + ("" if statistic == "mean" else f"_{statistic}")


def write_reports(tables: list[ModelTable], out_dir: Path, formats: list[str], last: bool,
                  paper: Paper | None) -> tuple[str, list[Path]]:
    """Write the requested formats into ``out_dir``; returns the Markdown text and the files written."""
    markdown = to_markdown(tables, last, paper)
    texts = {"md": lambda: markdown, "csv": lambda: to_csv(tables, last, paper),
             "tex": lambda: to_latex(tables, last, paper)}
    stem = "report" + output_suffix(last, _statistic(tables))
    written = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(texts[fmt]())
        except OSError as err:
            raise ReportError(f"cannot write {path}: {err.strerror or err}; choose another folder with --out.") \
                from None
        written.append(path)
    return markdown, written


# --- command line -----------------------------------------------------------------------------------------
# The conventions of the small command-line tools (report, bench: argparse; params, export: key=value). They
# live here because this module imports only the standard library, so every tool can use them cheaply.
class UsageError(SubspaceTuningError):
    """A command line a tool does not accept: an unknown or missing argument."""


def fail(err: object, code: int = 2) -> NoReturn:
    """Print ``error: <err>`` (one paragraph) on stderr and exit with ``code``."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(code)


def one_line(text: str) -> str:
    return " ".join(text.split())


def examples(doc: str) -> str:
    """The example command lines of a module docstring (its lines that start with 'python -m ')."""
    return "\n".join(line for line in doc.splitlines() if line.strip().startswith("python -m "))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose ``--help`` ends with the module docstring's examples, and whose parse errors are one
    paragraph on stderr: 'error: <what>; usage: <the accepted arguments>; see --help', exit status 2."""

    def __init__(self, prog: str, doc: str) -> None:
        super().__init__(prog=prog, description=doc.split("\n\n")[0], epilog="examples:\n" + examples(doc),
                         formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; {one_line(self.format_usage())}; see {self.prog} --help")


OPTION_KEY = re.compile(r"[A-Za-z_][\w.]*")


def key_value_args(argv: list[str], usage: str, doc: str, keys: Collection[str],
                   positional: bool = False) -> tuple[list[str], dict[str, str]]:
    """Split a key=value command line (params, export) into positional arguments and settings.

    ``-h`` / ``--help`` prints ``usage`` and ``doc`` and exits 0. A ``key=value`` whose key is not in ``keys``,
    a key given twice, an option (``-x``) or, without ``positional``, any other word is a UsageError naming it.
    A positional argument may contain '=' (a run folder of a variant, ``.../optim.lr=0.001/seed0``).
    """
    if "-h" in argv or "--help" in argv:
        print(f"{usage}\n\n{doc.strip()}")
        sys.exit(0)
    accepted = f"{usage}; see --help"
    positionals: list[str] = []
    options: dict[str, str] = {}
    for arg in argv:
        key, equals, value = arg.partition("=")
        if equals and key in keys:
            if key in options:
                raise UsageError(f"{key}= is given twice ({key}={options[key]}, {arg}); {accepted}")
            options[key] = value
        elif equals and OPTION_KEY.fullmatch(key) and "/" not in arg and not Path(arg).exists():
            raise UsageError(f"unknown setting {arg!r}: {key!r} is not one of {', '.join(keys)}; {accepted}")
        elif arg.startswith("-") or not positional:
            raise UsageError(f"unknown argument {arg!r}; {accepted}")
        else:
            positionals.append(arg)
    return positionals, options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("python -m subspace_tuning.report", __doc__)
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders (searched recursively for metrics.json)")
    parser.add_argument("--last", action="store_true", help="last-epoch scores instead of the best epoch's")
    parser.add_argument("--stat", choices=tuple(STATISTICS), default="mean",
                        help="what a cell shows: mean ± standard error over seeds (default), or the median over "
                             "seeds (the average column is then the mean of the task medians)")
    parser.add_argument("--paper", action="store_true", help="the paper's published numbers beside ours")
    parser.add_argument("--out", type=Path, help="where to write (default: the first folder)")
    parser.add_argument("--format", default=",".join(FORMATS), help="comma-separated: md, csv, tex (default: all)")
    parser.add_argument("--figures", action="store_true", help="also write PNG and PDF figures to <out>/figures")
    parser.add_argument("--no-param-lookup", action="store_true",
                        help="do not compute budgets of rows whose runs recorded none (that imports torch)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; errors are one paragraph on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        formats = [f.strip() for f in args.format.split(",") if f.strip()]
        if not formats or set(formats) - set(FORMATS):
            raise ReportError(f"unknown --format {args.format!r}; choose from {', '.join(FORMATS)} "
                              f"(comma-separated).")
        runs = find_runs(args.folders)
        tables = build_tables(runs, args.last, None if args.no_param_lookup else lookup_budgets, args.stat)
        paper = load_paper() if args.paper else None
        out_dir = args.out or (args.folders[0] if args.folders[0].is_dir() else args.folders[0].parent)
        markdown, written = write_reports(tables, out_dir, formats, args.last, paper)
        figures = []
        if args.figures:
            from .figures import write_figures

            figures = write_figures(tables, out_dir / "figures", paper, args.last)
    except SubspaceTuningError as err:
        fail(err)
    print(markdown)
    print("wrote " + ", ".join(str(path) for path in written))
    if args.figures:
        print("\n".join(f"figure {line}" for line in figures) or "no figure: no row has a complete average")


if __name__ == "__main__":
    # Run the package's copy of this module: under ``python -m`` this file is __main__, and figures.py imports
    # subspace_tuning.report, whose classes would otherwise differ from these (RowKey equality would fail).
    from subspace_tuning.report import main as package_main

    package_main()
