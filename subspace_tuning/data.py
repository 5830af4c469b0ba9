"""GLUE data: the Hugging Face Hub (nyu-mll/glue), a local folder of original GLUE TSVs, or the toy task.

Local TSVs are read with no quote handling (RTE and STS-B hold unmatched quotes), CoLA has no header
and MRPC's header starts with a BOM. Every file and row is checked: an empty or header-only file, a file
that is not UTF-8 text, a short row or a label outside the task's label set stops with the file (and line)
as a DataError. Tokenised splits are cached on disk, keyed by a hash of the data's content, the tokenizer
and the max length, so a second run does not tokenise again and an edited file is never served stale.

The GLUE test splits (``read_test_examples``, for the leaderboard files of ``subspace_tuning.predict``) have their
own layout: an index column and no label in the TSVs, label -1 and an ``idx`` column on the Hub.
"""

from __future__ import annotations

import functools
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
SUBSET_SHARE = 0.25  # a run using at most this share of its task's rows tokenises only them, uncached (run_rows)


@dataclass
class Examples:
    """Raw rows of one split: one tuple of texts (one or two sentences) and one label per row."""

    texts: list[tuple[str, ...]]
    labels: list[int] | list[float]

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: Any) -> Examples:
        return Examples([self.texts[i] for i in indices], [self.labels[i] for i in indices])


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


def _line_at(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _decode(raw: bytes, path: Path) -> str:
    """The text of a TSV file, or a DataError saying why the bytes are not UTF-8 text (and where)."""
    if not raw:
        raise DataError(f"{path}: the file is empty (0 bytes); expected tab-separated GLUE rows")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: the file is UTF-16 text; GLUE TSVs are UTF-8: convert it, e.g. "
                        f"iconv -f UTF-16 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}, and use that")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(f"{path}:{_line_at(raw, nul)}: NUL byte at offset {nul}: this is a binary file "
                        "(or UTF-16 without a byte-order mark), not a tab-separated UTF-8 text file")
    try:
        return raw.decode("utf-8-sig")  # utf-8-sig drops MRPC's BOM
    except UnicodeDecodeError as err:
        raise DataError(f"{path}:{_line_at(raw, err.start)}: byte 0x{raw[err.start]:02x} at offset "
                        f"{err.start} is not UTF-8; GLUE TSVs are UTF-8: re-encode the file (e.g. iconv -f "
                        "LATIN1 -t UTF-8 for Latin-1 text) or check that it is the right file") from None


def _tsv_rows(path: Path, header: bool) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """The header (None without one) and every non-blank row of a TSV file as (line number, fields)."""
    lines = _decode(path.read_bytes(), path).split("\n")
    head = lines[0].rstrip("\r").split("\t") if header else None
    rows = [(number, line.rstrip("\r").split("\t"))
            for number, line in enumerate(lines[1 if header else 0:], start=2 if header else 1) if line.strip()]
    return head, rows


def _check_width(path: Path, number: int, fields: list[str], needed: int) -> None:
    if len(fields) < needed:
        raise DataError(f"{path}:{number}: malformed row, expected at least {needed} tab-separated "
                        f"columns, found {len(fields)}")


def read_tsv(path: Path, task: DictConfig) -> Examples:
    """One GLUE TSV file, validated file first, then row by row."""
    spec = task.tsv
    labels_in_file = list(spec.labels) if spec.labels is not None else None
    header, rows = _tsv_rows(path, bool(spec.header))
    text_idx = [_column_index(c, header, path) for c in spec.text_columns]
    label_idx = _column_index(spec.label_column, header, path)
    needed = max(text_idx + [label_idx]) + 1
    texts, labels = [], []
    for number, fields in rows:
        _check_width(path, number, fields, needed)
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
    if not labels:
        raise DataError(f"{path}: no examples" + (" (only a header line)" if spec.header else "")
                        + f"; every {task.name} split needs at least one row")
    return Examples(texts, labels)


def _load_hub(path: str, name: str) -> DatasetDict:
    from datasets import load_dataset

    try:
        return load_dataset(path, name)
    except Exception as err:  # network errors come in many types; all mean the same to the user
        raise DataError(f"could not load {path}/{name} from the Hugging Face Hub ({type(err).__name__}). "
                        "Offline, point task.data_dir (or GLUE_DIR; subspace_tuning.predict: --data-dir) at a "
                        "folder of GLUE TSVs, e.g. task.data_dir=../shared/glue") from err


def read_hub(task: DictConfig) -> dict[str, Examples]:
    dataset = _load_hub(task.hub.path, task.glue_name)
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



# --- GLUE test splits ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TestSplit:
    """One GLUE test split: its file in the original TSV layout (header, an index column, no label), its Hub
    config and split (label -1, an ``idx`` column), and the leaderboard file that its predictions go to."""

    name: str
    tsv: str                              # path under the GLUE folder
    text_columns: tuple[str, ...]         # header names in that file
    submission: str                       # the file name the GLUE leaderboard expects in the zip
    index_column: str = "index"
    hub_config: str | None = None         # None: the task's own (``task.glue_name``)
    hub_text_columns: tuple[str, ...] | None = None  # None: the task's own (``task.hub.text_columns``)
    optional: bool = False                # written where present (the diagnostic set, AX)


def _single(folder: str, submission: str, *columns: str, index: str = "index") -> tuple[TestSplit, ...]:
    return (TestSplit("test", f"{folder}/test.tsv", columns, submission, index),)


# The test files of the GLUE download (download_glue_data.py, the layout task.data_dir points at) and the
# submission files of gluebenchmark.com. AX, the diagnostic set, is predicted by the MNLI model (its labels).
# WNLI is not a task of this project (the paper leaves it out, as BERT and RoBERTa did).
GLUE_TEST_SPLITS: dict[str, tuple[TestSplit, ...]] = {
    "cola": _single("CoLA", "CoLA.tsv", "sentence"),
    "sst2": _single("SST-2", "SST-2.tsv", "sentence"),
    "mrpc": _single("MRPC", "MRPC.tsv", "#1 String", "#2 String"),
    "stsb": _single("STS-B", "STS-B.tsv", "sentence1", "sentence2"),
    "qqp": _single("QQP", "QQP.tsv", "question1", "question2", index="id"),
    "mnli": (TestSplit("test_matched", "MNLI/test_matched.tsv", ("sentence1", "sentence2"), "MNLI-m.tsv"),
             TestSplit("test_mismatched", "MNLI/test_mismatched.tsv", ("sentence1", "sentence2"), "MNLI-mm.tsv"),
             TestSplit("test", "diagnostic/diagnostic.tsv", ("sentence1", "sentence2"), "AX.tsv", hub_config="ax",
                       hub_text_columns=("premise", "hypothesis"), optional=True)),
    "qnli": _single("QNLI", "QNLI.tsv", "question", "sentence"),
    "rte": _single("RTE", "RTE.tsv", "sentence1", "sentence2"),
}


@dataclass
class TestExamples:
    """Rows of one test split: the index the leaderboard file must repeat and the texts (no labels)."""

    indices: list[str]
    texts: list[tuple[str, ...]]


def test_splits(task: DictConfig) -> tuple[TestSplit, ...]:
    """The GLUE test splits of ``task``; a DataError for a task that has none (the built-in task)."""
    splits = GLUE_TEST_SPLITS.get(str(task.get("glue_name")))
    if splits is None:
        raise DataError(f"task {task.name} has no GLUE test split (test predictions are for the GLUE tasks: "
                        f"{', '.join(sorted(GLUE_TEST_SPLITS))})")
    return splits


def read_test_tsv(path: Path, split: TestSplit) -> TestExamples:
    """One GLUE test TSV (header, index column, no label), validated like ``read_tsv``."""
    header, rows = _tsv_rows(path, header=True)
    index_idx = _column_index(split.index_column, header, path)
    text_idx = [_column_index(c, header, path) for c in split.text_columns]
    needed = max(text_idx + [index_idx]) + 1
    indices, texts = [], []
    for number, fields in rows:
        _check_width(path, number, fields, needed)
        indices.append(fields[index_idx].strip())
        texts.append(tuple(fields[i] for i in text_idx))
    if not indices:
        raise DataError(f"{path}: no examples (only a header line); a GLUE test file has one row per example")
    return TestExamples(indices, texts)


def read_test_examples(task: DictConfig, data_dir: str | os.PathLike | None = None) -> dict[TestSplit, TestExamples]:
    """The test splits of a GLUE task, from the TSVs in ``data_dir`` (default ``task.data_dir``) or, when neither
    is set, from the Hub. A missing test file is a DataError naming what is expected; a missing optional split
    (AX) is left out."""
    splits = test_splits(task)
    folder = data_dir if data_dir is not None else task.get("data_dir")
    if not folder:
        return _read_test_hub(task, splits)
    folder = Path(str(folder)).expanduser()
    if not folder.is_dir():
        raise DataError(f"task {task.name}: the GLUE data folder {folder} does not exist (or is not a folder)")
    found = {split: folder / split.tsv for split in splits if (folder / split.tsv).is_file()}
    missing = [split.tsv for split in splits if split not in found and not split.optional]
    if missing:
        raise DataError(f"task {task.name}: {folder} has no {', '.join(missing)}. The GLUE test splits come with the "
                        f"original GLUE download (download_glue_data.py: test.tsv, MNLI test_matched.tsv and "
                        f"test_mismatched.tsv, diagnostic/diagnostic.tsv), with an index column and no label; put "
                        f"them there or point --data-dir at a folder that has them (a run trained without a data "
                        f"folder reads the Hub's test split)")
    for split in splits:
        if split not in found:
            log.info("%s: no %s in %s; %s is left out", task.name, split.tsv, folder, split.submission)
    return {split: read_test_tsv(path, split) for split, path in found.items()}


def _read_test_hub(task: DictConfig, splits: tuple[TestSplit, ...]) -> dict[TestSplit, TestExamples]:
    examples, loaded = {}, {}
    for split in splits:
        config = split.hub_config or task.glue_name
        if config not in loaded:  # MNLI's two test splits come in one load
            loaded[config] = _load_hub(task.hub.path, config)
        rows = loaded[config][split.name]
        columns = [rows[c] for c in split.hub_text_columns or task.hub.text_columns]
        examples[split] = TestExamples([str(i) for i in rows["idx"]], list(zip(*columns, strict=True)))
    return examples

# --- data identity --------------------------------------------------------------------------------
HASH_CHUNK = 1 << 20  # 1 MiB reads: constant memory whatever the file size


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """sha256 of a file's bytes, memoised on its stat so a sweep hashes each file once per process.

    Only ``path`` is read; the other arguments are the memo key (a rewrite changes them, a new process starts empty).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex digest of the bytes of ``path`` (memoised per resolved path, size, mtime, ctime, inode)."""
    resolved = path.resolve()
    stat = resolved.stat()
    return _file_sha256(str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def _data_identity(task: DictConfig) -> dict[str, Any]:
    source = data_source(task)
    if source == "tsv":  # content only: a copy of the same files elsewhere is the same data
        return {"tsv": {split: file_sha256(path) for split, path in tsv_files(task).items()}}
    if source == "builtin":
        return {"builtin": OmegaConf.to_container(task.builtin)}
    # The Hub revision (commit) is not known offline, so a dataset updated on the Hub keeps its fingerprint.
    return {"hub": [task.hub.path, task.glue_name]}


def data_fingerprint(task: DictConfig) -> str:
    """16-hex-digit digest of the task's data content, the same in every process.

    Local TSVs: the sha256 of the bytes of every split file the task reads (``task.splits``), so a same-size
    edit changes it. The built-in task: its generator settings. The Hub: the dataset path and config name only.
    Raises DataError when a TSV is missing.
    """
    blob = json.dumps(_data_identity(task), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- tokenising with a cache --------------------------------------------------------------------
def cache_key(task: DictConfig, tokenizer: Tokenizer, max_length: int) -> str:
    spec = OmegaConf.to_container(task.tsv) if data_source(task) == "tsv" else None  # how the files are parsed
    blob = json.dumps({"format": CACHE_FORMAT, "task": task.name, "data": data_fingerprint(task), "tsv": spec,
                       "splits": OmegaConf.to_container(task.splits),
                       "tokenizer": [type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer)],
                       "max_length": max_length}, sort_keys=True, default=str)
    return f"{task.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def encode(texts: list[tuple[str, ...]], tokenizer: Tokenizer, max_length: int) -> dict[str, list]:
    """Token ids (and masks) of rows of one or two texts, truncated to ``max_length``."""
    columns = list(zip(*texts, strict=True))
    return dict(tokenizer(*[list(c) for c in columns], truncation=True, max_length=max_length))


def tokenize(examples: dict[str, Examples], tokenizer: Tokenizer, max_length: int) -> DatasetDict:
    return DatasetDict({split: Dataset.from_dict({**encode(ex.texts, tokenizer, max_length), "labels": ex.labels})
                        for split, ex in examples.items()})


def model_inputs(dataset: Dataset, model_cfg: DictConfig) -> Dataset:
    """``dataset`` without segment ids when the model has a single token type (RoBERTa, DeBERTaV3)."""
    if int(model_cfg.arch.get("type_vocab_size", 2)) < 2 and "token_type_ids" in dataset.column_names:
        return dataset.remove_columns("token_type_ids")
    return dataset


def _load_cached(path: Path, splits: list[str]) -> DatasetDict | None:
    """The cache entry at ``path``; None when there is none or it is unreadable (then it is removed)."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        dataset = load_from_disk(str(path))
        if not isinstance(dataset, DatasetDict) or sorted(dataset) != sorted(splits):
            raise ValueError(f"holds {list(dataset) if isinstance(dataset, DatasetDict) else 'no DatasetDict'}")
        return dataset
    except Exception as err:  # a damaged entry fails in many ways (missing JSON, truncated Arrow, garbage)
        log.warning("tokenisation cache entry %s is unreadable (%s: %s); removing it and tokenising again",
                    path, type(err).__name__, err)
    aside = path.with_name(f"{path.name}.corrupt-{os.getpid()}")
    try:
        path.rename(aside)  # atomic: no other process loads the entry while it is being deleted
    except OSError:  # another process moved it first
        return None
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
    return None


def write_cache(path: Path, dataset: DatasetDict) -> DatasetDict:
    """``dataset`` saved as the cache entry ``path`` (atomically) and read back from it."""
    disable_progress_bars()  # 'Saving the dataset' bars for a cache write are noise
    staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    dataset.save_to_disk(str(staging))
    try:
        staging.rename(path)  # atomic: a half-written cache entry is never picked up
    except OSError:  # another process cached the same split first
        shutil.rmtree(staging, ignore_errors=True)
    return load_from_disk(str(path))


def load_tokenized(task: DictConfig, tokenizer: Tokenizer, max_length: int,
                   cache_dir: str | os.PathLike | None) -> tuple[DatasetDict, bool]:
    """Tokenised splits and whether they came from the cache."""
    if cache_dir is None:
        return tokenize(read_examples(task), tokenizer, max_length), False
    path = Path(cache_dir) / cache_key(task, tokenizer, max_length)
    cached = _load_cached(path, list(task.splits))
    if cached is not None:
        return cached, True
    return write_cache(path, tokenize(read_examples(task), tokenizer, max_length)), False


# --- loaders ----------------------------------------------------------------------------------
def subset_rows(size: int, max_samples: int | None, heldout: int | None = None) -> tuple[Any, Any]:
    """Indices into a training split of ``size`` rows: (the rows a run trains on, the held-out rows or None).

    The training rows are a fixed random subset (the first ``max_samples`` of the seed-0 permutation, which is
    ``datasets``' ``Dataset.shuffle(seed=0)``; the same for every run and seed, so quick runs stay comparable), or
    every row in file order. Held-out rows are the tail of the same permutation, so the training rows are those of
    the run without a held-out part (as long as ``max_samples`` leaves ``heldout`` rows over) and a
    hyper-parameter search on them never sees the dev set."""
    if heldout is None:
        if max_samples is None or max_samples >= size:
            return range(size), None
        return np.random.default_rng(0).permutation(size)[:max_samples], None
    if heldout >= size:
        raise ConfigError(f"data.heldout_samples={heldout}: the training split has only {size} rows, so "
                          "nothing would be left to train on; hold out fewer")
    order, pool = np.random.default_rng(0).permutation(size), size - heldout
    if max_samples is not None and max_samples > pool:
        raise ConfigError(f"data.max_train_samples={max_samples} with data.heldout_samples={heldout}: the training "
                          f"split has {size} rows, so at most {pool} can train beside the held-out ones")
    return order[:pool if max_samples is None else max_samples], order[pool:]


def length_sorted(dataset: Dataset) -> Dataset:
    """``dataset`` ordered by length (the evaluation order; ``pick_rows`` chose its rows).

    Sorting by length leaves little padding in each dynamically padded batch (evaluation runs ~1.5x faster
    on CPU); the scores do not depend on the order, because logits and labels travel together.
    """
    return dataset.select(np.argsort(sequence_lengths(dataset), kind="stable"))


def sequence_lengths(dataset: Dataset) -> np.ndarray:
    return np.fromiter((len(ids) for ids in dataset["input_ids"]), dtype=np.int64, count=len(dataset))


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Shuffled training order in which each batch holds examples of similar length (less padding).

    Every epoch draws a random permutation from ``generator``, cuts it into mega-batches of
    ``MEGA_BATCHES`` batches, sorts each mega-batch by length (longest first) and puts the batch with the
    longest example first (an out-of-memory error shows at once). The order stays random across
    mega-batches and every example is seen once per epoch, but examples of one batch are no longer
    independent draws: they are neighbours in length. Seeded and resumable through ``generator``, like
    the plain shuffle (the same idea as transformers' LengthGroupedSampler)."""

    MEGA_BATCHES = 50

    def __init__(self, lengths: np.ndarray, batch_size: int, generator: torch.Generator) -> None:
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):  # noqa: ANN204 - an iterator of indices
        permutation = torch.randperm(len(self.lengths), generator=self.generator).numpy()
        size = self.batch_size * self.MEGA_BATCHES
        megas = [permutation[i:i + size] for i in range(0, len(permutation), size)]
        megas = [mega[np.argsort(-self.lengths[mega], kind="stable")] for mega in megas]
        order = np.concatenate(megas)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i]].max())
        batches[0], batches[longest] = batches[longest], batches[0]
        return iter(int(i) for batch in batches for i in batch)


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """The share of padded positions when every batch is padded to its longest example."""
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1 - int(lengths.sum()) / padded


def subset_size(data_cfg: DictConfig, key: str) -> int | None:
    """``data.<key>`` (max_train_samples, max_eval_samples, heldout_samples) as a positive int, or None (all)."""
    value = data_cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"data.{key}={value!r}: must be >= 1 (a whole number of examples), or null for all of "
                          "them; fewer than one would build an empty data loader")
    return value


def pick_rows(splits: dict[str, Any], task: DictConfig, data_cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """(training rows, {evaluation split: rows}) of a run, from whole splits (``Examples`` or ``Dataset``): the
    training rows of ``subset_rows``; the first ``data.max_eval_samples`` rows of each dev split, or of the held-out
    training rows (split "heldout"), which replace the dev splits (a search that never sees them:
    docs/cpu_study/README.md)."""
    max_train, max_eval = subset_size(data_cfg, "max_train_samples"), subset_size(data_cfg, "max_eval_samples")
    whole = splits["train"]
    rows, held = subset_rows(len(whole), max_train, subset_size(data_cfg, "heldout_samples"))
    train = whole if isinstance(rows, range) else whole.select(rows)
    scored = {"heldout": whole.select(held)} if held is not None else {
        split: splits[split] for split in task.splits if split != "train"}
    return train, {split: rows if max_eval is None or max_eval >= len(rows) else rows.select(range(max_eval))
                   for split, rows in scored.items()}


def check_not_empty(task: DictConfig, splits: dict[str, Any]) -> None:
    empty = [split for split, rows in splits.items() if len(rows) == 0]
    if empty:
        raise DataError(f"task {task.name}: split {', '.join(empty)} has no examples; check the data source")


def run_rows(cfg: DictConfig, tokenizer: Tokenizer) -> tuple[Dataset, dict[str, Dataset]]:
    """The tokenised rows of a run (``pick_rows``). A run that uses at most ``SUBSET_SHARE`` of its task's rows
    tokenises only those (a second or two); otherwise the whole task is tokenised once into the cache, which later
    runs read (a cache entry already there is always read)."""
    task, max_length = cfg.task, int(cfg.data.max_length)
    if "train" not in task.splits:
        raise ConfigError(f"task {task.name} has no 'train' split in task.splits")
    for key in ("max_train_samples", "max_eval_samples", "heldout_samples"):
        subset_size(cfg.data, key)  # a bad subset size stops before any data is read
    path = None if cfg.data.cache_dir is None else Path(cfg.data.cache_dir) / cache_key(task, tokenizer, max_length)
    whole = _load_cached(path, list(task.splits)) if path is not None else None
    how = "cached"
    if whole is None:
        examples = read_examples(task)
        check_not_empty(task, examples)
        train, evals = pick_rows(examples, task, cfg.data)
        used, total = len(train) + sum(map(len, evals.values())), sum(map(len, examples.values()))
        if path is None or used <= SUBSET_SHARE * total:
            tokenised = tokenize({"train": train, **evals}, tokenizer, max_length)
            log.info("data: %s (tokenised only the %d rows this run uses)", {s: len(e) for s, e in examples.items()},
                     used)
            return tokenised["train"], {split: tokenised[split] for split in evals}
        whole, how = write_cache(path, tokenize(examples, tokenizer, max_length)), "tokenised"
    log.info("data: %s (%s)", {s: len(d) for s, d in whole.items()}, how)
    check_not_empty(task, whole)
    return pick_rows(whole, task, cfg.data)


def build_dataloaders(cfg: DictConfig, tokenizer: Tokenizer) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The training loader and one evaluation loader per evaluation split, dynamically padded."""
    train, eval_splits = run_rows(cfg, tokenizer)
    train = model_inputs(train, cfg.model)
    eval_splits = {split: model_inputs(rows, cfg.model) for split, rows in eval_splits.items()}
    collate = DataCollatorWithPadding(tokenizer)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    batch_size = int(cfg.train.batch_size)
    order: dict[str, Any] = {"shuffle": True, "generator": generator}
    if cfg.data.get("group_by_length"):
        order = {"sampler": LengthGroupedSampler(sequence_lengths(train), batch_size, generator)}
    pin = torch.cuda.is_available() and not cfg.train.get("cpu")  # page-locked batches copy to the GPU faster
    train_loader = DataLoader(train, batch_size=batch_size, collate_fn=collate, num_workers=int(cfg.data.num_workers),
                              pin_memory=pin, **order)
    train_loader.generator = generator  # the data order's RNG, saved in checkpoints (shuffled or grouped)
    eval_loaders = {
        split: DataLoader(length_sorted(rows),
                          batch_size=int(cfg.train.eval_batch_size), collate_fn=collate, pin_memory=pin)
        for split, rows in eval_splits.items()
    }
    return train_loader, eval_loaders
