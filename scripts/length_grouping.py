"""Padding and step time of shuffled vs length-grouped training batches (data.group_by_length).

    python scripts/length_grouping.py [--glue ../shared/glue] [--batches 8]

For SST-2, MRPC and RTE (the training sets of a local GLUE folder, MiniLM's tokenizer, each task's max length):
the share of padded positions over one epoch of batch-32 batches, shuffled and length-grouped (same seed), and the
mean time of a LoRA training step on MiniLM over ``--batches`` batches spread evenly over each order's epoch (so
both orders' samples stand for a whole epoch), timed in alternation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from subspace_tuning.config import compose
from subspace_tuning.data import LengthGroupedSampler, load_tokenized, padding_fraction, sequence_lengths
from subspace_tuning.methods import build_method
from subspace_tuning.models import build_model, load_tokenizer
from subspace_tuning.step import training_step


def batches_of(order: list[int], batch_size: int) -> list[np.ndarray]:
    return [np.asarray(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glue", default="../shared/glue")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| task | max len | padding shuffled | padding grouped | step shuffled (s) | step grouped (s) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for task in ("sst2", "mrpc", "rte"):
        cfg = compose([f"task={task}", f"task.data_dir={args.glue}", "model=minilm", "method=lora"])
        tokenizer = load_tokenizer(cfg.model)
        data, _ = load_tokenized(cfg.task, tokenizer, int(cfg.data.max_length), cfg.data.cache_dir)
        train = data["train"]
        lengths = sequence_lengths(train)
        shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
        grouped = list(LengthGroupedSampler(lengths, 32, torch.Generator().manual_seed(0)))
        orders = {"shuffled": batches_of(shuffled, 32), "grouped": batches_of(grouped, 32)}
        padding = {name: padding_fraction(lengths, batches) for name, batches in orders.items()}
        model = build_model(cfg.model, int(cfg.task.num_labels), tokenizer)
        method = build_method("lora", {}, 8)
        method.apply(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        collate = DataCollatorWithPadding(tokenizer)
        times: dict[str, list[float]] = {"shuffled": [], "grouped": []}
        picks = {name: np.linspace(0, len(batches) - 1, args.batches).round().astype(int)
                 for name, batches in orders.items()}
        for i in range(args.batches):  # alternate the two orders, batch by batch
            for name, batches in orders.items():
                batch = collate([{k: train[int(j)][k] for k in ("input_ids", "attention_mask", "labels")}
                                 for j in batches[picks[name][i]]])
                tick = time.perf_counter()
                training_step(model, method, batch, optimizer, i + 1, 1000)
                times[name].append(time.perf_counter() - tick)
        med = {name: float(np.mean(t)) for name, t in times.items()}
        print(f"| {task} | {cfg.data.max_length} | {padding['shuffled']:.1%} | {padding['grouped']:.1%} | "
              f"{med['shuffled']:.3f} | {med['grouped']:.3f} | {med['grouped'] / med['shuffled']:.2f} |")


if __name__ == "__main__":
    main()
