"""End to end: the same fine-tuning job through our runner and through Hugging Face Trainer + PEFT, interleaved.

    python -m subspace_tuning.bench.e2e --data-dir ../shared/glue --json docs/benchmarks_e2e.json
    python -m subspace_tuning.bench.e2e --tasks sst2 --methods lora --pairs 5 --train-samples 1024 --epochs 2
    python -m subspace_tuning.bench.e2e --tasks sst2 --methods lora --seeds 0,1,2 --lr 3e-3 --train-samples 1000
    python -m subspace_tuning.bench.e2e --quick --json /tmp/e2e.json

Each job (task x method) runs as two user processes, ours (``python train.py model=... task=... method=...``) and the
peer (``python -m subspace_tuning.bench.e2e_peer``: Trainer + ``peft.get_peft_model``), alternating ours, peer,
ours, peer ... for ``--pairs`` pairs, so that the load of a shared machine falls on both alike; pair i runs the
i-th of ``--seeds`` on both sides (cycling through them), so that dev scores compare across seeds. Both sides take
every setting from the one Hydra configuration our run composes (rows, dev rows, tokenizer, length, schedule,
weight decay, batch, epochs, seed, torch threads, metric; PEFT config from ``bench.peft_rows.peft_config``) except
the order of the training batches, each side's default unless ``--length-grouping`` says otherwise. Each
process's wall time (the parent's clock from start to exit) is split into start-up (process start to the first
training step), training (optimizer steps and data loading), evaluation (each epoch's dev evaluation) and the rest
(saving the result, exiting); peak memory is the process's peak resident set (``wait4``). The table shows the
median of the pairs per job and the ratio of our total to the peer's; docs/benchmarks.md has the results.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("startup_s", "train_s", "eval_s", "other_s", "total_s")
TARGET_RATIO = 0.7  # issue 15: our wall time at most 0.7x the peer's
QUICK = {"model": "tiny-roberta", "tasks": "toy-sentiment", "methods": "lora", "pairs": 2, "train_samples": 32,
         "eval_samples": 32, "epochs": 1, "batch": 8, "seq_len": 32, "threads": 1}
DEFAULTS = {"model": "minilm", "tasks": "sst2,mrpc", "methods": "lora,dora,ia3,adalora", "pairs": 3,
            "train_samples": 256, "eval_samples": 128, "epochs": 1, "batch": 32, "seq_len": 128, "threads": 1}
GROUPINGS = ("ours", "both", "none")  # --length-grouping: who groups training batches by length
# our runner's log lines (Hydra's job log, train.log) that close the set-up and the run
DATA_READY, SETUP_DONE, RUN_DONE = "data: {", "trainable parameters:", "done: best"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, defaults filled in (``--quick``: ``QUICK``); a bad one exits 2 with one 'error:' paragraph."""
    from ..cli import ArgumentParser, non_negative_int_set, parse_with_presets, positive_float, positive_int

    parser = ArgumentParser("python -m subspace_tuning.bench.e2e", __doc__)
    parser.add_argument("--model", default=None, help="a model of conf/model/ (default minilm)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks of conf/task/ (default sst2,mrpc)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods that PEFT also has (default lora,dora,ia3,adalora)")
    parser.add_argument("--data-dir", default=None,
                        help="folder of GLUE TSVs (default: GLUE_DIR, else ../shared/glue next to the checkout)")
    parser.add_argument("--pairs", type=positive_int, default=None, help="ours/peer pairs per job (default 3)")
    parser.add_argument("--train-samples", type=positive_int, default=None,
                        help="data.max_train_samples: the fixed random training subset (default 256)")
    parser.add_argument("--eval-samples", type=positive_int, default=None,
                        help="data.max_eval_samples: the first n dev rows (default 128)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="epochs, one evaluation each (default 1)")
    parser.add_argument("--batch", type=positive_int, default=None, help="training batch size (default 32)")
    parser.add_argument("--seq-len", type=positive_int, default=None, help="maximum length (default 128)")
    parser.add_argument("--rank", type=positive_int, default=8)
    parser.add_argument("--seeds", type=non_negative_int_set, default={0},
                        help="comma-separated seeds; pair i runs the i-th in increasing order on both sides, cycling "
                        "through them (0,1,2 with --pairs 6 runs each twice; default 0)")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="optim.lr of every method, both sides (default: protocol=simple's lr of the task)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads, both sides (default 1)")
    parser.add_argument("--length-grouping", choices=GROUPINGS, default="ours",
                        help="which side draws length-grouped training batches: ours (the default of both sides: "
                        "ours groups under protocol=simple, the Trainer draws uniformly), both (the Trainer's "
                        "train_sampling_strategy=group_by_length too), none (ours data.group_by_length=false)")
    parser.add_argument("--run-timeout", type=positive_int, default=3600, help="seconds before a run is killed")
    parser.add_argument("--work-dir", default=None, help="keep every run's folder and log here (default: a "
                        "temporary folder, removed at the end)")
    return parse_with_presets(parser, argv, QUICK, DEFAULTS)


# --- jobs ----------------------------------------------------------------------------------------
@dataclass
class Job:
    """One task x method, with our runner's command-line settings and the peer's resolved copy of them."""

    task: str
    method: str
    overrides: list[str]
    peer: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.task}/{self.method}"


def pair_seed(args: argparse.Namespace, pair: int) -> int:
    """The seed of pair ``pair`` (from 1): ``--seeds`` in increasing order, cycling."""
    seeds = sorted(args.seeds)
    return seeds[(pair - 1) % len(seeds)]


def names(spec: str) -> list[str]:
    return [n.strip() for n in spec.split(",") if n.strip()]


def data_dir(args: argparse.Namespace) -> str | None:
    """``--data-dir``, else GLUE_DIR, else ../shared/glue beside the checkout when it exists."""
    if args.data_dir is not None:
        return args.data_dir
    default = ROOT.parent / "shared" / "glue"
    return os.environ.get("GLUE_DIR") or (str(default) if default.is_dir() else None)


def check_options(args: argparse.Namespace) -> None:
    """Every task, method and model named exists, every method has a PEFT counterpart and GLUE tasks have their
    data folder, before anything runs (a ConfigError names what is wrong)."""
    from ..cli import named_model_yaml
    from ..config import CONF_DIR
    from ..errors import ConfigError, choices_message
    from ..methods import REGISTRY, load_all
    from .peft_rows import has_peft_counterpart

    named_model_yaml(args.model)
    tasks = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
    for task in names(args.tasks) or [""]:
        if task not in tasks:
            raise ConfigError(choices_message("--tasks task", task, tasks))
    load_all()
    with_peft = [n for n in REGISTRY if has_peft_counterpart(n)]
    for method in names(args.methods) or [""]:
        if method not in with_peft:
            raise ConfigError(choices_message("--methods method (one Hugging Face PEFT also has)", method, with_peft))
    folder = data_dir(args)
    if folder is not None and not Path(folder).is_dir():
        raise ConfigError(f"--data-dir {folder} is not a folder; give a folder of GLUE TSVs (e.g. ../shared/glue)")
    if args.work_dir is not None and Path(args.work_dir).exists() and any(Path(args.work_dir).iterdir()):
        raise ConfigError(f"--work-dir {args.work_dir} is not empty; give a new or empty folder (the runs of one "
                          "invocation go there and must not mix with earlier ones)")


def ours_overrides(args: argparse.Namespace, task: str, method: str, seed: int) -> list[str]:
    """``python train.py`` settings of the job (output folder and cache aside). protocol=simple: one warmup ratio,
    weight decay and evaluation per epoch for every task (conf/protocol/simple.yaml)."""
    overrides = [f"model={args.model}", f"task={task}", f"method={method}", f"rank={args.rank}", f"seed={seed}",
                 "protocol=simple", f"data.max_train_samples={args.train_samples}",
                 f"data.max_eval_samples={args.eval_samples}", f"data.max_length={args.seq_len}",
                 f"train.epochs={args.epochs}", f"train.batch_size={args.batch}", f"train.threads={args.threads}"]
    folder = data_dir(args)
    uniform = ["data.group_by_length=false"] if args.length_grouping == "none" else []
    lr = [f"optim.lr={args.lr}"] if args.lr is not None else []
    return overrides + uniform + lr + ([f"task.data_dir={folder}"] if folder is not None else [])


def peer_settings(cfg: Any, train_rows: int, threads: int, group_by_length: bool = False) -> dict[str, Any]:
    """The peer's job, resolved from our run's composed configuration ``cfg`` (``train_rows``: the training split's
    size): every setting the Trainer and PEFT need, the PEFT config as a dict; ``group_by_length``: the Trainer's
    length-grouped sampler instead of its default uniform one."""
    from omegaconf import OmegaConf

    from ..config import method_options
    from ..methods import build_method
    from ..models import build_model
    from .peft_rows import peft_config, peft_targets

    rows = min(train_rows, int(cfg.data.max_train_samples))
    total = int(cfg.train.epochs) * math.ceil(rows / int(cfg.train.batch_size))
    # our schedule (train.build_scheduler): warmup_steps when set, else int(warmup_ratio x steps), at most the run
    warmup = cfg.optim.warmup_steps if cfg.optim.warmup_steps is not None else float(cfg.optim.warmup_ratio) * total
    options = method_options(cfg)
    method = build_method(cfg.method.name, options, cfg.rank)
    skeleton = build_model(OmegaConf.merge(cfg.model, {"source": "config"}), int(cfg.task.num_labels), device="meta")
    targets, feedforward = peft_targets(method, skeleton)
    config = peft_config(cfg.method.name, cfg.rank, targets, options, feedforward_module_names=feedforward,
                         total_step=total)
    resolved = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "task")}
    return {**resolved, "max_train_samples": cfg.data.max_train_samples, "max_eval_samples": cfg.data.max_eval_samples,
            "max_length": int(cfg.data.max_length), "lr": float(cfg.optim.lr),
            "weight_decay": float(cfg.optim.weight_decay), "warmup_steps": min(int(warmup), total),
            "max_grad_norm": float(cfg.optim.max_grad_norm), "betas": list(cfg.optim.betas),
            "eps": float(cfg.optim.eps),
            "epochs": int(cfg.train.epochs), "batch_size": int(cfg.train.batch_size),
            "eval_batch_size": int(cfg.train.eval_batch_size), "seed": int(cfg.seed), "threads": threads,
            "total_steps": total, "adalora": cfg.method.name == "adalora", "group_by_length": group_by_length,
            "peft_config": json.loads(json.dumps(config.to_dict(), default=sorted))}


def build_jobs(args: argparse.Namespace) -> list[Job]:
    """Every seed x task x method, composed once here (the peer reads the result, so it never imports Hydra)."""
    from ..config import compose
    from ..data import data_source, read_examples
    from ..errors import ConfigError
    from ..validate import validate_settings

    jobs, train_rows = [], {}
    seeds = sorted({pair_seed(args, pair) for pair in range(1, args.pairs + 1)})  # the seeds the pairs run
    for seed, task, method in itertools.product(seeds, names(args.tasks), names(args.methods)):
        overrides = ours_overrides(args, task, method, seed)
        cfg = validate_settings(compose(overrides))  # a setting our run would refuse stops here, not mid-way
        if len(cfg.task.splits) != 2:  # the peer's Trainer evaluates one dataset
            raise ConfigError(f"task {task} has {len(cfg.task.splits) - 1} evaluation splits; the end-to-end "
                              "benchmark compares tasks with one dev split (MNLI's two are not supported)")
        if data_source(cfg.task) == "hub":  # the Hub is not the same data twice, nor reachable offline
            raise ConfigError(f"task {task} reads GLUE TSVs: give --data-dir (a folder with "
                              f"{cfg.task.tsv.dir}/train.tsv, e.g. ../shared/glue) or set GLUE_DIR")
        if task not in train_rows:
            train_rows[task] = len(read_examples(cfg.task)["train"].labels)
        jobs.append(Job(task, method, overrides, peer_settings(cfg, train_rows[task], args.threads,
                                                              args.length_grouping == "both"), seed))
    return jobs


# --- one process ---------------------------------------------------------------------------------
@dataclass
class Process:
    start: float  # time.time() just before the process starts
    end: float
    returncode: int
    peak_rss_mb: float
    log: Path


def run_process(command: list[str], log: Path, timeout: int) -> Process:
    """Run ``command`` with stdout and stderr in ``log``; its wall time and peak resident set (``wait4``)."""
    import subprocess

    with open(log, "w") as out:
        start = time.time()
        proc = subprocess.Popen(command, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, env=child_env())
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        end = time.time()
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return Process(start, end, proc.returncode, usage.ru_maxrss / 1024, log)  # ru_maxrss: KiB on Linux


def child_env() -> dict[str, str]:
    """This environment, with the checkout first on the import path (the peer runs with ``-m`` from the run's
    folder, where an installed copy could otherwise win)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def log_tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n") if path.exists() else ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def row(job: Job, side: str, pair: int, order: int, proc: Process) -> dict[str, Any]:
    return {"job": job.name, "task": job.task, "method": job.method, "side": side, "pair": pair, "order": order,
            "total_s": round(proc.end - proc.start, 3), "peak_rss_mb": round(proc.peak_rss_mb, 1),
            "returncode": proc.returncode, "error": None}


def log_time(line: str) -> float:
    """time.time() of a Hydra log line, ``[2026-12-03 13:16:42,061][logger][INFO] - ...`` (local time)."""
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_ours(job: Job, folder: Path, cache: Path, pair: int, order: int, timeout: int) -> dict[str, Any]:
    """Our runner as a user runs it; start-up ends at its set-up's last log line (``data_ready_s``: at its data
    line, the loaders built), training and evaluation are the run's recorded ``train_time_s`` and ``eval_time_s``."""
    folder.mkdir(parents=True)
    command = [sys.executable, str(ROOT / "train.py"), *job.overrides, f"output_root={folder / 'out'}",
               f"data.cache_dir={cache}"]
    proc = run_process(command, folder / "process.log", timeout)
    result = row(job, "ours", pair, order, proc)
    found = sorted((folder / "out").rglob("metrics.json"))
    metrics = json.loads(found[0].read_text()) if found else {}
    if proc.returncode != 0 or metrics.get("status") != "completed":
        return {**result, "error": f"exit {proc.returncode}: {log_tail(proc.log)}"}
    lines = (found[0].parent / "train.log").read_text().splitlines()
    marks = {key: next((line for line in lines if key in line), None) for key in (DATA_READY, SETUP_DONE, RUN_DONE)}
    missing = [key for key, line in marks.items() if line is None]
    if missing:  # the runner's log lines are the only time stamps it leaves: say so if they change
        return {**result, "error": f"train.log has no line with {missing[0]!r}; update e2e.py's log markers"}
    data_ready, setup_done, run_done = (log_time(line) for line in marks.values())
    train = float(metrics["train_time_s"])
    headline = metrics["metric"]
    return {**result, "startup_s": round(setup_done - proc.start, 3), "data_ready_s": round(data_ready - proc.start, 3),
            "train_s": train,
            # evaluation as the run timed it; older records: the time between set-up and the end not training
            "eval_s": metrics.get("eval_time_s", round(run_done - setup_done - train, 3)), "steps": metrics["steps"],
            "steps_per_s": metrics["train_steps_per_s"], "metric": headline,
            "score": metrics["best"]["scores"][headline],
            "cached_tokens": any("(cached)" in line for line in lines if "data:" in line)}


def run_peer(job: Job, folder: Path, pair: int, order: int, timeout: int) -> dict[str, Any]:
    """Trainer + PEFT (``bench/e2e_peer.py``); start-up ends at its first training step (``data_ready_s``: its
    rows tokenised)."""
    folder.mkdir(parents=True)
    spec, out = folder / "job.json", folder / "result.json"
    spec.write_text(json.dumps({**job.peer, "output_dir": str(folder / "out")}))
    proc = run_process([sys.executable, "-m", "subspace_tuning.bench.e2e_peer", str(spec), str(out)],
                       folder / "process.log", timeout)
    result = row(job, "peer", pair, order, proc)
    if proc.returncode != 0 or not out.exists():
        return {**result, "error": f"exit {proc.returncode}: {log_tail(proc.log)}"}
    peer = json.loads(out.read_text())
    marks, evaluations = peer["marks"], peer["evaluations"]
    train = marks["train_end"] - marks["first_step"] - peer["eval_seconds"]
    headline = job.peer["task"]["metrics"][0]
    return {**result, "startup_s": round(marks["first_step"] - proc.start, 3),
            "data_ready_s": round(marks["data"] - proc.start, 3), "train_s": round(train, 3),
            "eval_s": round(peer["eval_seconds"], 3), "steps": peer["steps"],
            "steps_per_s": round(peer["steps"] / max(train, 1e-9), 4), "metric": headline,
            "score": max(e["scores"][headline] for e in evaluations), "cached_tokens": False}


def finish_row(result: dict[str, Any]) -> dict[str, Any]:
    if result["error"] is None:
        rest = result["total_s"] - result["startup_s"] - result["train_s"] - result["eval_s"]
        result["other_s"] = round(rest, 3)
    log(f"[e2e] {result['order']:3d} pair {result['pair']} {result['job']:<16} {result['side']:<4} "
        + (f"total {result['total_s']:7.1f} s, score {result['score']:.4f}" if result["error"] is None
           else f"FAILED: {result['error'][:300]}"))
    return result


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_pairs(jobs: list[Job], args: argparse.Namespace, work: Path,
              progress: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Pair after pair, every job of the pair's seed once: ours then the peer. Ours share one tokenisation cache (a
    user's second run of a task reads it; the first tokenises every split). ``progress(rows)`` after every pair of
    runs."""
    rows, order = [], 0
    for pair in range(1, args.pairs + 1):
        for job in (job for job in jobs if job.seed == pair_seed(args, pair)):
            folder = work / f"pair{pair}" / job.task / job.method
            rows.append(finish_row(run_ours(job, folder / "ours", work / "cache", pair, order, args.run_timeout)))
            rows.append(finish_row(run_peer(job, folder / "peer", pair, order + 1, args.run_timeout)))
            order += 2
            if progress is not None:
                progress(rows)
    return rows


# --- summary and table ------------------------------------------------------------------------------
def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def std(values: list[float]) -> float | None:
    """The sample standard deviation (None below two values)."""
    return round(statistics.stdev(values), 4) if len(values) > 1 else None


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per job: each side's median over its completed pairs of every phase, steps/s, peak memory and score (and the
    scores' mean and standard deviation, over seeds with ``--seeds``), our total over the peer's (ratio of the
    medians, and the median of the paired ratios)."""
    summary = []
    for job in dict.fromkeys(r["job"] for r in rows):
        entry: dict[str, Any] = {"job": job}
        done = {side: [r for r in rows if r["job"] == job and r["side"] == side and r["error"] is None]
                for side in ("ours", "peer")}
        for side, runs in done.items():
            entry[side] = {key: median([r[key] for r in runs])
                           for key in (*PHASES, "steps_per_s", "peak_rss_mb", "score")}
            scores = [r["score"] for r in runs]
            entry[side].update(runs=len(runs), scores=scores, score_mean=mean(scores), score_std=std(scores))
        ours, peer = entry["ours"]["total_s"], entry["peer"]["total_s"]
        entry["ratio"] = round(ours / peer, 3) if ours and peer else None
        paired = [o["total_s"] / p["total_s"] for o, p in zip(done["ours"], done["peer"], strict=False)
                  if o["pair"] == p["pair"]]
        entry["paired_ratio"] = median(paired)
        entry["target_met"] = entry["paired_ratio"] is not None and entry["paired_ratio"] <= TARGET_RATIO
        summary.append(entry)
    return summary


def cell(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(summary: list[dict[str, Any]]) -> str:
    """Markdown: per job and side the medians; the ratios on our row."""
    lines = ["| job | side | start-up s | train s | eval s | other s | total s | steps/s | peak RSS MiB | dev score "
             "| ours/peer total (paired) |", "|" + " --- |" * 11]
    for entry in summary:
        for side in ("ours", "peer"):
            s = entry[side]
            ratio = (f"{cell(entry['ratio'], 2)} ({cell(entry['paired_ratio'], 2)})" if side == "ours" else "")
            lines.append(f"| {entry['job']} | {side} | {cell(s['startup_s'])} | {cell(s['train_s'])} | "
                         f"{cell(s['eval_s'])} | {cell(s['other_s'])} | {cell(s['total_s'])} | "
                         f"{cell(s['steps_per_s'], 3)} | {cell(s['peak_rss_mb'], 0)} | {cell(s['score'], 4)} | "
                         f"{ratio} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Console entry point: a bad option or setting exits 2 with one 'error:' paragraph; failed runs are rows
    with their error (and exit status 1 at the end)."""
    from ..cli import fail
    from ..errors import SubspaceTuningError
    from .cli import write_json

    args = parse_args(argv)
    try:
        check_options(args)
        jobs = build_jobs(args)
    except SubspaceTuningError as err:
        fail(err)
    settings = {k: sorted(v) if k == "seeds" else v for k, v in vars(args).items() if k not in ("json", "work_dir")}
    result: dict[str, Any] = {"settings": settings, "data_dir": data_dir(args), "machine": machine(),
                              "command": " ".join(["python -m subspace_tuning.bench.e2e", *(argv or sys.argv[1:])]),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average": [os.getloadavg()],
                              "jobs": [asdict(job) for job in jobs]}

    def record(rows: list[dict[str, Any]], complete: bool = False) -> None:
        """The JSON so far (``complete`` false until the last pair: a long benchmark stopped early keeps its
        finished pairs)."""
        result.update(complete=complete, rows=rows, summary=summarise(rows), target_ratio=TARGET_RATIO)
        if args.json:
            try:
                write_json(result, args.json)
            except SubspaceTuningError as err:
                fail(err, 1)

    with tempfile.TemporaryDirectory(prefix="e2e-") as scratch:
        work = Path(args.work_dir) if args.work_dir else Path(scratch)
        rows = run_pairs(jobs, args, work, record)
    result["load_average"].append(os.getloadavg())
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record(rows, complete=True)
    print(format_table(result["summary"]))
    if any(r["error"] for r in rows):
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
