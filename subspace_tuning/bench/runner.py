"""One benchmark, phase by phase: settings, rows, train-step timing, memory, eval throughput, SVD set-up, result."""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import torch
from torch import nn

from .memory import measure_memory
from .report import evaluate_targets, load_average, machine, row_summary
from .rows import Row, build_rows, log, random_model, requested_methods, train_step
from .svd_setup import svd_setup
from .timing import ANCHOR_EVERY, add_ratios, anchored_rounds, measure_eval, warm_up


def make_batch(base: nn.Module, batch: int, seq_len: int, device: torch.device, seed: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    vocab = base.config.vocab_size
    return {"input_ids": torch.randint(3, vocab, (batch, seq_len), generator=g).to(device),
            "attention_mask": torch.ones(batch, seq_len, dtype=torch.long, device=device),
            "labels": torch.randint(0, 2, (batch,), generator=g).to(device)}


def describe(args: argparse.Namespace, device: torch.device, methods: list[str]) -> dict[str, Any]:
    """The settings and the machine, as the result records them."""
    settings = {"model": args.model, "batch": args.batch, "seq_len": args.seq_len, "dtype": args.dtype,
                "device": str(device), "rank": args.rank, "repeats": args.repeats, "warmup": args.warmup,
                "threads": torch.get_num_threads(), "methods": methods, **machine(), "load_start": load_average()}
    if device.type == "cuda":
        settings["gpu"] = torch.cuda.get_device_name(device)
    return settings


def time_training(rows: list[Row], batch: dict[str, Any], args: argparse.Namespace, device: torch.device) -> None:
    """Warm-up steps, then the anchored train-step rounds (the frozen row, rows[0], is the anchor)."""
    warm_up(rows, args.warmup, "warm-up", lambda r: train_step(r, batch))
    anchored_rounds(rows, rows[0], "step", args.repeats, ANCHOR_EVERY, lambda r: train_step(r, batch), device)


def measure_memories(rows: list[Row], batch: dict[str, Any], device: torch.device) -> None:
    """Peak memory of every working row, then each row's optimizer state freed before the eval phase (the training
    step leaves no gradients behind)."""
    for row in rows:
        if row.ok:
            try:
                measure_memory(row, batch, device)
            except Exception as err:
                row.fail("memory", err)
    log("[memory] done")
    for row in rows:
        row.optimizer = None
        if row.model is not None:
            row.model.eval()
    gc.collect()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark the parsed command line asks for: {settings, rows, svd_setup, targets}."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes would bury the progress
    began = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = requested_methods(args.methods)
    settings = describe(args, device, methods)
    log(f"[bench] {args.model} batch {args.batch} length {args.seq_len} {args.dtype} on {device}; "
        f"{len(methods)} methods; load average {settings['load_start']}")

    base = random_model(args.model, device, dtype).requires_grad_(False)
    batch = make_batch(base, args.batch, args.seq_len, device)
    rows = build_rows(base, methods, args.rank, with_peft=not args.no_peft)
    time_training(rows, batch, args, device)
    measure_memories(rows, batch, device)
    if not args.no_eval:
        measure_eval(rows, {k: v for k, v in batch.items() if k != "labels"}, args.repeats, device)
    svd = svd_setup(args.svd_model, methods, args.rank, device, dtype) if args.svd_model else {}

    summaries = [row_summary(r, args.batch) for r in rows]
    add_ratios(summaries)
    settings.update(load_end=load_average(), duration_s=round(time.perf_counter() - began, 1))
    return {"settings": settings, "rows": summaries, "svd_setup": svd, "targets": evaluate_targets(summaries, svd)}
