"""The command line: ``python -m subspace_tuning.bench [options]`` (the package docstring is its ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

QUICK = {"model": "tiny-roberta", "batch": 2, "seq_len": 16, "repeats": 2, "warmup": 1, "threads": 1}
DEFAULTS = {"model": "roberta-base", "batch": 8, "seq_len": 128, "repeats": 7, "warmup": 2, "threads": None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, defaults filled in (``--quick``: ``QUICK``); a bad one exits 2 with one 'error:' line."""
    from .. import bench
    from ..cli import ArgumentParser, non_negative_int, parse_with_presets, positive_int

    parser = ArgumentParser("python -m subspace_tuning.bench", bench.__doc__)
    parser.add_argument("--model", default=None,
                        help="a model of conf/model/, by name (random weights; default roberta-base)")
    parser.add_argument("--batch", type=positive_int, default=None, help="batch size (default 8)")
    parser.add_argument("--seq-len", type=positive_int, default=None, help="sequence length (default 128)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    parser.add_argument("--rank", type=positive_int, default=8)
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed rounds (default 7)")
    parser.add_argument("--warmup", type=non_negative_int, default=None,
                        help="untimed train steps per row (default 2)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-peft", action="store_true", help="skip the Hugging Face PEFT rows")
    parser.add_argument("--no-eval", action="store_true", help="train step and memory only (no eval throughput)")
    parser.add_argument("--svd-model", default=None,
                        help="also time the SVD-based methods' set-up on this model's dimensions (e.g. roberta-large)")
    return parse_with_presets(parser, argv, QUICK, DEFAULTS)


def check_device(spec: str | None) -> None:
    """Refuse a device torch cannot name or this machine does not have, before anything is built."""
    from ..errors import ConfigError

    if spec is None:
        return
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown --device {spec!r}; give cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec} asks for a GPU, but torch sees no CUDA device here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {spec}: the benchmark measures cpu or cuda only")


def check_models(*names: str | None) -> None:
    """Models are names in conf/model/, never paths."""
    from ..cli import named_model_yaml

    for name in names:
        if name is not None:
            named_model_yaml(name)


def write_json(result: dict[str, Any], path: str) -> None:
    from ..errors import ConfigError
    from .rows import log

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1))
    except OSError as err:
        raise ConfigError(f"cannot write --json {path}: {err.strerror or err}; choose another path") from None
    log(f"[bench] wrote {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Console entry point: a command-line mistake exits 2, any other error 1, each with one paragraph."""
    from ..errors import SubspaceTuningError
    from .report import format_table
    from .runner import run

    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        check_device(args.device)
        check_models(args.model, args.svd_model)
        result = run(args)
        print(format_table(result))
        if args.json:
            write_json(result, args.json)
    except SubspaceTuningError as err:
        sys.exit(f"error: {err}")
    finally:
        torch.set_num_threads(threads)  # --threads must not outlive the call (tests run it in-process)
    return result
