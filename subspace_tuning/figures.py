"""Figures of a report (``python -m subspace_tuning.report <folders> --figures``), as PNG and PDF, drawn from the
tables of ``subspace_tuning.results`` (this module and the report import results, never each other).

- ``<model>_avg_vs_rank``: the average score of every ranked method (and MPC variant, and command-line
  variant) against the rank, with standard-error bars (the paper's Figs. 4 and 5).
- ``<model>_reconstruction``: the reconstruction methods' average score against their parameter budget in per
  mille (the paper's Fig. 2c).

Both draw full fine-tuning as a dashed horizontal line when that row has an average, and with ``--paper`` the
published averages as hollow markers on dotted lines. Only rows whose average is computed (every task cell
complete) are drawn; the others are named in the figure's footnote. With ``--stat median`` the average is the
mean of the task medians, drawn without error bars, and the files end in ``_median``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .results import (
    STATISTICS,
    ModelTable,
    Paper,
    ReportError,
    Row,
    RowKey,
    Stat,
    display_name,
    family,
    output_suffix,
)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportError("--figures needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _averages(table: ModelTable, rows: list[Row]) -> tuple[list[tuple[Row, Stat]], list[str]]:
    """(row, average) of the rows with a computed average, and the labels of those without one."""
    drawn, skipped = [], []
    for row in rows:
        avg = row.average(table.tasks)
        if avg is None:
            skipped.append(row.key.label + ("" if row.key.rank is None else f" r={row.key.rank}"))
        else:
            drawn.append((row, avg))
    return drawn, skipped


def _paper_avg(paper: Paper | None, table: ModelTable, key: RowKey) -> float | None:
    return None if paper is None else paper.average(table, key)[0]


def _colors(plt: Any, n: int) -> list[Any]:
    """Distinct colours for n series (tab10, or tab20 past ten)."""
    return list(plt.get_cmap("tab10" if n <= 10 else "tab20").colors)


def _reference_lines(ax: Any, table: ModelTable, paper: Paper | None) -> float | None:
    """Full fine-tuning (ours dashed, the paper's dotted) as horizontal lines; returns our average drawn."""
    full = table.row(RowKey("full", None, "none"))
    full_avg = full.average(table.tasks) if full is not None else None
    if full_avg is not None:
        ax.axhline(full_avg.value, color="black", linestyle="--", linewidth=1,
                   label=f"Full FT ({full_avg.value:.2f})")
    published = _paper_avg(paper, table, RowKey("full", None, "none"))
    if published is not None:
        ax.axhline(published, color="black", linestyle=":", linewidth=1, label=f"Full FT, paper ({published:.2f})")
    ax.grid(alpha=0.3)
    return None if full_avg is None else full_avg.value


def _save(plt: Any, fig: Any, path: Path, skipped: list[str], what: str, full: float | None) -> str:
    """Footnote the rows left out, save as PNG and PDF; returns a line saying what was drawn."""
    if skipped:
        fig.text(0.01, 0.005, "not drawn (incomplete): " + ", ".join(skipped), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".png", ".pdf"):
            fig.savefig(path.parent / (path.name + suffix), dpi=150, bbox_inches="tight")  # names may contain dots
    except OSError as err:
        raise ReportError(f"cannot write the figure {path}: {err.strerror or err}; choose another folder with "
                          f"--out.") from None
    finally:
        plt.close(fig)
    drawn = "no full fine-tuning line" if full is None else f"full fine-tuning line at {full:.2f}"
    left_out = f"; {len(skipped)} incomplete rows not drawn" if skipped else ""
    return f"{path}.png and .pdf: {what}, {drawn}{left_out}"


def rank_panels(rows: list[Row]) -> list[tuple[str, list[Row]]]:
    """Fig. 4: every method as the paper runs it (no MPC; AdaLoRA with its own MPC_o regulariser); Fig. 5: one
    panel per method run with more than one MPC variant."""
    panels = []
    canonical = [row for row in rows if row.key.mpc == ("o" if row.key.method == "adalora" else "none")]
    if canonical:
        panels.append(("methods", canonical))
    by_method: dict[str, list[Row]] = {}
    for row in rows:
        by_method.setdefault(row.key.method, []).append(row)
    panels += [(f"{display_name(method)} with MPC", group) for method, group in by_method.items()
               if len({row.key.mpc for row in group}) > 1]
    return panels


def _rank_panel(plt: Any, ax: Any, table: ModelTable, paper: Paper | None, title: str,
                drawn: list[tuple[Row, Stat]]) -> tuple[int, float | None]:
    """One panel: a line per method, MPC variant and command-line variant; returns the number of lines and the
    full FT average. The paper's line of a method and MPC is drawn once, in the colour of its first series."""
    series: dict[RowKey, list[tuple[Row, Stat]]] = {}
    for row, avg in drawn:
        series.setdefault(RowKey(row.key.method, None, row.key.mpc, row.key.variant), []).append((row, avg))
    with_paper: set[RowKey] = set()
    for color, (line, points) in zip(_colors(plt, len(series)), series.items(), strict=False):
        ax.errorbar([row.key.rank for row, _ in points], [a.value for _, a in points],
                    yerr=[a.se or 0.0 for _, a in points], marker="o", capsize=3, color=color, label=line.label)
        published = [(row.key.rank, _paper_avg(paper, table, row.key)) for row, _ in points]
        published = [(rank, value) for rank, value in published if value is not None]
        if published and line.base not in with_paper:
            with_paper.add(line.base)
            ax.plot(*zip(*published, strict=True), linestyle=":", marker="o", markerfacecolor="none", color=color)
    full = _reference_lines(ax, table, paper)
    if with_paper:
        ax.plot([], [], linestyle=":", marker="o", markerfacecolor="none", color="grey", label="(dotted: paper)")
    ranks = sorted({row.key.rank for row, _ in drawn})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()
    ax.set_xlabel("rank r")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best", ncols=2 if len(series) > 6 else 1)
    return len(series), full


def rank_figure(plt: Any, table: ModelTable, paper: Paper | None, path: Path, epoch: str) -> str | None:
    """Average score against rank with standard-error bars: every method in one panel (Fig. 4), each method's
    MPC variants in their own panel (Fig. 5)."""
    drawn, skipped = _averages(table, [row for row in table.rows if row.key.rank is not None])
    panels = rank_panels([row for row, _ in drawn])
    if not panels:
        return None
    averages = {row.key: avg for row, avg in drawn}
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.6 * rows), squeeze=False)
    lines, full = 0, None
    for ax, (title, panel_rows) in zip(axes.flat, panels, strict=False):
        count, full = _rank_panel(plt, ax, table, paper, title, [(row, averages[row.key]) for row in panel_rows])
        lines += count
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"average over {len(table.tasks)} tasks (%)")
    fig.suptitle(f"{table.model}: average {epoch}-epoch dev score against rank ({STATISTICS[table.statistic]})")
    return _save(plt, fig, path, skipped, f"{lines} lines in {len(panels)} panels", full)


def reconstruction_figure(plt: Any, table: ModelTable, paper: Paper | None, path: Path, epoch: str) -> str | None:
    """The reconstruction methods' (the family, from the method classes) average score against their parameter
    budget (Fig. 2c)."""
    drawn, skipped = _averages(table, [row for row in table.rows if family(row.key.method) == "reconstruction"])
    drawn = [(row, avg) for row, avg in drawn if row.per_mille is not None]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    with_paper: set[RowKey] = set()  # a method's published point is drawn once, however many variants it has
    labels_at: dict[float, int] = {}  # methods with the same budget ((IA)3 and SAM-PARSER) get stacked labels
    for color, (row, avg) in zip(_colors(plt, len(drawn)), drawn, strict=False):
        ax.errorbar([row.per_mille], [avg.value], yerr=[avg.se or 0.0], marker="o", capsize=3, linestyle="none",
                    color=color, label=row.key.label)
        budget = round(row.per_mille, 2)
        stacked = labels_at[budget] = labels_at.get(budget, -1) + 1
        ax.annotate(row.key.label, (row.per_mille, avg.value), textcoords="offset points",
                    xytext=(5, 5 + 11 * stacked), fontsize=8)
        published = paper.row(table.model, row.key) if paper else None
        value = _paper_avg(paper, table, row.key)
        if published is not None and value is not None and row.key.base not in with_paper:
            with_paper.add(row.key.base)
            ax.plot([published["per_mille"]], [value], marker="s", markerfacecolor="none", linestyle="none",
                    color=color)
    full = _reference_lines(ax, table, paper)
    if with_paper:
        ax.plot([], [], marker="s", markerfacecolor="none", linestyle="none", color="grey", label="(hollow: paper)")
    ax.set_xscale("log")
    budgets = sorted({row.per_mille for row, _ in drawn})
    ax.set_xticks(budgets, [f"{b:.2f}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("parameter budget (‰ of all model parameters)")
    ax.set_ylabel(f"average over {len(table.tasks)} tasks (%)")
    ax.set_title(f"{table.model}: reconstruction methods, average {epoch}-epoch dev score "
                 f"({STATISTICS[table.statistic]})", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return _save(plt, fig, path, skipped, f"{len(drawn)} methods", full)


def write_figures(tables: list[ModelTable], out_dir: Path, paper: Paper | None = None, last: bool = False,
                  ) -> list[str]:
    """Write both figures of every model that has something to draw; returns a line per figure written."""
    plt = _pyplot()
    epoch = "last" if last else "best"
    written = []
    for table in tables:
        suffix = output_suffix(last, table.statistic)
        written.append(rank_figure(plt, table, paper, out_dir / f"{table.model}_avg_vs_rank{suffix}", epoch))
        written.append(reconstruction_figure(plt, table, paper, out_dir / f"{table.model}_reconstruction{suffix}",
                                             epoch))
    return [line for line in written if line is not None]
