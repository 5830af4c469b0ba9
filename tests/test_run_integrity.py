"""Run integrity, case by case, as users meet it: ``python train.py ...`` (or ``python -m subspace_tuning.<tool>``)
in a subprocess, against one table (``CASES``). Each row names the command line, an optional set-up of the files
the run will find (a crafted checkpoint, a corrupt cache entry, a header-only TSV, a held lock ...), the exit
status, a phrase the one-paragraph message must hold and the status the run folder's metrics.json records
afterwards. Every case: no "Traceback" on stderr. README.md, "Run identity", says what each case relies on;
docs/run_integrity.md holds the table with the behaviour before these guarantees.

Runs are 2 steps of tiny-roberta on the built-in toy task (or a 64-row slice of RTE for the data cases), with one
tokenisation cache per session. The selected cases run a few at a time (most of their time is interpreter start-up
and imports): ``RUN_INTEGRITY_JOBS`` sets how many.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RTE_SOURCE = Path(os.environ.get("SUBSPACE_TUNING_SHARED", ROOT.parent / "shared")) / "glue" / "RTE"
JOBS = int(os.environ.get("RUN_INTEGRITY_JOBS", "3"))
TIMEOUT = 600

QUICK = ("model=tiny-roberta", "task=toy-sentiment", "train.max_steps=2", "train.progress=false",
         "train.eval_batch_size=200")
RTE = ("model=tiny-roberta", "task=rte", "task.data_dir={glue}", "data.max_length=64", "train.max_steps=2",
       "train.progress=false", "train.eval_batch_size=200")
NO_RECORD = "no metrics.json"
# Runs as root ignore permission bits; without CAP_DAC_OVERRIDE (setpriv, util-linux) root obeys them like a user.
AS_USER = (["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
           if os.geteuid() == 0 and shutil.which("setpriv") else [])


# --- the workspace of one case --------------------------------------------------------------------------------
@dataclass
class Ctx:
    """Where a case runs: its own folder, output root, data folder; ``folder`` is the run folder of its command."""

    dir: Path
    out: Path
    cache: Path
    glue: Path
    args: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # what a set-up hands to its check

    @property
    def folder(self) -> Path:
        return folder_for(self.out, self.args)


def folder_for(out: Path, args: tuple[str, ...]) -> Path:
    """The run folder of ``python train.py <args>`` (conf/config.yaml: the readable path plus the variant)."""
    from subspace_tuning.resume import run_folder

    given = dict(a.split("=", 1) for a in args if "=" in a and "," not in a)
    path = run_folder(given.get("model", "roberta-base"), given.get("task", "rte"), given.get("method", "lora"),
                      given.get("rank", 8), given.get("mpc", "none"), given.get("seed", 0),
                      [a for a in args if "=" in a])
    return out / given.get("experiment_name", "default") / path


class Session:
    """Folders and runs shared by every case of the session: the tokenisation cache, the RTE slice and the
    completed runs that cases copy (built once, on first use, by whichever case needs them first)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        self.glue = root / "glue"
        self._lock = threading.Lock()
        self._runs: dict[str, Path] = {}
        self._write_rte_slice()

    def _write_rte_slice(self) -> None:
        """64 train and 32 dev rows of RTE, half of each label: flipping every label then keeps the file size
        ('entailment' and 'not_entailment' trade 4 characters). Made-up sentences where the real files are absent."""
        folder = self.glue / "RTE"
        folder.mkdir(parents=True)
        for name, per_label in (("train.tsv", 32), ("dev.tsv", 16)):
            if (RTE_SOURCE / name).is_file():
                header, *rows = (RTE_SOURCE / name).read_text(encoding="utf-8").splitlines(keepends=True)
            else:
                header = "index\tsentence1\tsentence2\tlabel\n"
                rows = [f"{i}\tA cat sat on mat {i}.\tA cat is {'' if i % 2 else 'not '}sitting.\t"
                        f"{'not_entailment' if i % 2 else 'entailment'}\n" for i in range(2 * per_label)]
            kept = [r for label in ("entailment", "not_entailment")
                    for r in [r for r in rows if r.rstrip("\n").endswith(f"\t{label}")][:per_label]]
            (folder / name).write_text(header + "".join(sorted(kept, key=lambda r: int(r.split("\t")[0]))),
                                       encoding="utf-8")

    def completed_run(self, kind: str) -> Path:
        """A completed run folder of ``QUICK`` (kind 'toy') or of ``QUICK`` on the pretrained MiniLM ('minilm')."""
        with self._lock:
            if kind not in self._runs:
                args = QUICK if kind == "toy" else (*QUICK, "model=minilm")
                ctx = Ctx(self.root / f"base-{kind}", self.root / f"base-{kind}" / "out", self.cache, self.glue, args)
                result = launch(ctx, args)
                assert result.returncode == 0, result.stderr[-3000:]
                self._runs[kind] = ctx.folder
            return self._runs[kind]


def launch(ctx: Ctx, args: tuple[str, ...], tool: str | None = None, prefix: list[str] | None = None,
           ) -> subprocess.CompletedProcess:
    """``python train.py <args>`` (output root and cache of ``ctx``), or ``python -m subspace_tuning.<tool>``."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if tool:
        command = [sys.executable, "-m", f"subspace_tuning.{tool}", *args]
    else:
        command = [sys.executable, str(ROOT / "train.py"), *args, f"output_root={ctx.out}",
                   f"data.cache_dir={ctx.cache}"]
    return subprocess.run([*(prefix or []), *command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


# --- set-ups: write what the run will find; may return a function called after the run ------------------------
def own_glue(ctx: Ctx) -> Path:
    """A private copy of the RTE slice (the case edits it)."""
    private = ctx.dir / "glue"
    if not private.exists():
        shutil.copytree(ctx.glue, private)
    ctx.glue = private
    return private / "RTE"


def header_only(name: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        path = own_glue(ctx) / name
        path.write_text(path.read_text().splitlines(keepends=True)[0])

    return setup


def latin1(ctx: Ctx) -> None:
    path = own_glue(ctx) / "dev.tsv"
    path.write_bytes(path.read_bytes() + "99\tLe caf\u00e9 est ferm\u00e9.\tIl est ouvert.\tnot_entailment\n"
                     .encode("latin-1"))


def utf16(ctx: Ctx) -> None:
    path = own_glue(ctx) / "train.tsv"
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))


def binary(ctx: Ctx) -> None:
    (own_glue(ctx) / "train.tsv").write_bytes(bytes(range(256)) * 64)


def missing_dev(ctx: Ctx) -> None:
    (own_glue(ctx) / "dev.tsv").unlink()


def corrupt_checkpoint(ctx: Ctx) -> None:
    ctx.folder.mkdir(parents=True)
    (ctx.folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 this is not a torch checkpoint" * 50)


class Payload:
    """Unpickling this runs a shell command (the classic pickle attack on torch.load(weights_only=False))."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch '{self.marker}'",)


def crafted_checkpoint(ctx: Ctx) -> None:
    import torch

    ctx.folder.mkdir(parents=True)
    ctx.extra["marker"] = ctx.dir / "pwned"
    state = {"fingerprint": Payload(ctx.extra["marker"]), "trained": {}, "progress": Payload(ctx.extra["marker"])}
    torch.save(state, ctx.folder / "checkpoint.pt")


def check_crafted(ctx: Ctx, result: subprocess.CompletedProcess) -> None:
    assert not ctx.extra["marker"].exists(), "loading the checkpoint ran the crafted code"
    assert (ctx.folder / "checkpoint.pt.corrupt").is_file()


def check_corrupt_kept(ctx: Ctx, result: subprocess.CompletedProcess) -> None:
    assert (ctx.folder / "checkpoint.pt.corrupt").is_file() and not (ctx.folder / "checkpoint.pt").exists()


def corrupt_cache(ctx: Ctx) -> None:
    """Every entry of a copy of the warm cache damaged: its dataset_dict.json (or every file) is garbage."""
    ctx.dir.mkdir(parents=True, exist_ok=True)
    SESSION.completed_run("toy")  # warms the session cache
    shutil.copytree(SESSION.cache, ctx.dir / "cache")
    ctx.cache = ctx.dir / "cache"
    damaged = [p for p in ctx.cache.rglob("*") if p.is_file() and p.name == "dataset_dict.json"] \
        or [p for p in ctx.cache.rglob("*") if p.is_file()]
    assert damaged, "the warm cache is empty"
    for path in damaged:
        path.write_bytes(b"\x00garbage{")


def check_cache_rebuilt(ctx: Ctx, result: subprocess.CompletedProcess) -> None:
    entries = [p for p in ctx.cache.rglob("dataset_dict.json")]
    assert entries and all(json.loads(p.read_text()) for p in entries), "the damaged entry was not rebuilt"


def output_root_is_a_file(ctx: Ctx) -> None:
    ctx.dir.mkdir(parents=True, exist_ok=True)
    ctx.out.write_text("a file where the output folder should be\n")


def read_only_output_root(ctx: Ctx) -> None:
    ctx.out.mkdir(parents=True)
    ctx.out.chmod(0o555)


def check_no_escape(ctx: Ctx, result: subprocess.CompletedProcess) -> None:
    """Whatever the seed says, every file is written inside this configuration's part of the output tree."""
    tree = ctx.out / "default" / "tiny-roberta" / "toy-sentiment" / "lora" / "r8" / "mpc-none"
    strays = [p for p in ctx.dir.rglob("*") if p.is_file() and tree not in p.parents]
    assert not strays, f"written outside {tree}: {strays}"


def completed_copy(kind: str = "toy") -> Callable[[Ctx], None]:
    """The folder already holds a completed run of this configuration (a copy of the session's)."""

    def setup(ctx: Ctx) -> None:
        shutil.copytree(SESSION.completed_run(kind), ctx.folder)
        ctx.extra["metrics"] = (ctx.folder / "metrics.json").read_bytes()
        ctx.extra["mtime"] = (ctx.folder / "metrics.json").stat().st_mtime_ns

    return setup


def check_untouched(ctx: Ctx, result: subprocess.CompletedProcess) -> None:
    path = ctx.folder / "metrics.json"
    assert path.read_bytes() == ctx.extra["metrics"] and path.stat().st_mtime_ns == ctx.extra["mtime"]


def other_configuration(ctx: Ctx) -> None:
    """A completed run of another configuration: its config.yaml says optim.weight_decay 0.05 and its fingerprint
    differs (what a changed default in conf/ leaves behind)."""
    from omegaconf import OmegaConf

    completed_copy()(ctx)
    cfg = OmegaConf.load(ctx.folder / "config.yaml")
    cfg.optim.weight_decay = 0.05
    OmegaConf.save(cfg, ctx.folder / "config.yaml")
    record = json.loads((ctx.folder / "metrics.json").read_text())
    record["config_fingerprint"] = "0" * 16
    (ctx.folder / "metrics.json").write_text(json.dumps(record))
    ctx.extra.update(metrics=(ctx.folder / "metrics.json").read_bytes(),
                     mtime=(ctx.folder / "metrics.json").stat().st_mtime_ns)


def flipped_labels(ctx: Ctx) -> None:
    """A completed run on the RTE slice, then every train label flipped: same size, same mtime, other content."""
    train = own_glue(ctx) / "train.tsv"
    first = launch(ctx, tuple(a.format(glue=ctx.glue) for a in ctx.args))
    assert first.returncode == 0, first.stderr[-3000:]
    stat = train.stat()
    swap = {"entailment": "not_entailment", "not_entailment": "entailment"}
    header, *rows = train.read_text().splitlines(keepends=True)
    rows = [r.rstrip("\n").rsplit("\t", 1) for r in rows]
    train.write_text(header + "".join(f"{text}\t{swap[label]}\n" for text, label in rows))
    assert train.stat().st_size == stat.st_size
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    ctx.extra["first"] = json.loads((ctx.folder / "metrics.json").read_text())


def check_superseded(ctx: Ctx, result: subprocess.CompletedProcess) -> None:
    (aside,) = ctx.folder.parent.glob(ctx.folder.name + ".superseded-*")
    old, new = (json.loads((f / "metrics.json").read_text()) for f in (aside, ctx.folder))
    assert old == ctx.extra["first"]
    assert new["data_fingerprint"] != old["data_fingerprint"]
    assert "(tokenised)" in result.stdout + result.stderr  # the cache is keyed by content: the new labels


def hold_lock(ctx: Ctx) -> Callable[[], None]:
    from filelock import FileLock

    ctx.folder.parent.mkdir(parents=True)
    lock = FileLock(str(ctx.folder) + ".lock")
    lock.acquire(timeout=0)
    return lock.release


def metrics_file(text: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        ctx.folder.mkdir(parents=True)
        (ctx.folder / "metrics.json").write_text(text)
        ctx.extra["text"] = text

    return setup


def check_moved_aside(ctx: Ctx, result: subprocess.CompletedProcess) -> None:
    assert (ctx.folder / "metrics.json.invalid").read_text() == ctx.extra["text"]


def run_to_export(kind: str, status: str | None = None, nan: bool = False) -> Callable[[Ctx], None]:
    """A copy of a completed run, its record set to ``status`` or one trained tensor set to NaN; the case exports it."""

    def setup(ctx: Ctx) -> None:
        run = ctx.dir / "run"
        shutil.copytree(SESSION.completed_run(kind), run)
        if status:
            record = json.loads((run / "metrics.json").read_text())
            record.update(status=status, error="the loss became nan at step 2" if status == "failed" else None)
            (run / "metrics.json").write_text(json.dumps(record))
        if nan:
            from safetensors.torch import load_file, save_file

            tensors = load_file(run / "trained.safetensors")
            name = next(k for k, v in tensors.items() if v.is_floating_point())
            tensors[name][0] = float("nan")
            save_file(tensors, run / "trained.safetensors")
        ctx.extra["run"] = run

    return setup


def check_not_exported(ctx: Ctx, result: subprocess.CompletedProcess) -> None:
    assert not (ctx.extra["run"] / "export").exists()


def check_exported(ctx: Ctx, result: subprocess.CompletedProcess) -> None:
    assert (ctx.extra["run"] / "export" / "model.safetensors").is_file()


# --- the table --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # after `python train.py` (output_root and data.cache_dir are added) or the tool's
    code: int  # exit status
    phrase: str | tuple[str, ...]  # in the one-paragraph message (every phrase on the same 'error:' line)
    status: str  # what <run folder>/metrics.json records afterwards, or NO_RECORD: no metrics.json at all
    setup: Callable[[Ctx], Callable[[], None] | None] | None = None
    check: Callable[[Ctx, subprocess.CompletedProcess], None] | None = None
    tool: str | None = None  # python -m subspace_tuning.<tool>
    paragraph: bool = True  # a failure is one 'error: ...' line (Hydra's own command-line errors are its format)
    needs: Callable[[], str | None] | None = None  # why the case cannot run here (a skip), or None


def as_user() -> str | None:
    return "root ignores directory permissions and setpriv is not available" if os.geteuid() == 0 and not AS_USER \
        else None


CASES: list[Any] = [
    # every setting is validated before anything runs: exit 2, nothing recorded
    Case("seed=abc", (*QUICK, "seed=abc"), 2, "seed='abc' is not allowed", NO_RECORD),
    Case("seed=/../../x", (*QUICK, "seed=/../../x"), 2, "seed='/../../x' is not allowed", NO_RECORD,
         check=check_no_escape),
    Case("seed escaping the output root", (*QUICK, "seed=/../../../../../../../../x"), 2, "is not allowed", NO_RECORD,
         check=check_no_escape),
    Case("rank=0", (*QUICK, "rank=0"), 2, "rank=0 is not allowed", NO_RECORD),
    Case("experiment_name=..", (*QUICK, "experiment_name=.."), 2, "experiment_name='..' is not allowed", NO_RECORD),
    Case("optim.lr=-1e-3", (*QUICK, "optim.lr=-1e-3"), 2, "optim.lr=-0.001 is not allowed", NO_RECORD),
    Case("optim.lr=inf", (*QUICK, "optim.lr=inf"), 2, "optim.lr=inf is not allowed", NO_RECORD),
    Case("optim.lr=nan", (*QUICK, "optim.lr=nan"), 2, "optim.lr=nan is not allowed", NO_RECORD),
    Case("optim.betas=[1.5,0.9]", (*QUICK, "optim.betas=[1.5,0.9]"), 2, "optim.betas=[1.5, 0.9] is not allowed",
         NO_RECORD),
    Case("optim.warmup_ratio=1.5", (*QUICK, "optim.warmup_ratio=1.5"), 2, "optim.warmup_ratio=1.5 is not allowed",
         NO_RECORD),
    Case("train.batch_size=0", (*QUICK, "train.batch_size=0"), 2, "train.batch_size=0 is not allowed", NO_RECORD),
    Case("train.eval_batch_size=0", (*QUICK, "train.eval_batch_size=0"), 2, "train.eval_batch_size=0 is not allowed",
         NO_RECORD),
    Case("train.log_every=0", (*QUICK, "train.log_every=0"), 2, "train.log_every=0 is not allowed", NO_RECORD),
    Case("train.eval_steps=-1", (*QUICK, "train.eval_steps=-1"), 2, "train.eval_steps=-1 is not allowed", NO_RECORD),
    Case("data.max_eval_samples=0", (*QUICK, "data.max_eval_samples=0"), 2, "data.max_eval_samples=0 is not allowed",
         NO_RECORD),
    Case("data.max_train_samples=0", (*QUICK, "data.max_train_samples=0"), 2,
         "data.max_train_samples=0 is not allowed", NO_RECORD),
    Case("train.mixed_precision=fp8x", (*QUICK, "train.mixed_precision=fp8x"), 2,
         "train.mixed_precision='fp8x' is not allowed", NO_RECORD),
    Case("task.max_length=0", (*QUICK, "task.max_length=0"), 2, "max_length=0 is not allowed", NO_RECORD),
    Case("task.max_length=1", (*QUICK, "task.max_length=1"), 2, "max_length=1 is not allowed", NO_RECORD),
    Case("model=tiny-roberta task=rte (320 > positions)", ("model=tiny-roberta", "task=rte"), 2,
         ("data.max_length=320 is not allowed", "model tiny-roberta reads at most"), NO_RECORD),
    Case("train.epochs=0", (*QUICK, "train.epochs=0"), 2, "train.epochs=0 is not allowed", NO_RECORD),
    Case("train.epochs=-1", (*QUICK, "train.epochs=-1"), 2, "train.epochs=-1 is not allowed", NO_RECORD),
    Case("train.max_steps=0", (*QUICK, "train.max_steps=0"), 2, "train.max_steps=0 is not allowed", NO_RECORD),
    Case("two bad settings, one paragraph", (*QUICK, "train.batch_size=0", "optim.lr=-1"), 2,
         ("train.batch_size=0 is not allowed", "optim.lr=-1 is not allowed"), NO_RECORD),
    # command-line errors Hydra reports (its own format)
    Case("unknown setting bogus=1", (*QUICK, "bogus=1"), 1, "Key 'bogus' is not in struct", NO_RECORD,
         paragraph=False),
    Case("unknown option --bogus", (*QUICK, "--bogus"), 2, "unrecognized arguments: --bogus", NO_RECORD),
    Case("unknown method=nope", (*QUICK, "method=nope"), 1, "Could not find 'method/nope'", NO_RECORD,
         paragraph=False),
    # a diverging run fails with what and when
    Case("optim.lr=1e30: NaN loss", (*QUICK, "optim.lr=1e30"), 2, "the loss became nan at step 2", "failed"),
    Case("optim.lr=1e38: the Adam step overflows", (*QUICK, "optim.lr=1e38", "train.max_steps=1"), 2, "optim.lr",
         "failed"),
    # data errors: one paragraph naming the file (and line); the run is recorded failed
    Case("header-only train TSV", RTE, 2, "train.tsv: no examples (only a header line)", "failed",
         setup=header_only("train.tsv")),
    Case("header-only dev TSV", RTE, 2, "dev.tsv: no examples (only a header line)", "failed",
         setup=header_only("dev.tsv")),
    Case("non-UTF-8 (Latin-1) TSV", RTE, 2, ("dev.tsv:", "is not UTF-8"), "failed", setup=latin1),
    Case("UTF-16 TSV", RTE, 2, "train.tsv: the file is UTF-16 text", "failed", setup=utf16),
    Case("binary TSV", RTE, 2, ("train.tsv:", "binary file"), "failed", setup=binary),
    Case("missing dev TSV", RTE, 2, "has no RTE/dev.tsv", "failed", setup=missing_dev),
    # checkpoints load weights_only: an unreadable one is moved aside and the run starts again
    Case("corrupt checkpoint.pt", QUICK, 0, "could not be read as a checkpoint", "completed",
         setup=corrupt_checkpoint, check=check_corrupt_kept),
    Case("crafted pickle checkpoint.pt", QUICK, 0, "could not be read as a checkpoint", "completed",
         setup=crafted_checkpoint, check=check_crafted),
    # the tokenisation cache: a damaged entry is rebuilt
    Case("corrupt tokenisation-cache entry", QUICK, 0, "tokenising again", "completed", setup=corrupt_cache,
         check=check_cache_rebuilt),
    # the output location
    Case("output root is a file", QUICK, 2, "is a file where a folder is needed", NO_RECORD,
         setup=output_root_is_a_file),
    Case("unwritable output root", QUICK, 2, "permission", NO_RECORD, setup=read_only_output_root,
         needs=as_user),
    # a metrics.json that is not a run record is moved aside, never aborts a sweep
    Case("metrics.json = [1,2] in a sweep", ("-m", *QUICK), 0, "Launching 1 jobs", "completed",
         setup=metrics_file("[1, 2]"), check=check_moved_aside),
    Case("truncated metrics.json", QUICK, 0, "toy-sentiment accuracy: best", "completed",
         setup=metrics_file('{"status": "compl'), check=check_moved_aside),
    # run identity: never overwrite another configuration, supersede on new data, one launch at a time
    Case("relaunch of a completed run", QUICK, 0, "already complete, not run again", "completed",
         setup=completed_copy(), check=check_untouched),
    Case("completed run of another configuration", QUICK, 2,
         ("holds a completed run of a different configuration", "optim.weight_decay 0.05 -> 0.01",
          "It is not overwritten"), "completed", setup=other_configuration, check=check_untouched),
    Case("same-size label flip", RTE, 0, "the data changed since", "completed", setup=flipped_labels,
         check=check_superseded),
    Case("second launch while the lock is held", QUICK, 2, "another process is running this configuration",
         NO_RECORD, setup=hold_lock),
    # export refuses what is not a result
    Case("export of NaN trained tensors", ("{run}",), 2, "non-finite values", "completed", tool="export",
         setup=run_to_export("minilm", nan=True), check=check_not_exported),
    Case("export of a failed run", ("{run}",), 2, "is not a completed run: its metrics.json says status 'failed'",
         "failed", tool="export", setup=run_to_export("minilm", status="failed"), check=check_not_exported),
    Case("export of a running run", ("{run}",), 2, "says status 'running'", "running", tool="export",
         setup=run_to_export("minilm", status="running"), check=check_not_exported),
    Case("export of a completed run", ("{run}",), 0, "exported to", "completed", tool="export",
         setup=run_to_export("minilm"), check=check_exported),
    # the small CLIs answer --help and reject what they do not know
    Case("params --help", ("--help",), 0, "usage: python -m subspace_tuning.params", NO_RECORD, tool="params"),
    Case("params --model /etc/passwd", ("--model", "/etc/passwd"), 1, "'/etc/passwd' is not a model name",
         NO_RECORD, tool="params"),
    Case("params model=/etc/passwd", ("model=/etc/passwd",), 2, "unrecognized arguments: model=/etc/passwd",
         NO_RECORD, tool="params"),
    Case("params --bogus", ("--bogus",), 2, "unrecognized arguments: --bogus", NO_RECORD, tool="params"),
    Case("export --help", ("--help",), 0, "usage: python -m subspace_tuning.export", NO_RECORD, tool="export"),
    Case("export --bogus", ("no/such/run", "--bogus"), 2, "unrecognized arguments: --bogus", NO_RECORD,
         tool="export"),
    Case("report --help", ("--help",), 0, "python -m subspace_tuning.report", NO_RECORD, tool="report"),
    Case("report --bogus", ("outputs", "--bogus"), 2, "unrecognized arguments: --bogus", NO_RECORD, tool="report"),
    Case("bench --help", ("--help",), 0, "python -m subspace_tuning.bench", NO_RECORD, tool="bench"),
    Case("bench --bogus", ("--bogus",), 2, "unrecognized arguments: --bogus", NO_RECORD, tool="bench"),
]


def case_of(row: Any) -> Case:
    return row.values[0] if hasattr(row, "values") else row


# --- running the table ------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    ctx: Ctx
    result: subprocess.CompletedProcess | None = None
    error: BaseException | None = None
    skipped: str | None = None
    seconds: float = 0.0


SESSION: Session


def run_case(case: Case, root: Path) -> Outcome:
    # the folder name ends up in output_root=...: Hydra's override grammar takes no '=', spaces or brackets there
    ctx = Ctx(root / "cases" / re.sub(r"[^A-Za-z0-9._-]", "_", case.id), Path(), SESSION.cache, SESSION.glue,
              case.args)
    ctx.out = ctx.dir / "out"
    outcome = Outcome(ctx)
    if case.needs and (why := case.needs()):
        outcome.skipped = why
        return outcome
    start = time.perf_counter()
    try:
        ctx.dir.mkdir(parents=True, exist_ok=True)
        release = case.setup(ctx) if case.setup else None
        try:
            args = tuple(a.format(glue=ctx.glue, run=ctx.extra.get("run")) for a in case.args)
            outcome.result = launch(ctx, args, case.tool, AS_USER if case.needs is as_user else None)
        finally:
            if release:
                release()
    except BaseException as err:  # noqa: BLE001 - reported by the case's own test
        outcome.error = err
    outcome.seconds = time.perf_counter() - start
    return outcome


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every selected case of the table, a few at a time."""
    global SESSION
    root = tmp_path_factory.mktemp("run-integrity")
    SESSION = Session(root)
    here = Path(__file__).resolve()
    selected = [item.callspec.params["case"] for item in request.session.items
                if Path(str(item.path)).resolve() == here and hasattr(item, "callspec")
                and "case" in item.callspec.params]
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        return dict(zip([c.id for c in selected], pool.map(lambda c: run_case(c, root), selected), strict=True))


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error: " in line]
    assert lines, f"no 'error: ' line on stderr:\n{stderr[-3000:]}"
    return lines[-1]


@pytest.mark.parametrize("case", CASES, ids=[case_of(c).id for c in CASES])
def test_case(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    if outcome.error:
        raise outcome.error
    result, ctx = outcome.result, outcome.ctx
    shown = f"exit {result.returncode}\n--- stdout\n{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, shown
    assert result.returncode == case.code, shown
    phrases = (case.phrase,) if isinstance(case.phrase, str) else case.phrase
    text = error_line(result.stderr) if case.code and case.paragraph else result.stdout + result.stderr
    for phrase in phrases:
        assert phrase in text, shown
    if case.status == NO_RECORD:
        records = sorted(ctx.out.rglob("metrics.json")) if ctx.out.is_dir() else []
        assert not records, records
    else:
        folder = ctx.extra.get("run", ctx.folder)
        assert json.loads((folder / "metrics.json").read_text())["status"] == case.status, shown
    if case.check:
        case.check(ctx, result)


def test_the_table_is_large_and_unique() -> None:
    ids = [case_of(c).id for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


# --- sweeps -----------------------------------------------------------------------------------------------------
def sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    ctx = Ctx(tmp_path, tmp_path / "out", tmp_path / "cache", tmp_path)
    result = launch(ctx, ("-m", *QUICK, *args))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def test_a_sweep_over_lr_writes_two_runs_and_a_relaunch_runs_nothing(tmp_path: Path) -> None:
    sweep(tmp_path, "optim.lr=1e-3,2e-3")
    records = sorted((tmp_path / "out").rglob("metrics.json"))
    # two folders, one per lr (the folder's spelling of the value is the variant's business)
    assert len({p.parent for p in records}) == 2 and all("optim.lr=" in p.parent.parent.name for p in records)
    assert [json.loads(p.read_text())["status"] for p in records] == ["completed", "completed"]
    assert sorted(float(json.loads(p.read_text())["variant"]["optim.lr"]) for p in records) == [1e-3, 2e-3]
    mtimes = [p.stat().st_mtime_ns for p in records]
    again = sweep(tmp_path, "optim.lr=1e-3,2e-3")
    assert "skipping 2 completed runs" in again.stdout + again.stderr, again.stdout + again.stderr
    assert [p.stat().st_mtime_ns for p in records] == mtimes
    assert sorted((tmp_path / "out").rglob("metrics.json")) == records


def test_a_rank_free_method_swept_over_ranks_is_one_run(tmp_path: Path) -> None:
    result = sweep(tmp_path, "method=ia3", "rank=2,8")
    records = sorted((tmp_path / "out").rglob("metrics.json"))
    assert len(records) == 1 and "/ia3/no-rank/" in str(records[0]), records
    assert json.loads(records[0].read_text())["status"] == "completed"
    assert "1 jobs that repeat a run" in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_single_run_finds_the_same_run_of_a_sweep(tmp_path: Path) -> None:
    sweep(tmp_path, "optim.lr=1e-3,2e-3")
    ctx = Ctx(tmp_path, tmp_path / "out", tmp_path / "cache", tmp_path)
    single = launch(ctx, (*QUICK, "optim.lr=1e-3"))
    assert single.returncode == 0 and "already complete, not run again" in single.stdout + single.stderr
    assert len(list((tmp_path / "out").rglob("metrics.json"))) == 2
