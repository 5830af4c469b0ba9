"""GLUE data: the Hugging Face Hub (nyu-mll/glue), a local folder of original GLUE TSVs, or the toy task.

Local TSVs are read with no quote handling (RTE and STS-B hold unmatched quotes), CoLA has no header
and MRPC's header starts with a BOM. Every row is checked: a short row or a label outside the task's
label set stops with the file and line number. Tokenised splits are cached on disk, keyed by the data
source, the tokenizer and the max length, so a second run does not tokenise again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, disable_progress_bars, load_from_disk
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers import PreTrainedTokenizerBase as Tokenizer

from .errors import ConfigError, DataError
from .toy_data import GENERATORS

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the tokenised layout changes


@dataclass
class Examples:
    """Raw rows of one split: one tuple of texts (one or two sentences) and one label per row."""

    texts: list[tuple[str, ...]]
    labels: list[int] | list[float]


def data_source(task: DictConfig) -> str:
    """'builtin', 'tsv' (task.data_dir or GLUE_DIR is set) or 'hub'."""
    if task.get("builtin"):
        return "builtin"
    return "tsv" if task.get("data_dir") else "hub"


# --- reading ----------------------------------------------------------------------------------
def tsv_files(task: DictConfig) -> dict[str, Path]:
    """Split name -> TSV path; names the first missing file."""
    folder = Path(str(task.data_dir)).expanduser() / task.tsv.dir
    files = {split: folder / name for split, name in task.splits.items()}
    for path in files.values():
        if not path.is_file():
            raise DataError(f"task {task.name}: data_dir {task.data_dir} has no {task.tsv.dir}/{path.name} "
                            f"(expected {', '.join(f'{task.tsv.dir}/{p.name}' for p in files.values())} "
                            "in the original GLUE TSV layout)")
    return files


def _column_index(column: str | int, header: list[str] | None, path: Path) -> int:
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise DataError(f"{path}: header has no column {column!r} (found {header})")
    return header.index(column)


def read_tsv(path: Path, task: DictConfig) -> Examples:
    """One GLUE TSV file, validated row by row."""
    spec = task.tsv
    labels_in_file = list(spec.labels) if spec.labels is not None else None
    with open(path, encoding="utf-8-sig", newline="") as handle:  # utf-8-sig drops MRPC's BOM
        lines = handle.read().split("\n")
    header = lines[0].rstrip("\r").split("\t") if spec.header else None
    text_idx = [_column_index(c, header, path) for c in spec.text_columns]
    label_idx = _column_index(spec.label_column, header, path)
    needed = max(text_idx + [label_idx]) + 1
    texts, labels = [], []
    for number, line in enumerate(lines[1 if spec.header else 0:], start=2 if spec.header else 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) < needed:
            raise DataError(f"{path}:{number}: malformed row, expected at least {needed} tab-separated "
                            f"columns, found {len(fields)}")
        raw_label = fields[label_idx].strip()
        if labels_in_file is None:
            try:
                label = float(raw_label)
            except ValueError:
                raise DataError(f"{path}:{number}: score {raw_label!r} is not a number") from None
        elif raw_label in labels_in_file:
            label = labels_in_file.index(raw_label)
        else:
            raise DataError(f"{path}:{number}: label {raw_label!r} is not one of the {task.name} labels "
                            f"{labels_in_file}")
        texts.append(tuple(fields[i] for i in text_idx))
        labels.append(label)
    return Examples(texts, labels)


def read_hub(task: DictConfig) -> dict[str, Examples]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(task.hub.path, task.glue_name)
    except Exception as err:  # network errors come in many types; all mean the same to the user
        raise DataError(f"could not load {task.hub.path}/{task.glue_name} from the Hugging Face Hub "
                        f"({type(err).__name__}). Offline, point task.data_dir (or GLUE_DIR) at a folder "
                        "of GLUE TSVs, e.g. task.data_dir=../shared/glue") from err
    splits = {}
    for split in task.splits:
        rows = dataset[split]
        columns = [rows[c] for c in task.hub.text_columns]
        splits[split] = Examples(list(zip(*columns, strict=True)), list(rows["label"]))
    return splits


def read_examples(task: DictConfig) -> dict[str, Examples]:
    """Every split of the task from its source, validated."""
    source = data_source(task)
    if source == "builtin":
        generate = GENERATORS[task.builtin.generator]
        rows = {split: generate(split, size, task.builtin.seed) for split, size in task.builtin.sizes.items()}
        return {split: Examples([t for t, _ in r], [y for _, y in r]) for split, r in rows.items()}
    if source == "tsv":
        return {split: read_tsv(path, task) for split, path in tsv_files(task).items()}
    return read_hub(task)


# --- tokenising with a cache --------------------------------------------------------------------
def _source_fingerprint(task: DictConfig) -> dict[str, Any]:
    source = data_source(task)
    if source == "tsv":
        stats = {split: (str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                 for split, p in tsv_files(task).items()}
        return {"tsv": stats, "spec": OmegaConf.to_container(task.tsv)}
    if source == "builtin":
        return {"builtin": OmegaConf.to_container(task.builtin)}
    return {"hub": [task.hub.path, task.glue_name]}


def cache_key(task: DictConfig, tokenizer: Tokenizer, max_length: int) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "task": task.name, "source": _source_fingerprint(task),
                       "tokenizer": [type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer)],
                       "max_length": max_length}, sort_keys=True, default=str)
    return f"{task.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def tokenize(examples: dict[str, Examples], tokenizer: Tokenizer, max_length: int) -> DatasetDict:
    splits = {}
    for split, ex in examples.items():
        columns = list(zip(*ex.texts, strict=True))
        encoded = tokenizer(*[list(c) for c in columns], truncation=True, max_length=max_length)
        splits[split] = Dataset.from_dict({**encoded, "labels": ex.labels})
    return DatasetDict(splits)


def load_tokenized(task: DictConfig, tokenizer: Tokenizer, max_length: int,
                   cache_dir: str | os.PathLike | None) -> tuple[DatasetDict, bool]:
    """Tokenised splits and whether they came from the cache."""
    if cache_dir is None:
        return tokenize(read_examples(task), tokenizer, max_length), False
    path = Path(cache_dir) / cache_key(task, tokenizer, max_length)
    if path.is_dir():
        return load_from_disk(str(path)), True
    dataset = tokenize(read_examples(task), tokenizer, max_length)
    disable_progress_bars()  # 'Saving the dataset' bars for a cache write are noise
    staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    dataset.save_to_disk(str(staging))
    try:
        staging.rename(path)  # atomic: a half-written cache entry is never picked up
    except OSError:  # another process cached the same split first
        shutil.rmtree(staging, ignore_errors=True)
    return load_from_disk(str(path)), False


# --- loaders ----------------------------------------------------------------------------------
def train_subset(dataset: Dataset, max_samples: int | None) -> Dataset:
    """A fixed random subset (seed 0, the same for every run and seed) so quick runs stay comparable."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=0).select(range(max_samples))


def eval_subset(dataset: Dataset, max_samples: int | None) -> Dataset:
    """The first ``max_samples`` examples (all when None), ordered by length.

    Sorting by length leaves little padding in each dynamically padded batch (evaluation runs ~1.5x faster
    on CPU); the scores do not depend on the order, because logits and labels travel together.
    """
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    lengths = np.fromiter((len(ids) for ids in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
    return dataset.select(np.argsort(lengths, kind="stable"))


def build_dataloaders(cfg: DictConfig, tokenizer: Tokenizer) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The training loader and one evaluation loader per evaluation split, dynamically padded."""
    if "train" not in cfg.task.splits:
        raise ConfigError(f"task {cfg.task.name} has no 'train' split in task.splits")
    dataset, cached = load_tokenized(cfg.task, tokenizer, int(cfg.data.max_length), cfg.data.cache_dir)
    log.info("data: %s (%s)", {s: len(d) for s, d in dataset.items()}, "cached" if cached else "tokenised")
    if int(cfg.model.arch.get("type_vocab_size", 2)) < 2 and "token_type_ids" in dataset["train"].column_names:
        dataset = dataset.remove_columns("token_type_ids")  # RoBERTa / DeBERTaV3 have no segment embeddings
    collate = DataCollatorWithPadding(tokenizer)
    train = train_subset(dataset["train"], cfg.data.max_train_samples)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    train_loader = DataLoader(train, batch_size=int(cfg.train.batch_size), shuffle=True,
                              collate_fn=collate, generator=generator, num_workers=int(cfg.data.num_workers))
    eval_loaders = {
        split: DataLoader(eval_subset(dataset[split], cfg.data.max_eval_samples),
                          batch_size=int(cfg.train.eval_batch_size), collate_fn=collate)
        for split in cfg.task.splits if split != "train"
    }
    return train_loader, eval_loaders
