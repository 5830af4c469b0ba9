"""The paper's tables (and figures) of a set of run folders: Markdown, CSV and LaTeX.

    python -m subspace_tuning.report outputs/table2_roberta_base            # Markdown, CSV and LaTeX
    python -m subspace_tuning.report outputs/a outputs/b --last --paper      # last-epoch scores, paper beside
    python -m subspace_tuning.report outputs/mini_glue --figures --out docs  # PNG + PDF figures as well

Every ``metrics.json`` below the given folders is one run. Rows are (method, rank, MPC, variant) with their
per-mille parameter budget, columns are the GLUE tasks present (in the paper's order) and their average. The
variant is the settings a run changed on the command line (``optim.lr=1e-3``; recorded in ``metrics.json``), so
runs of different configurations are never averaged together: each variant is a row of its own. A cell is the mean
and standard error over seeds of the best-epoch dev score (``--last``: the last epoch's), in percent, with the seed
count, and ``†k`` when k of those runs were degenerate (every dev prediction one class, or constant: the trivial
baseline's score; counted and listed under the table); ``--stat median`` gives the median over seeds instead (the
average column is then the mean of the task medians). Failed and running runs are counted and marked in their cell,
never averaged in; the average column is only computed when every task cell of the row is complete. Two records of
one run (the same row, task and seed, e.g. a sweep folder copied twice) are never averaged: one is used, the others
are listed under the table. ``--paper`` adds the published numbers of the paper (``paper_results.json``) and our
difference to them under each row.

This module renders the tables; ``subspace_tuning.results`` reads and aggregates the runs and holds the paper's
numbers, ``subspace_tuning.figures`` draws the figures (matplotlib, imported for ``--figures`` only). Importing
this module imports only the standard library, so ``--help`` answers at once; labelling and ordering the rows
reads the method classes (torch), and the parameter-budget fallback (rows without any run that recorded its
budget) builds the models on the meta device through ``subspace_tuning.params``.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path
from typing import Any

from .cli import ArgumentParser, fail
from .errors import SubspaceTuningError
from .results import (
    DEGENERATE_MARK,
    STATISTICS,
    STATUSES,
    ModelTable,
    Paper,
    ReportError,
    Row,
    RunRecord,
    build_tables,
    find_runs,
    load_paper,
    lookup_budgets,
    output_suffix,
    task_order,
)

TASK_TITLES = {"mnli": "MNLI", "sst2": "SST-2", "cola": "CoLA", "qqp": "QQP", "qnli": "QNLI", "rte": "RTE",
               "mrpc": "MRPC", "stsb": "STS-B"}
METRIC_TITLES = {"accuracy": "Acc", "matthews": "Mcc", "pearson": "Pearson", "spearman": "Spearman", "f1": "F1"}
NO_PAPER = "no published number"
FORMATS = ("md", "csv", "tex")
MAX_LISTED = 20  # failed runs (and duplicate records) listed under a table


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


def run_summary(table: ModelTable, last: bool = False) -> list[str]:
    """How many runs completed, failed and are running, how many completed ones are degenerate and which, which
    failed with what error, the duplicate records left out, and rows whose runs recorded different protocols."""
    counts = {status: sum(run.status == status for run in table.runs) for status in STATUSES}
    duplicated = [run for run in table.runs if run.duplicates]
    left_out = sum(len(run.duplicates) for run in duplicated)
    degenerate = [run for run in table.runs if run.status == "completed" and run.degenerate(last)]
    lines = [f"Runs: {counts['completed']} completed, {counts['failed']} failed, {counts['running']} running"
             + (f", {left_out} duplicate records left out" if left_out else "")
             + " (failed and running runs are marked in their cell and never averaged)."]
    if degenerate:
        lines.append(f"Degenerate ({DEGENERATE_MARK}): {len(degenerate)} of {counts['completed']} completed runs "
                     f"predicted one class (or a constant) on the whole dev set at the scored evaluation.")
        lines += _listed("degenerate runs", [f"- degenerate: {_run_name(run)} ({run.path})" for run in degenerate])
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
            f"line. {DEGENERATE_MARK}k: k of the cell's seeds are degenerate runs, whose dev predictions were all one "
            f"class (or constant) at the scored evaluation: they score the trivial baseline, not a learned result "
            f"(averaged in, and listed under the table).")


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
        out += [""] + footnotes + ([""] if footnotes else []) + run_summary(table, last)
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
        columns += [f"{task}_{k}" for k in ("failed", "running", "duplicates", "degenerate")] if task != "avg" else []
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
                             f"{task}_duplicates": cell.duplicates, f"{task}_degenerate": cell.degenerate}
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
                 "±": r"$\pm$", "–": "--", "−": "$-$", "‰": r"\textperthousand{}", "↳": r"$\hookrightarrow$",
                 DEGENERATE_MARK: r"\textdagger{}"}


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


# --- command line (the tools' convention: subspace_tuning.cli) ---------------------------------------------
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
    main()
