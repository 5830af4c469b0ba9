"""Aggregate run folders into the paper's tables (and figures).

    python -m subspace_tuning.report outputs/table2_roberta_base            # Markdown, CSV and LaTeX
    python -m subspace_tuning.report outputs/a outputs/b --last --paper      # last-epoch scores, paper beside
    python -m subspace_tuning.report outputs/mini_glue --figures --out docs  # PNG + PDF figures as well

Every ``metrics.json`` below the given folders is one run. Rows are (method, rank, MPC) with their per-mille
parameter budget, columns are the GLUE tasks present (in the paper's order) and their average. A cell is the
mean and standard error over seeds of the best-epoch dev score (``--last``: the last epoch's), in percent, with
the seed count. Failed and running runs are counted and marked in their cell, never averaged in; the average
column is only computed when every task cell of the row is complete. ``--paper`` adds the published numbers
of the paper (``paper_results.json``) and our difference to them under each row.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
MAX_LISTED = 20  # failed runs listed under a table

BudgetLookup = Callable[[str, list[tuple[str, int | None]]], dict[tuple[str, int | None], float]]


class ReportError(SubspaceTuningError):
    """The folders or files given to the report cannot be aggregated."""


# --- reading runs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowKey:
    """One row of a table: a method at a rank (None for rank-free methods) with an MPC variant."""

    method: str
    rank: int | None
    mpc: str

    @property
    def label(self) -> str:
        """The paper's row name: 'LoRA + MPC_o'; AdaLoRA's own regulariser is MPC_o ('AdaLoRA - MPC_o')."""
        name = METHOD_NAMES.get(self.method, self.method)
        if self.method == "adalora":
            return {"none": "AdaLoRA - MPC_o", "o": name}.get(self.mpc, f"{name} - MPC_o + MPC_{self.mpc}")
        return name if self.mpc == "none" else f"{name} + MPC_{self.mpc}"

    def sort_key(self) -> tuple[Any, ...]:
        method = METHOD_ORDER.index(self.method) if self.method in METHOD_ORDER else len(METHOD_ORDER)
        mpc = MPC_ORDER.index(self.mpc) if self.mpc in MPC_ORDER else len(MPC_ORDER)
        return (self.rank is not None, self.rank or 0, method, self.method, mpc, self.mpc)


@dataclass
class RunRecord:
    """What the report needs from one ``metrics.json``; scores in percent."""

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


def read_run(path: Path) -> RunRecord:
    """Read one ``metrics.json``; a clear ReportError names the file when it is not a readable run record."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror or err}.") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}). A run "
                          f"always writes it whole, so it was edited or copied partly; rerun that run or remove "
                          f"its folder.") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a run record (a JSON object).")
    missing = [k for k in ("status", "model", "task", "method", "mpc", "seed", "metric") if k not in data]
    if missing:
        raise ReportError(f"{path} is not a run record: it has no {', '.join(map(repr, missing))}.")
    if data["status"] not in STATUSES:
        raise ReportError(f"{path} has status {data['status']!r}; expected one of {', '.join(STATUSES)}.")
    rank = data.get("rank")
    params = data.get("parameters") or {}
    return RunRecord(path=path, model=str(data["model"]), task=str(data["task"]),
                     key=RowKey(str(data["method"]), None if rank is None else int(rank), str(data["mpc"])),
                     seed=data["seed"], status=data["status"], metric=str(data["metric"]),
                     best=_headline(path, data, "best"), last=_headline(path, data, "last"),
                     per_mille=params.get("per_mille"), error=data.get("error"))


def find_runs(folders: Iterable[Path]) -> tuple[list[RunRecord], list[str]]:
    """Every run below ``folders`` and notes about what was left out (duplicates of a run)."""
    runs: dict[tuple[Any, ...], list[RunRecord]] = {}
    for folder in folders:
        if not folder.exists():
            raise ReportError(f"no such folder: {folder}")
        files = [folder] if folder.is_file() else sorted(folder.rglob("metrics.json"))
        if not files:
            raise ReportError(f"found no metrics.json under {folder}. A run writes <sweep>/<model>/<task>/<method>/"
                              f"<r8 | no-rank>/mpc-<mpc>/seed<seed>/metrics.json; give a sweep folder such as "
                              f"outputs/<experiment_name>.")
        for path in files:
            run = read_run(path)
            runs.setdefault((run.model, run.task, run.key, str(run.seed)), []).append(run)
    kept, notes = [], []
    for copies in runs.values():
        # The same run in two folders would count one seed twice: keep one, the completed and newest.
        copies.sort(key=lambda r: (r.status == "completed", r.path.stat().st_mtime), reverse=True)
        kept.append(copies[0])
        if len(copies) > 1:
            notes.append(f"{len(copies)} records of one run; used {copies[0].path}, left out "
                         + ", ".join(str(c.path) for c in copies[1:]))
    return kept, notes


# --- aggregation ------------------------------------------------------------------------------------
@dataclass
class Stat:
    """A mean with its standard error (None from one value) over n_min..n_max seeds."""

    mean: float
    se: float | None
    n_min: int
    n_max: int

    def text(self, extra: str = "") -> str:
        """'85.23 ± 0.41 (5)'; ``extra`` goes inside the parentheses."""
        seeds = str(self.n_min) if self.n_min == self.n_max else f"{self.n_min}-{self.n_max}"
        spread = "" if self.se is None else f" ± {self.se:.2f}"
        return f"{self.mean:.2f}{spread} ({seeds}{extra})"


@dataclass
class Cell:
    """The runs of one (row, task): scores of the completed ones, counts of the others."""

    metric: str
    values: list[float] = field(default_factory=list)
    failed: int = 0
    running: int = 0

    @property
    def complete(self) -> bool:
        return bool(self.values) and not self.failed and not self.running

    def stat(self) -> Stat | None:
        if not self.values:
            return None
        n = len(self.values)
        se = statistics.stdev(self.values) / math.sqrt(n) if n > 1 else None
        return Stat(statistics.fmean(self.values), se, n, n)

    def text(self) -> str:
        stat = self.stat()
        others = ", ".join(f"{count} {name}" for count, name in ((self.failed, "failed"), (self.running, "running"))
                           if count)
        if stat is None:
            return f"– ({others})"
        return stat.text(f"; {others}" if others else "")


@dataclass
class Row:
    key: RowKey
    per_mille: float | None
    cells: dict[str, Cell]

    def average(self, tasks: list[str]) -> Stat | None:
        """Mean of the task means, only when every task cell is complete; its SE assumes independent tasks."""
        cells = [self.cells.get(task) for task in tasks]
        if not tasks or not all(cell is not None and cell.complete for cell in cells):
            return None
        stats = [cell.stat() for cell in cells]
        ses = [s.se for s in stats]
        se = None if None in ses else math.sqrt(sum(s * s for s in ses)) / len(ses)
        return Stat(statistics.fmean(s.mean for s in stats), se, min(s.n_min for s in stats),
                    max(s.n_max for s in stats))


@dataclass
class ModelTable:
    """One model's table: its tasks (columns) with their headline metric, and rows."""

    model: str
    tasks: list[str]
    metrics: dict[str, str]
    rows: list[Row]
    runs: list[RunRecord]

    def row(self, key: RowKey) -> Row | None:
        return next((row for row in self.rows if row.key == key), None)


def task_order(tasks: Iterable[str]) -> list[str]:
    """GLUE tasks in the paper's column order, then any other task alphabetically."""
    tasks = set(tasks)
    return [t for t in GLUE_TASKS if t in tasks] + sorted(tasks - set(GLUE_TASKS))


def build_tables(runs: list[RunRecord], last: bool = False,
                 budget_lookup: BudgetLookup | None = None) -> list[ModelTable]:
    """Group runs into one table per model. ``budget_lookup`` supplies per-mille budgets for rows none of whose
    runs recorded one (it is given the model and the (method, rank) pairs)."""
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
            cell = cells.setdefault(run.key, {}).setdefault(run.task, Cell(run.metric))
            if run.status == "completed":
                cell.values.append(run.score(last))
            elif run.status == "failed":
                cell.failed += 1
            else:
                cell.running += 1
            if run.per_mille is not None:
                budgets.setdefault(run.key, []).append(float(run.per_mille))
        keys = sorted(cells, key=RowKey.sort_key)
        unknown = [(k.method, k.rank) for k in keys if k not in budgets]
        looked_up = budget_lookup(model, unknown) if unknown and budget_lookup else {}
        rows = [Row(k, statistics.median(budgets[k]) if k in budgets else looked_up.get((k.method, k.rank)),
                    cells[k]) for k in keys]
        tables.append(ModelTable(model, task_order(metrics), metrics, rows, model_runs))
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
        return self.rows.get(model, {}).get(key)

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
            return self.rows[table.model][key]["avg"], False
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
        diffs.append("–" if value is None or stat is None else diff_text(stat.mean, value))
    avg, computed = paper.average(table, row.key)
    ours = row.average(table.tasks)
    published.append(NO_PAPER if avg is None else f"{avg:.2f}" + ("*" if computed else ""))
    diffs.append("–" if avg is None or ours is None else diff_text(ours.mean, avg))
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


def run_summary(table: ModelTable) -> list[str]:
    """How many runs completed, failed and are running, and which failed with what error."""
    counts = {status: sum(run.status == status for run in table.runs) for status in STATUSES}
    lines = [f"Runs: {counts['completed']} completed, {counts['failed']} failed, {counts['running']} running "
             f"(failed and running runs are marked in their cell and never averaged)."]
    failed = [run for run in table.runs if run.status == "failed"]
    for run in failed[:MAX_LISTED]:
        error = ((run.error or "").strip().splitlines() or ["no error recorded"])[0][:160]
        lines.append(f"- failed: {run.task} {run.key.label} r={rank_text(run.key.rank)} seed {run.seed}: {error} "
                     f"({run.path})")
    if len(failed) > MAX_LISTED:
        lines.append(f"- ... and {len(failed) - MAX_LISTED} more failed runs")
    return lines


def legend(last: bool) -> str:
    epoch = "last-epoch" if last else "best-epoch"
    return (f"Dev-set {epoch} scores in %, mean ± standard error over seeds (number of seeds); '–' no run, "
            f"'(k failed)' / '(k running)' runs left out of the mean (a killed run stays 'running'). ‰Params: "
            f"trainable parameters per mille of all model parameters. Avg: mean over the tasks shown, only where "
            f"every task cell is complete.")


def to_markdown(tables: list[ModelTable], last: bool, paper: Paper | None, notes: list[str]) -> str:
    out = [f"# Results ({'last' if last else 'best'} epoch)", "", legend(last)]
    if paper is not None:
        out += ["", f"Paper rows (↳ paper): {paper.source} Difference rows (↳ ours − paper): our mean minus the "
                    f"published number."]
    for table in tables:
        header, body, footnotes = table_lines(table, paper)
        out += ["", f"## {table.model}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join(" --- " for _ in header) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in body]
        out += [""] + footnotes + ([""] if footnotes else []) + run_summary(table)
    if notes:
        out += ["", "Notes:"] + [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def to_csv(tables: list[ModelTable], last: bool, paper: Paper | None) -> str:
    """One line per row, the paper's layout: per task the mean, standard error, seed count and the number of
    failed / running runs; with ``paper`` the published number and our difference."""
    tasks = task_order(t for table in tables for t in table.tasks)
    columns = ["model", "epoch", "method", "label", "rank", "mpc", "per_mille"]
    for task in [*tasks, "avg"]:
        columns += [f"{task}_{k}" for k in ("mean", "se", "n")]
        columns += [f"{task}_{k}" for k in ("failed", "running")] if task != "avg" else []
        columns += [f"{task}_{k}" for k in ("paper", "diff")] if paper is not None else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for row in table.rows:
            line: dict[str, Any] = {"model": table.model, "epoch": "last" if last else "best", "method": row.key.method,
                                    "label": row.key.label, "rank": "" if row.key.rank is None else row.key.rank,
                                    "mpc": row.key.mpc, "per_mille": _number(row.per_mille)}
            stats = {t: row.cells[t].stat() if t in row.cells else None for t in table.tasks}
            stats["avg"] = row.average(table.tasks)
            for task, stat in stats.items():
                line |= {f"{task}_mean": _number(stat and stat.mean), f"{task}_se": _number(stat and stat.se),
                         f"{task}_n": "" if stat is None else stat.n_min}
                if task in row.cells:
                    line |= {f"{task}_failed": row.cells[task].failed, f"{task}_running": row.cells[task].running}
                if paper is not None:
                    if task == "avg":
                        value = paper.average(table, row.key)[0]
                    else:
                        value = paper.score(table.model, row.key, task, table.metrics[task])
                    line |= {f"{task}_paper": _number(value),
                             f"{task}_diff": _number(None if value is None or stat is None else stat.mean - value)}
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
    out = [f"% Generated by python -m subspace_tuning.report. {latex_escape(legend(last))}"]
    for table in tables:
        header, body, footnotes = table_lines(table, paper)
        out += ["\\begin{table*}[t]", "\\centering",
                f"\\caption{{{latex_escape(table.model)}: GLUE dev {'last' if last else 'best'}-epoch scores "
                f"(\\%), mean $\\pm$ standard error over seeds (seeds).}}",
                f"\\label{{tab:{table.model}{'-last' if last else ''}}}",
                "\\resizebox{\\textwidth}{!}{%",
                "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\toprule",
                " & ".join(latex_escape(h) for h in header) + " \\\\", "\\midrule"]
        out += [" & ".join(latex_escape(c) for c in cells) + " \\\\" for cells in body]
        out += ["\\bottomrule", "\\end{tabular}}"]
        out += [f"\\par\\footnotesize {latex_escape(note)}" for note in footnotes]
        out += ["\\end{table*}", ""]
    return "\n".join(out)


def write_reports(tables: list[ModelTable], out_dir: Path, formats: list[str], last: bool, paper: Paper | None,
                  notes: list[str]) -> tuple[str, list[Path]]:
    """Write the requested formats into ``out_dir``; returns the Markdown text and the files written."""
    markdown = to_markdown(tables, last, paper, notes)
    texts = {"md": lambda: markdown, "csv": lambda: to_csv(tables, last, paper),
             "tex": lambda: to_latex(tables, last, paper)}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "report_last" if last else "report"
    written = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        path.write_text(texts[fmt]())
        written.append(path)
    return markdown, written


# --- command line -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m subspace_tuning.report", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders (searched recursively for metrics.json)")
    parser.add_argument("--last", action="store_true", help="last-epoch scores instead of the best epoch's")
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
        runs, notes = find_runs(args.folders)
        tables = build_tables(runs, args.last, None if args.no_param_lookup else lookup_budgets)
        paper = load_paper() if args.paper else None
        out_dir = args.out or (args.folders[0] if args.folders[0].is_dir() else args.folders[0].parent)
        markdown, written = write_reports(tables, out_dir, formats, args.last, paper, notes)
        figures = []
        if args.figures:
            from .figures import write_figures

            figures = write_figures(tables, out_dir / "figures", paper, args.last)
    except SubspaceTuningError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(markdown)
    print("wrote " + ", ".join(str(path) for path in written))
    if args.figures:
        print("\n".join(f"figure {line}" for line in figures) or "no figure: no row has a complete average")


if __name__ == "__main__":
    # Run the package's copy of this module: under ``python -m`` this file is __main__, and figures.py imports
    # subspace_tuning.report, whose classes would otherwise differ from these (RowKey equality would fail).
    from subspace_tuning.report import main as package_main

    package_main()
