"""What subspace did a method learn? The merged update dW = phi(W) - W of every adapted matrix of finished runs.

    python -m subspace_tuning.analyze outputs/quickstart/minilm/toy-sentiment/lora/r8/mpc-none/seed0
    python -m subspace_tuning.analyze outputs/cpu_study --figures     # every run below, a table and figures

For each adapted weight matrix W (out x in) of a run, the run's model is rebuilt as the export does it (the
pretrained backbone, the method applied, the trained parameters loaded), merged in float64, and dW is the merged
weight minus the pretrained one. Three measures (issue 17 part 8):

- share(k): the share of ||dW||_F^2 inside the span of W's top-k left and right singular vectors,
  ||U_k U_k^T dW V_k V_k^T||_F^2 / ||dW||_F^2, for k = r (the run's rank) and k = 10% of min(out, in); also the
  left-only and right-only shares. A dW with no preference for W's directions has the expected ``chance`` share
  (k / out)(k / in). The paper's taxonomy says reconstruction methods stay inside W's singular subspaces (share
  near 1 for the methods that rescale them) while extension methods add new directions.
- amplification: the LoRA paper's amplification factor (Hu et al. 2021, section 7.3), ||dW||_F / ||U^T W V||_F
  with U, V the top-r left and right singular vectors of dW: how much dW amplifies directions that W has but does
  not emphasise (large: new directions; about 1 / sigma scale: W's own).
- diagonal: the share of ||dW||_F^2 on the diagonal of U^T dW V (all of W's singular vectors): the part of dW
  that only rescales W's own singular triplets (1 for SAM-PARSER).
- effective rank: exp of the entropy of dW's normalised singular values (Roy and Vetterli 2007): k for k equal
  singular values, 1 for a rank-one update.

W's singular vectors come from the SVD cache the spectral methods share (``methods.reconstruction.spectral``).
A run folder gets ``analysis.json`` and ``analysis.md`` (every matrix, then the energy-weighted share over the
run's matrices, the median amplification and the mean effective rank); a folder of runs also gets
``subspace_analysis.json`` / ``.md`` with one row per method and a column per task (the mean over seeds of the
run's share at k = r), and ``--figures`` one bar chart per task of that share by method
(``figures/subspace_<model>_<task>.png``). Methods that cannot be merged (prompt and prefix tuning, MPC_n, the
bottleneck adapters) and methods that change no weight matrix (BitFit) are skipped with one line saying why.

Options: ``--out DIR`` (default: the folder given), ``--figures``, ``--no-write-runs`` (do not write each run's
``analysis.json``; a run's existing one is reused unless ``--recompute`` or the run was retrained since), so the
folder's table and figures regenerate from committed ``metrics.json`` and ``analysis.json`` files without weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli import ArgumentParser, fail, non_negative_int_set
from .errors import NotMergeableError, SubspaceTuningError

if TYPE_CHECKING:  # torch is imported where it is used, so that --help and usage errors answer at once
    import torch

    from .results import RowKey

ANALYSIS_FILE = "analysis.json"
TEN_PERCENT = 0.1  # the second k of share(k): 10% of min(out, in)


class AnalysisError(SubspaceTuningError):
    """The folders given hold no finished run to analyse, or the analysis cannot be written."""


# --- the measures on one matrix (float64 tensors) ------------------------------------------------------------
def subspace_share(delta: torch.Tensor, u: torch.Tensor, vh: torch.Tensor, k: int) -> dict[str, float]:
    """Shares of ||delta||_F^2 inside the span of the first ``k`` columns of ``u`` (left) and rows of ``vh``
    (right): ``left`` ||U_k^T dW||^2, ``right`` ||dW V_k||^2, ``both`` ||U_k^T dW V_k||^2, each over ||dW||^2."""
    total = float(delta.square().sum())
    u_k, v_k = u[:, :k], vh[:k].T
    left = u_k.T @ delta
    return {"left": float(left.square().sum()) / total, "right": float((delta @ v_k).square().sum()) / total,
            "both": float((left @ v_k).square().sum()) / total}


def diagonal_share(delta: torch.Tensor, u: torch.Tensor, vh: torch.Tensor) -> float:
    """The share of ||dW||_F^2 on the diagonal of U^T dW V (U, V all of W's singular vectors): the part of dW that
    only rescales W's own singular triplets, 1 for SAM-PARSER's U diag(sigma' - sigma) V^T."""
    return float((u.T @ delta @ vh.T).diagonal().square().sum()) / float(delta.square().sum())


def amplification(weight: torch.Tensor, delta: torch.Tensor, r: int) -> float | None:
    """||dW||_F / ||U^T W V||_F with U, V the top-``r`` singular vectors of dW (Hu et al. 2021, section 7.3);
    None when W has nothing in those directions (the ratio is infinite)."""
    import torch

    u, _, vh = torch.linalg.svd(delta, full_matrices=False)
    projected = float(torch.linalg.matrix_norm(u[:, :r].T @ weight @ vh[:r].T))
    round_off = torch.finfo(weight.dtype).eps * max(weight.shape) * float(torch.linalg.matrix_norm(weight))
    return float(torch.linalg.matrix_norm(delta)) / projected if projected > round_off else None


def effective_rank(delta: torch.Tensor) -> float:
    """exp(H(p)), p the singular values of dW divided by their sum (Roy and Vetterli 2007)."""
    import torch

    sigma = torch.linalg.svdvals(delta)
    p = sigma / sigma.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def ten_percent(shape: tuple[int, ...]) -> int:
    return max(1, round(TEN_PERCENT * min(shape)))


def matrix_measures(weight: torch.Tensor, delta: torch.Tensor, factors: tuple[torch.Tensor, ...], r: int
                    ) -> dict[str, Any]:
    """Every measure of one matrix: ``factors`` = W's (U, sigma, Vh) (float64)."""
    u, _, vh = factors
    out: dict[str, Any] = {"shape": list(weight.shape), "norm": float(delta.norm()),
                           "relative_norm": float(delta.norm() / weight.norm())}
    for name, k in (("r", min(r, *weight.shape)), ("10pct", ten_percent(tuple(weight.shape)))):
        out[f"share_{name}"] = {"k": k, **subspace_share(delta, u, vh, k),
                                "chance": k * k / (weight.shape[0] * weight.shape[1])}
    out["diagonal"] = diagonal_share(delta, u, vh)
    out["amplification"] = amplification(weight, delta, r)
    out["effective_rank"] = effective_rank(delta)
    return out


# --- one model ---------------------------------------------------------------------------------------------------
def analyze_model(pretrained: torch.nn.Module, adapted: torch.nn.Module, method: Any, r: int) -> dict[str, Any]:
    """The analysis of ``adapted`` (``method`` applied, trained parameters loaded) against the model it started
    from. Both are cast to float64 (phi(W) is merged in float64, so that a small dW is not float32 round-off); the
    classification head is left out. A method that cannot merge, or that changed no matrix, gives ``skipped``."""
    import torch

    from .architectures import find_targets
    from .methods.reconstruction.spectral import thin_svds

    result: dict[str, Any] = {"method": method.name, "r": r, "skipped": None, "matrices": {}, "summary": None}
    if not method.merges:
        result["skipped"] = f"{method.name} cannot be merged into plain weights, so it has no dW"
        return result
    targets = find_targets(pretrained)
    # W's SVD in the pretrained dtype: the same cache entries as the spectral methods' (keyed by W's bytes)
    factors = thin_svds([pretrained.get_submodule(t.name).weight for t in targets])
    with torch.no_grad():
        try:
            merged = method.merge(adapted.double())
        except NotMergeableError as err:
            result["skipped"] = f"{method.name} cannot be merged into plain weights ({err}), so it has no dW"
            return result
        for target, (u, s, vh) in zip(targets, factors, strict=True):
            weight = pretrained.get_submodule(target.name).weight.double()
            delta = merged.get_submodule(target.name).weight - weight
            if not bool(delta.any()):
                continue  # a matrix the method does not adapt
            result["matrices"][target.name] = {"kind": target.kind, "layer": target.layer, **matrix_measures(
                weight, delta, (u.double(), s.double(), vh.double()), r)}
    if not result["matrices"]:
        result["skipped"] = f"{method.name} changed no weight matrix (dW = 0 everywhere)"
    result["summary"] = summarize(result["matrices"])
    return result


def summarize(matrices: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Over a run's matrices: the energy-weighted shares (sum of the in-span energy over the sum of ||dW||^2), the
    mean chance share, the median amplification and the mean effective rank."""
    if not matrices:
        return None
    rows = list(matrices.values())
    energy = [row["norm"] ** 2 for row in rows]
    out: dict[str, Any] = {"matrices": len(rows)}
    for name in ("share_r", "share_10pct"):
        out[name] = {side: sum(e * row[name][side] for e, row in zip(energy, rows, strict=True)) / sum(energy)
                     for side in ("left", "right", "both")}
        out[name]["chance"] = statistics.fmean(row[name]["chance"] for row in rows)
    out["diagonal"] = sum(e * row["diagonal"] for e, row in zip(energy, rows, strict=True)) / sum(energy)
    amplifications = [row["amplification"] for row in rows if row["amplification"] is not None]
    out["amplification"] = statistics.median(amplifications) if amplifications else None
    out["effective_rank"] = statistics.fmean(row["effective_rank"] for row in rows)
    return out


# --- one run folder ---------------------------------------------------------------------------------------------
def analyze_run(run: Path) -> dict[str, Any]:
    """Rebuild a finished run (``export.rebuild``: completed, finite, pretrained backbone) and analyse it."""
    from .export import rebuild
    from .models import build_model

    cfg, tokenizer, adapted, method = rebuild(run)
    pretrained = build_model(cfg.model, int(cfg.task.num_labels), tokenizer).eval()
    result = analyze_model(pretrained, adapted, method, int(cfg.rank))
    return {"run": str(run), "model": str(cfg.model.name), "task": str(cfg.task.name), "mpc": str(cfg.mpc.name),
            "seed": int(cfg.seed), **result}


def _significant(value: float | None) -> str:
    """Three significant digits: shares run from 1e-4 (chance) to 1, amplification factors to hundreds."""
    return "–" if value is None else f"{value:.3g}"


def run_markdown(result: dict[str, Any]) -> str:
    """One run's analysis as a Markdown table (one line per matrix) and its summary."""
    title = f"# dW of {result['method']} (r = {result['r']}) on {result['model']} {result['task']}"
    if result["skipped"]:
        return f"{title}\n\nskipped: {result['skipped']}.\n"
    lines = [title, "", "share(k): share of ||dW||_F^2 inside W's top-k left and right singular vectors (chance: "
             "(k/out)(k/in)); amplification: ||dW||_F / ||U^T W V||_F, U, V dW's top-r singular vectors; effective "
             "rank: exp(entropy of dW's normalised singular values); diagonal: share of ||dW||_F^2 that rescales "
             "W's own singular triplets (diagonal of U^T dW V).", "",
             "| matrix | shape | ‖dW‖/‖W‖ | share(r) | chance(r) | share(10%) | chance(10%) | amplification "
             "| diagonal | effective rank |", "|" + " --- |" * 10]
    for name, row in result["matrices"].items():
        lines.append(f"| {name} | {row['shape'][0]}x{row['shape'][1]} | {row['relative_norm']:.2e} | "
                     f"{_significant(row['share_r']['both'])} | {_significant(row['share_r']['chance'])} | "
                     f"{_significant(row['share_10pct']['both'])} | {_significant(row['share_10pct']['chance'])} | "
                     f"{_significant(row['amplification'])} | {_significant(row['diagonal'])} | "
                     f"{_significant(row['effective_rank'])} |")
    summary, g = result["summary"], _significant
    share_r, share_10 = summary["share_r"], summary["share_10pct"]
    lines += ["", f"Over {summary['matrices']} matrices (energy-weighted): share(r) {g(share_r['both'])} (left "
              f"{g(share_r['left'])}, right {g(share_r['right'])}; chance {g(share_r['chance'])}), share(10%) "
              f"{g(share_10['both'])} (chance {g(share_10['chance'])}); diagonal {g(summary['diagonal'])}; median "
              f"amplification {g(summary['amplification'])}; mean effective rank {g(summary['effective_rank'])}."]
    return "\n".join(lines) + "\n"


def write_out(path: Path, data: Any) -> None:
    """``data`` to ``path`` atomically: strict JSON for a .json file, else text."""
    from .runio import atomic_write_json, atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        (atomic_write_json if path.suffix == ".json" else atomic_write_text)(path, data)
    except OSError as err:
        raise AnalysisError(f"cannot write {path}: {err.strerror or err}; choose another folder with --out") \
            from None


# --- a folder of runs ---------------------------------------------------------------------------------------------
@dataclass
class Analysed:
    """A run of the report's records with its analysis (None: skipped, ``why`` says why)."""

    key: RowKey
    label: str
    family: str | None
    task: str
    model: str
    result: dict[str, Any] | None
    why: str | None


def run_folders(folder: Path) -> list[Path]:
    """``folder`` if it is a run folder, else every run folder below it (those with a metrics.json)."""
    if (folder / "metrics.json").is_file():
        return [folder]
    runs = sorted(path.parent for path in folder.rglob("metrics.json"))
    if not runs:
        raise AnalysisError(f"found no run under {folder}: give a run folder (it holds metrics.json, config.yaml and "
                            f"trained.safetensors) or a sweep folder such as outputs/<experiment_name>")
    return runs


def analyse_folders(folder: Path, write_runs: bool, recompute: bool, seeds: set[int] | None = None) -> list[Analysed]:
    """Every completed run below ``folder`` (of ``seeds`` only, when given), analysed (or its ``analysis.json``
    reused)."""
    from .results import family, read_run

    analysed = []
    for run in run_folders(folder):
        record = read_run(run / "metrics.json")
        if seeds is not None and record.seed not in seeds:
            continue
        cached = run / ANALYSIS_FILE
        if record.status != "completed":
            result, why = None, f"status {record.status}"
        elif cached.is_file() and not recompute and not _newer(run / "trained.safetensors", cached):
            result, why = json.loads(cached.read_text()), None
        else:
            try:
                result, why = analyze_run(run), None
            except SubspaceTuningError as err:
                result, why = None, str(err)
            if result is not None and write_runs:
                write_out(cached, result)
                write_out(run / "analysis.md", run_markdown(result))
        if result is not None and result["skipped"]:
            why = result["skipped"]
        label = record.key.label + ("" if record.key.rank is None else f" r={record.key.rank}")
        analysed.append(Analysed(record.key, label, family(record.key.method), record.task, record.model, result,
                                 why))
    return sorted(analysed, key=lambda item: item.key.sort_key())  # the paper's row order


def _newer(path: Path, than: Path) -> bool:
    """Whether ``path`` exists and was written after ``than`` (a run retrained since it was analysed)."""
    return path.is_file() and path.stat().st_mtime > than.stat().st_mtime


def study_tables(analysed: list[Analysed]) -> dict[str, Any]:
    """Per model, one row per method label: per task the mean over seeds of the run's share(r) and share(10%)
    (energy-weighted over its matrices), the chance level, and the runs skipped with why."""
    from .results import task_order

    tables: dict[str, Any] = {}
    for item in analysed:
        table = tables.setdefault(item.model, {"tasks": [], "rows": {}, "skipped": []})
        if item.task not in table["tasks"]:
            table["tasks"] = task_order([*table["tasks"], item.task])
        if item.result is None or item.result["skipped"]:
            table["skipped"].append(f"{item.task} {item.label}: {item.why}")
            continue
        row = table["rows"].setdefault(item.label, {"family": item.family, "tasks": {}})
        cell = row["tasks"].setdefault(item.task, {"share_r": [], "share_10pct": [], "chance_r": [], "diagonal": [],
                                                   "amplification": [], "effective_rank": []})
        summary = item.result["summary"]
        cell["share_r"].append(summary["share_r"]["both"])
        cell["share_10pct"].append(summary["share_10pct"]["both"])
        cell["chance_r"].append(summary["share_r"]["chance"])
        cell["diagonal"].append(summary["diagonal"])
        cell["amplification"].append(summary["amplification"])
        cell["effective_rank"].append(summary["effective_rank"])
    for table in tables.values():
        for row in table["rows"].values():
            for task, cell in row["tasks"].items():
                row["tasks"][task] = {name: _mean([v for v in values if v is not None])
                                      for name, values in cell.items()} | {"seeds": len(cell["share_r"])}
    return tables


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def study_markdown(tables: dict[str, Any]) -> str:
    lines = ["# Subspace analysis of the learned updates", "",
             "Per method and task, the mean over seeds of share(r): the share of ||dW||_F^2 inside W's top-r left and "
             "right singular vectors, energy-weighted over the adapted matrices (chance: a dW with no preference "
             "for W's directions); then share(10%), the diagonal share (dW that rescales W's own singular "
             "triplets), the median amplification ||dW||_F / ||U^T W V||_F and the mean "
             "effective rank (python -m subspace_tuning.analyze)."]
    for model, table in tables.items():
        header = ["Method", "family"] + [f"{task} share(r) / share(10%) / diagonal / amp. / erank"
                                         for task in table["tasks"]]
        lines += ["", f"## {model}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for label, row in table["rows"].items():
            cells = []
            for task in table["tasks"]:
                cell = row["tasks"].get(task)
                cells.append("–" if cell is None else
                             f"{_significant(cell['share_r'])} / {_significant(cell['share_10pct'])} / "
                             f"{_significant(cell['diagonal'])} / "
                             f"{_significant(cell['amplification'])} / {_significant(cell['effective_rank'])} "
                             f"({cell['seeds']})")
            lines.append("| " + " | ".join([label, row["family"] or "–", *cells]) + " |")
        chance = {task: _mean([row["tasks"][task]["chance_r"] for row in table["rows"].values()
                               if task in row["tasks"]]) for task in table["tasks"]}
        lines += ["", "Chance share(r) per task: " + ", ".join(f"{t} {_significant(c)}" for t, c in chance.items())
                  + "."]
        lines += [f"- skipped: {why}" for why in table["skipped"]]
    return "\n".join(lines) + "\n"


FAMILY_COLOURS = {"reference": "0.4", "reconstruction": "tab:blue", "extension": "tab:orange",
                  "combination": "tab:green", None: "0.7"}


def study_figures(tables: dict[str, Any], out: Path) -> list[Path]:
    """One horizontal bar chart per model and task: share(r) by method on a log scale (the shares span chance, a few
    1e-4 at MiniLM's dimensions, to 1), coloured by family, chance as a dashed line."""
    from .figures import _pyplot

    plt = _pyplot()
    from matplotlib.patches import Patch

    written = []
    for model, table in tables.items():
        for task in table["tasks"]:
            rows = [(label, row["family"], row["tasks"][task]) for label, row in table["rows"].items()
                    if task in row["tasks"] and row["tasks"][task]["share_r"]]
            if not rows:
                continue
            shares = [cell["share_r"] for _, _, cell in rows]
            chance = _mean([cell["chance_r"] for _, _, cell in rows])
            fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.3 * len(rows)))
            y = list(range(len(rows)))[::-1]  # the first row at the top
            ax.barh(y, shares, color=[FAMILY_COLOURS.get(fam, "0.7") for _, fam, _ in rows])
            for yi, share in zip(y, shares, strict=True):
                ax.text(share, yi, f" {share:.2g}", va="center", fontsize=7)
            ax.axvline(chance, color="black", linestyle="--", linewidth=0.8)
            ax.set_yticks(y, [label for label, _, _ in rows], fontsize=7)
            ax.set_xscale("log")
            ax.set_xlim(min(chance, *shares) / 3, 3.0)
            ax.set_xlabel("share of ||dW||² inside W's top-r left and right singular vectors (log)", fontsize=8)
            ax.set_title(f"{model} {task}: where the learned updates lie", fontsize=9)
            families = [name for name in ("reference", "reconstruction", "extension", "combination")
                        if any(fam == name for _, fam, _ in rows)]
            handles = [Patch(color=FAMILY_COLOURS[name], label=name) for name in families]
            handles.append(plt.Line2D([], [], color="black", linestyle="--", linewidth=0.8,
                                      label=f"chance {chance:.2g}"))
            ax.legend(handles=handles, fontsize=7, loc="lower right")
            fig.tight_layout()
            path = out / "figures" / f"subspace_{model}_{task}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=150)
            plt.close(fig)
            written.append(path)
    return written


# --- command line ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("python -m subspace_tuning.analyze", __doc__)
    parser.add_argument("folder", metavar="RUN_OR_SWEEP_FOLDER", type=Path,
                        help="a finished run's folder, or a folder of runs (searched recursively)")
    parser.add_argument("--out", metavar="DIR", type=Path, help="where the folder's summary goes (default: FOLDER)")
    parser.add_argument("--figures", action="store_true", help="one PNG bar chart of share(r) per model and task")
    parser.add_argument("--no-write-runs", action="store_true", help="do not write each run's analysis.json / .md")
    parser.add_argument("--recompute", action="store_true", help="analyse runs that already have analysis.json")
    parser.add_argument("--seeds", type=non_negative_int_set, default=None, help="only the runs of these seeds, "
                        "e.g. 0 or 0,1 (each run's analysis costs about a model load and an SVD per matrix)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; every error is one paragraph on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        if not args.folder.is_dir():
            raise AnalysisError(f"{args.folder} is not a folder; give a run folder or a sweep folder")
        analysed = analyse_folders(args.folder, not args.no_write_runs, args.recompute, args.seeds)
        if len(analysed) == 1 and args.figures is False:
            item = analysed[0]
            if item.result is None:
                raise AnalysisError(f"{args.folder} cannot be analysed: {item.why}")
            print(run_markdown(item.result), end="")
            return
        out = args.out or args.folder
        tables = study_tables(analysed)
        markdown = study_markdown(tables)
        write_out(out / "subspace_analysis.json", tables)
        write_out(out / "subspace_analysis.md", markdown)
        figures = study_figures(tables, out) if args.figures else []
    except SubspaceTuningError as err:
        fail(err)
    print(markdown, end="")
    print("wrote " + ", ".join(str(p) for p in [out / "subspace_analysis.json", out / "subspace_analysis.md",
                                                 *figures]))


if __name__ == "__main__":
    main()
