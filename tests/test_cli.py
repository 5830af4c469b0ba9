"""The small command-line tools behave: ``--help`` prints usage with an example and exits 0; a command line they
cannot take is one ``error: ...`` paragraph on stderr naming the argument, with a non-zero exit and never a
traceback. Each case runs ``python -m subspace_tuning.<tool>`` in a subprocess, as users run it; only cheap cases
(help and argument errors, and one small parameter table)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

# (tool and arguments, exit status, phrase in stdout + stderr)
CASES = [
    # --help / -h: usage, the arguments, an example; exit 0
    ("params --help", 0, "usage: python -m subspace_tuning.params [-h] [--model NAME]"),
    ("params -h", 0, "python -m subspace_tuning.params --model roberta-large --format json"),
    ("export --help", 0, "usage: python -m subspace_tuning.export [-h] [--format {merged,peft}]"),
    ("export -h", 0, "python -m subspace_tuning.export <run folder> --out exported/mrpc-dora"),
    ("report --help", 0, "python -m subspace_tuning.report outputs/table2_roberta_base"),
    ("report -h", 0, "--stat {mean,median}"),
    ("bench --help", 0, "python -m subspace_tuning.bench --methods lora,dora"),
    ("study --help", 0, "python -m subspace_tuning.study outputs/cpu_study --out docs/cpu_study"),
    # unknown or missing arguments: exit 2, the argument named, the accepted ones listed
    ("params --bogus", 2, "error: unrecognized arguments: --bogus; usage: python -m subspace_tuning.params [-h]"),
    ("params model=roberta-base", 2, "error: unrecognized arguments: model=roberta-base; usage:"),  # the old form
    ("params roberta-base", 2, "error: unrecognized arguments: roberta-base; usage:"),
    ("params --format xml", 2, "error: argument --format: invalid choice: 'xml' (choose from 'table', 'json')"),
    ("params --model tiny-roberta --model minilm", 2, "error: argument --model: given twice (tiny-roberta, minilm)"),
    ("params --mod tiny-roberta", 2, "error: unrecognized arguments: --mod tiny-roberta"),  # no abbreviations
    ("export", 2, "error: the following arguments are required: RUN_FOLDER; usage:"),
    ("export run_a run_b", 2, "error: unrecognized arguments: run_b; usage: python -m subspace_tuning.export"),
    ("export run_a --outt x", 2, "error: unrecognized arguments: --outt x"),
    ("export run_a --force", 2, "error: unrecognized arguments: --force"),
    ("export run_a out=x", 2, "error: unrecognized arguments: out=x"),  # the old form
    ("report", 2, "error: the following arguments are required: folders; usage: python -m subspace_tuning.report"),
    ("report outputs --bogus", 2, "error: unrecognized arguments: --bogus; usage:"),
    ("report outputs --stat mode", 2, "error: argument --stat: invalid choice: 'mode' (choose from 'mean', 'median')"),
    ("bench --bogus", 2, "error: unrecognized arguments: --bogus; usage: python -m subspace_tuning.bench [-h]"),
    # models come from conf/model/ only: a path or a file name is refused (exit 1, like an unknown model)
    ("params --model /etc/hostname", 1, "error: model '/etc/hostname' is not a model name: models come from"),
    ("params --model ../model/tiny-roberta", 1, "is not a model name"),
    ("params --model tiny-roberta.yaml", 1, "named by their file name without .yaml"),
    ("params --model nope", 1, "error: unknown model 'nope'; choose one of: deberta-v3-base"),
    ("bench --quick --model ../model/tiny-roberta", 1, "error: model '../model/tiny-roberta' is not a model name"),
    # the script that is not part of the package follows the same convention
    ("analyze --help", 0, "usage: python -m subspace_tuning.analyze [-h]"),
    ("analyze /nonexistent/run", 2, "error: /nonexistent/run is not a folder; give a run folder or a sweep"),
    ("scripts/profile_svd.py --help", 0, "python scripts/profile_svd.py --model roberta-base --threads 1"),
    ("scripts/profile_svd.py --batch 0", 2, "error: argument --batch: invalid positive_int value: '0'; usage:"),
    ("scripts/profile_svd.py --model ../model/tiny-roberta", 1, "is not a model name"),
    # errors after parsing: still one paragraph
    ("export no/such/run", 2, "error: no/such/run is not a finished run folder: config.yaml is missing"),
    ("report no/such/sweep", 2, "error: no such folder: no/such/sweep"),
    ("study no/such/sweep", 2, "error: no such folder: no/such/sweep"),
    # and a command that works
    ("params --model tiny-roberta", 0, "lora                 8"),
]


ROOT = Path(__file__).resolve().parents[1]
# each a console script subspace-tuning-<tool>
TOOLS = ("train", "params", "export", "report", "bench", "predict", "analyze", "study")


def _run(args: str) -> subprocess.CompletedProcess:
    tool, *rest = args.split()
    command = [str(ROOT / tool)] if tool.endswith(".py") else ["-m", f"subspace_tuning.{tool}"]
    return subprocess.run([sys.executable, *command, *rest], capture_output=True, text=True, timeout=300, cwd=ROOT)


@cache
def results() -> dict[str, subprocess.CompletedProcess]:
    """Every case at once, in parallel processes (most of the time is interpreter and import start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip([c[0] for c in CASES], pool.map(_run, [c[0] for c in CASES]), strict=True))


@pytest.mark.parametrize("args, code, phrase", CASES, ids=[c[0] for c in CASES])
def test_cli(args: str, code: int, phrase: str) -> None:
    result = results()[args]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout[-500:], result.stderr)
    assert phrase in result.stdout + result.stderr, (result.stdout[-1000:], result.stderr)
    if code:  # one paragraph: a single 'error: ...' line, nothing else on stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    else:
        assert result.stderr == "" or "usage" not in result.stderr


def test_bench_counts_are_positive(capsys: pytest.CaptureFixture) -> None:
    from subspace_tuning.bench import parse_args  # in-process: a bench subprocess spends seconds importing torch

    assert parse_args(["--batch", "3", "--warmup", "0"]).batch == 3
    for args in (["--batch", "0"], ["--repeats", "-1"], ["--warmup", "-1"], ["--rank", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(f"error: argument {args[0]}: invalid ") and "\n" not in \
            err.rstrip("\n")


def test_every_tool_is_a_console_script() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(scripts) == sorted(f"subspace-tuning-{tool}" for tool in TOOLS)
    for tool in TOOLS:
        module, _, attr = scripts[f"subspace-tuning-{tool}"].partition(":")
        assert module == f"subspace_tuning.{tool}" and callable(getattr(importlib.import_module(module), attr))


def test_a_console_script_names_itself(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from subspace_tuning.report import parse_args

    monkeypatch.setattr(sys, "argv", ["/venv/bin/subspace-tuning-report", "outputs", "--bogus"])
    with pytest.raises(SystemExit) as exit_info:
        parse_args(None)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: unrecognized arguments: --bogus; usage: "
                                                        "subspace-tuning-report [-h]")
    assert err.rstrip().endswith("see subspace-tuning-report --help")
