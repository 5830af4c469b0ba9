"""The CPU study's statistics and claims table (issue 17, parts 5 and 6), from run records alone.

Per row (method, rank, MPC as ``subspace_tuning.results`` names them) and task: n, mean, median, a 95% t interval of
the mean, how many runs predicted one class (or a constant) on the dev set, and the margin over the task's trivial
baseline. Per claim of the paper (C1-C7 of issue 17): the paired difference (paired by task and seed; C7 by task,
of the seed standard deviations) with a 95% percentile bootstrap CI, a Wilcoxon signed-rank p-value, and a verdict
computed by one rule:

- ordered claims ("A beats B"): *supported* when the CI excludes 0 in the claimed direction, *contradicted* when
  it excludes 0 in the opposite direction, *not significant* otherwise; and where the Wilcoxon test can reach
  p < ``ALPHA`` (``WILCOXON_MIN_N`` or more non-zero pairs) it must agree, else *not significant* (a percentile
  bootstrap of ten pairs is narrow: a CI that only just excludes 0 is not evidence on its own);
- "comparable" (C2) and "close to" (C3), from the CI alone (a difference test cannot show equivalence):
  "comparable": equivalence within ``EQUIVALENCE_MARGIN`` points: *supported* when the whole CI lies within
  +-margin, *contradicted* when it lies wholly beyond it, *not significant* otherwise;
  "close to" (SSB vs full FT): non-inferiority by the same margin: *supported* when the CI's lower end is above
  -margin, *contradicted* when its upper end is below -margin;
- fewer than ``MIN_PAIRS`` pairs: *not significant*; a row without runs: *not run*. A claim of several parts is
  supported when every part that ran is, contradicted when any part is, not significant otherwise.

Trivial baseline of a task: 0 for Matthews correlation and Pearson / Spearman (a constant prediction scores 0); for
accuracy, the dev labels' majority share, which runs record with their predictions. From older records without it:
a run whose dev predictions were all one class scores that class's share s, so on a two-class task the majority
share is max(s, 100 - s); other accuracy tasks give the best such s (a lower bound). A task without either has no
known baseline ("–").

The learning-rate search (issue 17 part 2) is summarised by ``--lr-search``: per method, the held-out score at
every lr and the chosen one (the best; ties to the smaller lr). ``--collect DIR`` copies each run's small result
files for committing; ``--readme`` fills the generated blocks of docs/cpu_study/README.md.

Examples:
    python -m subspace_tuning.study outputs/cpu_study --out docs/cpu_study
    python -m subspace_tuning.study outputs/cpu_study_lr_search --lr-search --out docs/cpu_study
    python -m subspace_tuning.study outputs/cpu_study --collect docs/cpu_study/runs/study
    python -m subspace_tuning.study outputs/cpu_study --last --rank 8
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .cli import ArgumentParser, fail, positive_int
from .errors import SubspaceTuningError
from .results import RowKey, RunRecord, build_tables, find_runs, task_order

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # a fixed generator: the claims table regenerates identically
# "Comparable" / "close" claims: points of the headline score (accuracy %, or 100 x MCC / correlation).
EQUIVALENCE_MARGIN = 2.0
# "Learns" (issue 17 part 1): 10 points of accuracy above the majority class, or 0.3 of MCC / correlation above 0.
LEARNED_MARGIN = {"accuracy": 10.0, "correlation": 30.0}
MIN_PAIRS = 3  # below this a bootstrap CI is no evidence either way
ALPHA = 0.05  # an ordered claim's Wilcoxon p must be below this too
# With n non-zero differences the smallest two-sided exact Wilcoxon p is 2 / 2**n: n < 6 cannot reach 0.05.
WILCOXON_MIN_N = 6
ZERO_BASELINE_METRICS = ("matthews", "pearson", "spearman")
BINARY_ACCURACY_TASKS = ("sst2", "qqp", "qnli", "rte", "mrpc")
VERDICTS = ("supported", "contradicted", "not significant", "not run")
KINDS = ("greater", "less", "comparable", "close", "smaller_std")
OUTPUT_NAME = "study"  # <out>/study.md and <out>/study.json
LR_SEARCH_NAME = "lr_search"  # <out>/lr_search.md and .json (--lr-search)


# --- statistics -----------------------------------------------------------------------------------
def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The t interval of the mean (Student's t, n - 1 degrees of freedom); None from fewer than two values."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def bootstrap_ci(differences: list[float], confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean difference (resampling the pairs); None without pairs."""
    import numpy as np

    if not differences:
        return None
    data = np.asarray(differences, dtype=float)
    means = data[np.random.default_rng(seed).integers(0, len(data), (resamples, len(data)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def wilcoxon_p(differences: list[float]) -> tuple[float | None, str]:
    """Two-sided Wilcoxon signed-rank p-value (zero differences dropped, scipy's default) and a note on when it
    cannot mean much: every difference 0 (p = 1 by convention here; scipy has no statistic), or too few pairs."""
    from scipy.stats import wilcoxon

    if not differences:
        return None, "no pairs"
    nonzero = sum(1 for d in differences if d != 0)
    if nonzero == 0:
        return 1.0, "every difference is 0: p = 1 by convention"
    with warnings.catch_warnings():  # scipy warns for small samples; the note below says it instead
        warnings.simplefilter("ignore")
        p = float(wilcoxon(differences).pvalue)
    if math.isnan(p):
        return None, "scipy gave no p-value"
    note = "" if nonzero >= WILCOXON_MIN_N else (
        f"{nonzero} non-zero differences (< {WILCOXON_MIN_N}): the two-sided test cannot reach p < 0.05 "
        f"(smallest p {2 / 2 ** nonzero:.3g})")
    return p, note


def verdict(kind: str, ci: tuple[float, float] | None, n: int, p: float | None = None,
            margin: float = EQUIVALENCE_MARGIN) -> str:
    """The module docstring's rule, from the CI of the mean difference (first row minus second) and, for ordered
    claims, the Wilcoxon p-value ``p`` where ``n`` pairs can reach significance (None: the CI alone)."""
    if n == 0 or ci is None:
        return "not run"
    if n < MIN_PAIRS:
        return "not significant"
    low, high = ci
    if kind in ("greater", "less", "smaller_std"):
        if p is not None and n >= WILCOXON_MIN_N and not p < ALPHA:
            return "not significant"
        claimed, opposite = (low > 0, high < 0) if kind == "greater" else (high < 0, low > 0)
        return "supported" if claimed else "contradicted" if opposite else "not significant"
    if kind == "comparable":
        return "supported" if -margin <= low and high <= margin else \
            "contradicted" if low > margin or high < -margin else "not significant"
    if kind == "close":
        return "supported" if low >= -margin else "contradicted" if high < -margin else "not significant"
    raise ValueError(f"unknown comparison kind {kind!r}; expected one of {KINDS}")


def combine(verdicts: list[str]) -> str:
    """A claim of several parts: every part that ran supported -> supported; any contradicted -> contradicted."""
    ran = [v for v in verdicts if v != "not run"]
    if not ran:
        return "not run"
    if "contradicted" in ran:
        return "contradicted"
    return "supported" if all(v == "supported" for v in ran) else "not significant"


# --- the claims -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowSpec:
    """A study row by method and MPC; its rank is the study's (rank-free methods record none)."""

    method: str
    mpc: str = "none"

    def matches(self, key: RowKey, rank: int) -> bool:
        return key.method == self.method and key.mpc == self.mpc and key.rank in (None, rank) and not key.variant

    @property
    def label(self) -> str:
        return RowKey(self.method, None, self.mpc).label


@dataclass(frozen=True)
class Comparison:
    """One part of a claim: ``pairs`` of (first, second) rows; the effect is first minus second (of scores, or
    for ``smaller_std`` of the seed standard deviations per task, all pairs pooled)."""

    kind: str
    pairs: tuple[tuple[RowSpec, RowSpec], ...]

    @property
    def text(self) -> str:
        sign = {"greater": ">", "less": "<", "comparable": "≈", "close": "≥≈", "smaller_std": "std <"}[self.kind]
        return "; ".join(f"{a.label} {sign} {b.label}" for a, b in self.pairs)


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    where: str
    parts: tuple[Comparison, ...]


FULL, SAM, IA3, SSL, SSB = RowSpec("full"), RowSpec("sam_parser"), RowSpec("ia3"), RowSpec("ssl"), RowSpec("ssb")
LORA, TRILORA, FLORA, DORA = RowSpec("lora"), RowSpec("trilora"), RowSpec("flora"), RowSpec("dora")
# AdaLoRA's own orthogonality regulariser is MPC_o (results.RowKey.label): mpc=none is 'AdaLoRA - MPC_o'.
ADALORA, ADALORA_NO_MPC = RowSpec("adalora", "o"), RowSpec("adalora", "none")
MPC_PAIRS = ((RowSpec("lora", "o"), LORA), (RowSpec("lora", "d"), LORA), (RowSpec("lora", "n"), LORA),
             (RowSpec("trilora", "o"), TRILORA), (ADALORA, ADALORA_NO_MPC))
# The rows of issue 17 part 3, in its order.
STUDY_ROWS = (FULL, SAM, IA3, SSL, SSB, RowSpec("bitfit"), LORA, *(a for a, _ in MPC_PAIRS[:3]), TRILORA,
              MPC_PAIRS[3][0], ADALORA, ADALORA_NO_MPC, FLORA, DORA)
# Where: every row compared is in the paper's Supplementary Tables II-IV (paper_results.json); the claims
# themselves are the paper's Section 4 discussion of those tables (section numbers not confirmed here).
_TABLES = "the paper's Section 4 discussion of Supplementary Tables II-IV"


def _greater(a: RowSpec, b: RowSpec) -> Comparison:
    return Comparison("greater", ((a, b),))


CLAIMS = (
    Claim("C1", "SAM-PARSER (Mode 1) is substantially inferior to the other methods", _TABLES,
          tuple(Comparison("less", ((SAM, other),)) for other in STUDY_ROWS if other != SAM)),
    Claim("C2", "(IA)3 is comparable to full fine-tuning", _TABLES, (Comparison("comparable", ((IA3, FULL),)),)),
    Claim("C3", "SSB beats SSL and (IA)3, and comes close to full fine-tuning", _TABLES,
          (_greater(SSB, SSL), _greater(SSB, IA3), Comparison("close", ((SSB, FULL),)))),
    Claim("C4", "the extension hierarchy P(AGB) > P(ADB) > P(AB): FLoRA > AdaLoRA and TriLoRA > LoRA", _TABLES,
          (_greater(FLORA, ADALORA), _greater(TRILORA, LORA))),
    Claim("C5", "DoRA beats LoRA", _TABLES, (_greater(DORA, LORA),)),
    Claim("C6", "MPC improves LoRA (o, d, n), TriLoRA (o) and AdaLoRA (o)", _TABLES,
          tuple(_greater(a, b) for a, b in MPC_PAIRS)),
    Claim("C7", "with MPC the standard deviation over seeds is smaller", "the paper's Section 4 discussion",
          (Comparison("smaller_std", MPC_PAIRS),)),
)


# --- evaluating ---------------------------------------------------------------------------------------
Scores = dict[tuple[RowKey, str], dict[str, float]]  # (row, task) -> seed -> score, one model's completed runs


@dataclass
class Effect:
    """A comparison's numbers: n pairs, the mean difference, its bootstrap CI, the Wilcoxon p and the verdict."""

    claim: str
    comparison: str
    kind: str
    n: int
    mean: float | None
    ci: tuple[float, float] | None
    p: float | None
    verdict: str
    note: str = ""
    missing: list[str] = field(default_factory=list)


def _find(scores: Scores, spec: RowSpec, rank: int, task: str) -> dict[str, float] | None:
    return next((seeds for (key, t), seeds in scores.items() if t == task and spec.matches(key, rank)), None)


def differences(comparison: Comparison, scores: Scores, rank: int) -> tuple[list[float], list[str]]:
    """The paired differences of ``comparison`` and the labels of its rows that have no runs at all."""
    tasks = task_order({task for _, task in scores})
    diffs: list[float] = []
    missing: list[str] = []
    for a, b in comparison.pairs:
        for spec in (a, b):
            if all(_find(scores, spec, rank, task) is None for task in tasks) and spec.label not in missing:
                missing.append(spec.label)
        for task in tasks:
            first, second = _find(scores, a, rank, task) or {}, _find(scores, b, rank, task) or {}
            seeds = sorted(set(first) & set(second))
            if comparison.kind == "smaller_std":
                if len(seeds) >= 2:  # the same seeds on both sides: the spread of the same seed draws
                    diffs.append(statistics.stdev(first[s] for s in seeds) - statistics.stdev(second[s] for s in seeds))
            else:
                diffs.extend(first[s] - second[s] for s in seeds)
    return diffs, missing


def evaluate(claim: Claim, comparison: Comparison, scores: Scores, rank: int) -> Effect:
    diffs, missing = differences(comparison, scores, rank)
    ci = bootstrap_ci(diffs)
    p, note = wilcoxon_p(diffs)
    n = len(diffs)
    if missing:
        note = "; ".join(x for x in (f"no runs of {', '.join(missing)}", note if diffs else "") if x)
    elif 0 < n < MIN_PAIRS:
        note = "; ".join(x for x in (f"{n} pairs (< {MIN_PAIRS})", note) if x)
    return Effect(claim.id, comparison.text, comparison.kind, n, statistics.fmean(diffs) if diffs else None, ci,
                  p if diffs else None, verdict(comparison.kind, ci, n, p if diffs else None), note, missing)


def baseline(runs: list[RunRecord], task: str, metric: str, last: bool) -> tuple[float | None, str]:
    """The task's trivial baseline in points and where it comes from (the module docstring's rule)."""
    if metric in ZERO_BASELINE_METRICS:
        return 0.0, f"0: a constant prediction scores 0 {metric}"
    if metric != "accuracy":
        return None, f"unknown for {metric}"
    recorded = {run.majority_baseline for run in runs if run.task == task and run.majority_baseline is not None}
    if recorded:
        return max(recorded), "the dev labels' majority class (recorded by the runs)"
    shares = [run.score(last) for run in runs if run.task == task and run.status == "completed"
              and run.degenerate(last) and run.score(last) is not None]
    if not shares:
        return None, "unknown: no run predicted one class"
    if task in BINARY_ACCURACY_TASKS:
        return max(max(s, 100.0 - s) for s in shares), f"majority share from {len(shares)} one-class run(s)"
    return max(shares), f"lower bound: best of {len(shares)} one-class run(s)"


def study(runs: list[RunRecord], last: bool = False, rank: int = 8) -> dict[str, Any]:
    """Everything the report shows, as plain data (the JSON written)."""
    models = []
    for table in build_tables(runs, last):
        table_runs = table.runs
        baselines = {task: baseline(table_runs, task, table.metrics[task], last) for task in table.tasks}
        rows = []
        for row in table.rows:
            for task in table.tasks:
                cell = row.cells.get(task)
                if cell is None:
                    continue
                values = cell.values
                mean = statistics.fmean(values) if values else None
                base = baselines[task][0]
                rows.append({"row": row.key.label, "task": task, "metric": cell.metric, "n": len(values),
                             "mean": mean, "median": statistics.median(values) if values else None,
                             "ci": t_interval(values), "degenerate": cell.degenerate, "failed": cell.failed,
                             "running": cell.running, "baseline": base,
                             "margin": None if mean is None or base is None else mean - base})
        scores: Scores = {}
        for run in table_runs:
            if run.status == "completed" and run.score(last) is not None:
                scores.setdefault((run.key, run.task), {})[str(run.seed)] = run.score(last)
        effects = [evaluate(claim, part, scores, rank) for claim in CLAIMS for part in claim.parts]
        claims = [{"id": c.id, "claim": c.text, "where": c.where,
                   "verdict": combine([e.verdict for e in effects if e.claim == c.id]),
                   "parts": [e.verdict for e in effects if e.claim == c.id]} for c in CLAIMS]
        models.append({"model": table.model, "tasks": table.tasks,
                       "baselines": {t: {"value": v, "source": s} for t, (v, s) in baselines.items()},
                       "per_task": rows, "claims": claims, "comparisons": [asdict(e) for e in effects]})
    return {"score": "last" if last else "best", "rank": rank, "confidence": CONFIDENCE,
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
            "equivalence_margin": EQUIVALENCE_MARGIN, "min_pairs": MIN_PAIRS, "models": models}


# --- rendering ----------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: never '-0.00'


def _ci(ci: tuple[float, float] | list[float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in lines)]


def markdown(result: dict[str, Any]) -> str:
    """The per-task table, the claims table and the comparisons behind it, per model."""
    out = [f"Scores in points ({result['score']} dev evaluation of each run); 95% CIs: t interval of the mean per "
           f"task, percentile bootstrap ({result['bootstrap']['resamples']} resamples, seed "
           f"{result['bootstrap']['seed']}) of paired differences; equivalence margin ±{result['equivalence_margin']} "
           f"points; verdict rule: subspace_tuning/study.py."]
    for model in result["models"]:
        out += ["", f"## {model['model']}", "", "Trivial baselines: " + "; ".join(
            f"{task} {_num(b['value'])} ({b['source']})" for task, b in model["baselines"].items()) + ".", ""]
        out += _table(["Row", "Task", "n", "Mean", "Median", "95% CI", "Degenerate", "Baseline", "Margin",
                          "Failed / running"], [
            [r["row"], r["task"], str(r["n"]), _num(r["mean"]), _num(r["median"]), _ci(r["ci"]),
             str(r["degenerate"]), _num(r["baseline"]), _num(r["margin"]), f"{r['failed']} / {r['running']}"]
            for r in model["per_task"]])
        out += ["", "### Claims", ""]
        out += _table(["Claim", "Where", "Verdict", "Parts"], [
            [f"{c['id']} {c['claim']}", c["where"], c["verdict"],
             ", ".join(f"{c['parts'].count(v)} {v}" for v in VERDICTS if v in c["parts"])] for c in model["claims"]])
        out += ["", "### Comparisons", ""]
        out += _table(["Claim", "Comparison", "n", "Effect", "95% CI", "Wilcoxon p", "Verdict", "Note"], [
            [e["claim"], e["comparison"], str(e["n"]), _num(e["mean"]), _ci(e["ci"]), _num(e["p"], 4), e["verdict"],
             e["note"]] for e in model["comparisons"]])
    return "\n".join(out) + "\n"


def write_files(out_dir: Path, name: str, text: str, data: Any) -> list[Path]:
    """``<name>.md`` and ``<name>.json`` in ``out_dir``."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{name}.md", out_dir / f"{name}.json"]
        paths[0].write_text(text)
        paths[1].write_text(json.dumps(data, indent=1) + "\n")
    except OSError as err:
        raise StudyError(f"cannot write the study to {out_dir}: {err.strerror or err}.") from None
    return paths


def write(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """``study.md`` and ``study.json`` in ``out_dir``."""
    return write_files(out_dir, OUTPUT_NAME, markdown(result), result)


# --- the learning-rate search (issue 17 part 2) ---------------------------------------------------------
def learned(run: RunRecord) -> bool:
    """Whether a run cleared the study's margin over its trivial baseline (docs/cpu_study/README.md): not
    degenerate, and ``LEARNED_MARGIN`` points above it (accuracy: the recorded majority share; correlations: 0)."""
    if run.degenerate(False) or run.best is None:
        return False
    if run.metric == "accuracy":
        return run.majority_baseline is None or run.best >= run.majority_baseline + LEARNED_MARGIN["accuracy"]
    return run.best >= LEARNED_MARGIN["correlation"]


def lr_search(runs: list[RunRecord]) -> dict[str, Any]:
    """The lr search's choice per method (study order) and task, by its one rule (docs/cpu_study/README.md).

    The search task is the one with the most runs; every other task is a check. Per method, the search task's
    held-out score at every lr (``optim.lr`` in the run's variant) ranks the lrs (a tie goes to the smaller). For
    each task, the chosen lr is the best-ranked one at which the method learned on that task's held-out rows
    (``learned``; on the search task that is its best lr that learned at all). ``pending``: (task, lr) of a check
    that has not run yet (no choice for that task until it has); ``edge``: the search task's choice is an end of
    the grid the method ran, so the rule asks for the next half-decade step past it."""
    results: dict[str, dict[str, dict[float, RunRecord]]] = {}
    for run in runs:
        lr = dict(run.key.variant).get("optim.lr")
        if lr is not None and run.status == "completed" and run.best is not None:
            results.setdefault(run.task, {}).setdefault(run.key.method, {})[float(lr)] = run
    if not results:
        raise StudyError("no completed run with an optim.lr setting found: give the search's folder "
                         "(python train.py -m experiment=cpu_study_lr_search writes outputs/cpu_study_lr_search)")
    search_task = max(results, key=lambda task: sum(map(len, results[task].values())))
    checks = sorted(task for task in results if task != search_task)
    order = [spec.method for spec in STUDY_ROWS]
    methods = {}
    for method in sorted(results[search_task], key=lambda m: (order.index(m) if m in order else len(order), m)):
        grid = results[search_task][method]
        lrs = sorted(grid)
        ranked = sorted(lrs, key=lambda lr: (-grid[lr].best, lr))
        chosen: dict[str, float | None] = {}
        pending = []
        for task in [search_task, *checks]:
            chosen[task] = None
            for lr in ranked:
                run = results[task].get(method, {}).get(lr)
                if run is None:
                    pending.append((task, lr))
                    break
                if learned(run):
                    chosen[task] = lr
                    break
        first = chosen[search_task]
        methods[method] = {"label": RowKey(method, None, "none").label, "chosen": chosen, "pending": pending,
                           "edge": first is not None and len(lrs) > 1 and first in (lrs[0], lrs[-1]),
                           "scores": {repr(lr): grid[lr].best for lr in lrs},
                           "degenerate": [repr(lr) for lr in lrs if grid[lr].degenerate(False)],
                           "checks": {task: {repr(lr): {"score": run.best, "degenerate": run.degenerate(False)}
                                             for lr, run in sorted(results[task].get(method, {}).items())}
                                      for task in checks}}
    return {"task": search_task, "check_tasks": checks, "lrs": sorted({lr for by_lr in
            results[search_task].values() for lr in by_lr}), "methods": methods}


def lr_search_markdown(result: dict[str, Any]) -> str:
    """The search as a table: held-out score (points) per method and lr on the search task, its choice in bold,
    one-class runs marked; then each check task's runs; then the chosen lr per task."""
    lrs = [repr(lr) for lr in result["lrs"]]
    tasks = [result["task"], *result["check_tasks"]]

    def cell(entry: dict[str, Any], lr: str) -> str:
        if lr not in entry["scores"]:
            return "–"
        text = _num(entry["scores"][lr]) + (" (one class)" if lr in entry["degenerate"] else "")
        return f"**{text}**" if entry["chosen"][result["task"]] == float(lr) else text

    def check(runs_at: dict[str, dict[str, Any]]) -> str:
        return "; ".join(f"{float(lr):g}: " + ("constant" if r["degenerate"] else _num(r["score"]))
                         for lr, r in runs_at.items()) or "–"

    def choice(entry: dict[str, Any], task: str) -> str:
        lr = entry["chosen"][task]
        if lr is None:
            waiting = [p for t, p in entry["pending"] if t == task]
            return f"pending: {waiting[0]:g}" if waiting else "none learns"
        return f"{lr:g}" + (" (grid edge)" if task == result["task"] and entry["edge"] else "")

    lines = [[entry["label"], *(cell(entry, lr) for lr in lrs),
              *(check(entry["checks"][task]) for task in result["check_tasks"]),
              *(choice(entry, task) for task in tasks)] for entry in result["methods"].values()]
    header = ["Method", *lrs, *(f"{task} held-out" for task in result["check_tasks"]), *(f"lr: {t}" for t in tasks)]
    return "\n".join(_table(header, lines)) + "\n"


def half_decade(lr: float, up: bool) -> float:
    """The next value of the 1-3-10 grid above (or below) ``lr``: 1e-2 -> 3e-2 -> 1e-1; 3e-5 -> 1e-5."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    three = lr / 10 ** exponent > 2
    if up:
        return float(f"1e{exponent + 1}") if three else float(f"3e{exponent}")
    return float(f"1e{exponent}") if three else float(f"3e{exponent - 1}")


def next_runs(result: dict[str, Any]) -> list[str]:
    """The runs the rule still needs, as command lines: a pending check, a step past a grid edge."""
    needed: dict[str, list[str]] = {}
    for method, entry in result["methods"].items():
        for task, lr in entry["pending"]:
            needed.setdefault(task, []).append(f"method={method} optim.lr={lr:g}")
        if entry["edge"]:
            first = entry["chosen"][result["task"]]
            up = first == max(map(float, entry["scores"]))
            needed.setdefault(result["task"], []).append(f"method={method} optim.lr={half_decade(first, up):g}")
    return [f"python train.py -m experiment=cpu_study_lr_search hydra.sweeper.params.task={task} "
            f"\"hydra.sweeper.rows=[{','.join(repr(row) for row in rows)}]\"" for task, rows in needed.items()]


# --- committed results and the README -------------------------------------------------------------------
KEPT_FILES = ("metrics.json", "analysis.json")  # per-run results small enough to commit (never weights)


def collect(folder: Path, dest: Path) -> int:
    """Copy every run's ``KEPT_FILES`` below ``folder`` to the same relative path below ``dest``; the number of
    runs copied. The tables and figures regenerate from ``dest`` alone."""
    copied = 0
    for metrics in sorted(folder.rglob("metrics.json")):
        run = metrics.parent
        target = dest / run.relative_to(folder)
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name in KEPT_FILES:
                if (run / name).is_file():
                    shutil.copy2(run / name, target / name)
        except OSError as err:
            raise StudyError(f"cannot copy the results of {run} to {target}: {err.strerror or err}.") from None
        copied += 1
    return copied


def fill_readme(readme: Path, blocks: dict[str, str]) -> list[str]:
    """Replace the text between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` in ``readme`` by ``blocks[NAME]``;
    the names filled (a README without a block's markers keeps its text)."""
    text, filled = readme.read_text(), []
    for name, block in blocks.items():
        begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = f"{head}{begin}\n{block.strip()}\n{end}{rest.split(end, 1)[1]}"
            filled.append(name)
    readme.write_text(text)
    return filled


class StudyError(SubspaceTuningError):
    """The study's tables cannot be written."""


def parse_args(argv: list[str] | None = None) -> Any:
    parser = ArgumentParser("python -m subspace_tuning.study", __doc__)
    parser.add_argument("folder", metavar="RESULTS_FOLDER", type=Path,
                        help="a sweep folder of run records (metrics.json), e.g. outputs/cpu_study")
    parser.add_argument("--out", type=Path, default=None, help="write study.md and study.json here "
                        "(default: RESULTS_FOLDER)")
    parser.add_argument("--rank", type=positive_int, default=8, help="the rank of the rank-based rows (default 8)")
    parser.add_argument("--last", action="store_true", help="score each run's last evaluation, not its best")
    parser.add_argument("--lr-search", action="store_true", help="RESULTS_FOLDER is the lr search "
                        "(experiment=cpu_study_lr_search): write lr_search.md / .json, the chosen lr per method")
    parser.add_argument("--collect", metavar="DIR", type=Path, default=None, help="only copy each run's "
                        "metrics.json and analysis.json to DIR (same relative paths): the results to commit")
    parser.add_argument("--readme", metavar="README", type=Path, default=None, help="then fill README's generated "
                        "blocks (<!-- begin NAME --> ... <!-- end NAME -->) from the --out folder: " +
                        ", ".join(f"{name} ({file})" for name, file in README_BLOCKS.items()))
    return parser.parse_args(argv)


README_BLOCKS = {"study": f"{OUTPUT_NAME}.md", "lr-search": f"{LR_SEARCH_NAME}.md", "subspace": "subspace_analysis.md"}


def main(argv: list[str] | None = None) -> None:
    """Console entry point; errors are one paragraph on stderr and exit status 2."""
    args = parse_args(argv)
    out = args.out or args.folder
    try:
        if args.collect is not None:
            print(f"copied the results of {collect(args.folder, args.collect)} runs to {args.collect}")
            return
        runs = find_runs([args.folder])
        if args.lr_search:
            result = lr_search(runs)
            text, written = lr_search_markdown(result), write_files(out, LR_SEARCH_NAME, lr_search_markdown(result),
                                                                   result)
            text += "".join(f"\nthe rule needs: {command}" for command in next_runs(result))
        else:
            result = study(runs, args.last, args.rank)
            text, written = markdown(result), write(result, out)
        print(text)
        print("wrote " + ", ".join(str(path) for path in written))
        if args.readme is not None:
            blocks = {name: (out / file).read_text() for name, file in README_BLOCKS.items() if (out / file).is_file()}
            print(f"filled {', '.join(fill_readme(args.readme, blocks)) or 'no block'} of {args.readme}")
    except SubspaceTuningError as err:
        fail(err)
    except OSError as err:
        fail(StudyError(f"cannot read or write {err.filename}: {err.strerror or err}."))


if __name__ == "__main__":
    main()
