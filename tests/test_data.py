"""GLUE data: exact row counts of the real files, validation messages, data fingerprint, tokenisation cache,
padding."""

from __future__ import annotations

import logging
import os
import random

import pytest
from conftest import GLUE_DIR, requires_glue
from omegaconf import OmegaConf

from subspace_tuning import data
from subspace_tuning.config import compose
from subspace_tuning.errors import ConfigError, DataError
from subspace_tuning.models import load_tokenizer
from subspace_tuning.toy_data import HELD_OUT, NEGATIVE, POSITIVE, toy_sentiment

GLUE_ROWS = {"rte": (2490, 277), "mrpc": (3668, 408), "cola": (8551, 1043), "stsb": (5749, 1500), "sst2": (67349, 872)}
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@requires_glue
@pytest.mark.parametrize("task", sorted(GLUE_ROWS))
def test_real_glue_files_load_with_exact_row_counts(task):
    examples = data.read_examples(compose([f"task={task}", f"task.data_dir={GLUE_DIR}"]).task)
    assert (len(examples["train"].labels), len(examples["validation"].labels)) == GLUE_ROWS[task]
    assert all(len(texts) == len(examples["train"].texts[0]) for texts in examples["train"].texts)


@requires_glue
def test_labels_follow_the_hub_encoding():
    rte = data.read_examples(compose(["task=rte", f"task.data_dir={GLUE_DIR}"]).task)
    assert set(rte["train"].labels) == {0, 1}  # 0 = entailment, as nyu-mll/glue
    stsb = data.read_examples(compose(["task=stsb", f"task.data_dir={GLUE_DIR}"]).task)
    assert 0.0 <= min(stsb["validation"].labels) and max(stsb["validation"].labels) <= 5.0


def fake_glue(tmp_path, train_rows: list[str], dev_rows: list[str] | None = None):
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(RTE_HEADER + "".join(train_rows))
    if dev_rows is not None:
        (folder / "dev.tsv").write_text(RTE_HEADER + "".join(dev_rows))
    return compose(["task=rte", f"task.data_dir={tmp_path / 'glue'}"]).task


GOOD = "0\ta cat sat.\ta cat is sitting.\tentailment\n"


def test_missing_file_is_named(tmp_path):
    task = fake_glue(tmp_path, [GOOD])
    with pytest.raises(DataError, match="has no RTE/dev.tsv"):
        data.read_examples(task)


def test_malformed_row_gives_file_and_line(tmp_path):
    task = fake_glue(tmp_path, [GOOD, "1\tonly one sentence\n"], [GOOD])
    with pytest.raises(DataError, match=r"train.tsv:3: malformed row, expected at least 4 .* found 2"):
        data.read_examples(task)


def test_label_outside_the_label_set_gives_file_and_line(tmp_path):
    task = fake_glue(tmp_path, [GOOD], [GOOD, GOOD, "2\ta\tb\tmaybe\n"])
    with pytest.raises(DataError, match=r"dev.tsv:4: label 'maybe' is not one of the rte labels"):
        data.read_examples(task)


NOT = "1\ta dog barks.\ta cat sits.\tnot_entailment\n"
LATIN1 = "1\tun caf\u00e9.\tun th\u00e9.\tentailment\n".encode("latin-1")
BAD_FILES = {  # name -> (file, bytes, what the message must hold)
    "header-only train": ("train.tsv", RTE_HEADER.encode(), "train.tsv: no examples (only a header line)"),
    "header-only dev": ("dev.tsv", RTE_HEADER.encode(), "dev.tsv: no examples (only a header line)"),
    "empty": ("train.tsv", b"", "train.tsv: the file is empty"),
    "latin-1": ("dev.tsv", (RTE_HEADER + GOOD).encode() + LATIN1, "dev.tsv:3: byte 0xe9 at offset"),
    "utf-16": ("train.tsv", (RTE_HEADER + GOOD).encode("utf-16"), "train.tsv: the file is UTF-16 text"),
    "utf-16 no BOM": ("train.tsv", (RTE_HEADER + GOOD).encode("utf-16-le"), "train.tsv:1: NUL byte at offset 1"),
    "NUL bytes": ("train.tsv", (RTE_HEADER + GOOD).encode() + b"\0" * 64, "train.tsv:3: NUL byte"),
    "random bytes": ("train.tsv", random.Random(0).randbytes(4096), "train.tsv:"),
    "random bytes, no NUL": ("dev.tsv", random.Random(0).randbytes(4096).replace(b"\0", b"x"), "is not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_one_paragraph_naming_it(tmp_path, case):
    name, raw, expected = BAD_FILES[case]
    task = fake_glue(tmp_path, [GOOD], [GOOD])
    (tmp_path / "glue" / "RTE" / name).write_bytes(raw)
    with pytest.raises(DataError) as err:
        data.read_examples(task)
    message = str(err.value)
    assert expected in message and "\n" not in message, message
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)


@pytest.mark.parametrize("setting", ["max_train_samples", "max_eval_samples"])
@pytest.mark.parametrize("value", [0, -3])
def test_an_empty_subset_is_refused_before_any_work(tmp_path, monkeypatch, setting, value):
    cfg = compose(["model=tiny-roberta", "task=toy-sentiment", f"data.cache_dir={tmp_path}"])
    cfg.data[setting] = value

    def must_not_run(*args, **kwargs):
        raise AssertionError("loaded the data")

    monkeypatch.setattr(data, "read_examples", must_not_run)
    monkeypatch.setattr(data, "_load_cached", must_not_run)
    with pytest.raises(ConfigError, match=rf"data.{setting}={value}: must be >= 1"):
        data.build_dataloaders(cfg, load_tokenizer(cfg.model))


def rewrite_same_size(path, old: str, new: str) -> None:
    """Swap two strings of equal length in ``path`` and put its mtime back, as `rsync -t` or `touch -r` would."""
    stat = path.stat()
    text = path.read_text()
    edited = text.replace(old, "\0").replace(new, old).replace("\0", new)
    assert edited != text and len(edited.encode()) == stat.st_size
    path.write_text(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_same_size_edit_changes_the_fingerprint_and_is_tokenised_again(tmp_path):
    task = fake_glue(tmp_path, [GOOD, NOT], [GOOD])
    tokenizer = load_tokenizer(compose(["model=tiny-roberta"]).model)
    cache = tmp_path / "cache"
    fingerprint, key = data.data_fingerprint(task), data.cache_key(task, tokenizer, 32)
    first, cached = data.load_tokenized(task, tokenizer, 32, cache)
    assert not cached and first["train"]["labels"] == [0, 1]
    assert data.load_tokenized(task, tokenizer, 32, cache)[1]  # unchanged files: served from the cache

    rewrite_same_size(tmp_path / "glue" / "RTE" / "train.tsv", "a cat sat.\ta cat is sitting.\tentailment",
                      "a dog barks.\ta cat sits.\tnot_entailment")
    data._file_sha256.cache_clear()  # a relaunch is a new process (within one, the stat memo covers rewrites)
    assert data.data_fingerprint(task) != fingerprint and data.cache_key(task, tokenizer, 32) != key
    second, cached = data.load_tokenized(task, tokenizer, 32, cache)
    assert not cached and second["train"]["labels"] == [1, 0]


def test_the_fingerprint_is_content_only_and_files_are_hashed_once_per_process(tmp_path):
    task = fake_glue(tmp_path / "a", [GOOD, NOT], [GOOD])
    copy = fake_glue(tmp_path / "b", [GOOD, NOT], [GOOD])
    data._file_sha256.cache_clear()
    assert data.data_fingerprint(task) == data.data_fingerprint(copy)  # another folder, the same bytes
    assert data._file_sha256.cache_info().misses == 4
    data.data_fingerprint(task)
    assert data._file_sha256.cache_info().misses == 4  # memoised: no file read again
    train = tmp_path / "a" / "glue" / "RTE" / "train.tsv"
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))
    data.data_fingerprint(task)
    assert data._file_sha256.cache_info().misses == 5  # a new mtime is read again
    hub = compose(["task=rte", "task.data_dir=null"]).task  # no files: the dataset's name (no revision offline)
    assert data.data_fingerprint(hub) == data.data_fingerprint(hub) != data.data_fingerprint(task)
    assert len(data.data_fingerprint(hub)) == 16


def half_deleted(entry):
    next((entry / "train").glob("*.arrow")).unlink()


def garbage(entry):
    for path in sorted(entry.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (entry / "junk").write_bytes(random.Random(0).randbytes(256))


def a_file(entry):
    garbage(entry)
    (entry / "junk").unlink()
    entry.rmdir()
    entry.write_text("not a dataset")


@pytest.mark.parametrize("damage", [half_deleted, garbage, a_file], ids=lambda damage: damage.__name__)
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    cfg = compose(["model=tiny-roberta", "task=toy-sentiment"])
    tokenizer = load_tokenizer(cfg.model)
    first, _ = data.load_tokenized(cfg.task, tokenizer, 32, tmp_path)
    damage(tmp_path / data.cache_key(cfg.task, tokenizer, 32))
    with caplog.at_level(logging.WARNING, logger=data.__name__):
        rebuilt, cached = data.load_tokenized(cfg.task, tokenizer, 32, tmp_path)
    assert not cached and "is unreadable" in caplog.text and "tokenising again" in caplog.text
    assert rebuilt["train"][:5] == first["train"][:5]
    assert data.load_tokenized(cfg.task, tokenizer, 32, tmp_path)[1]  # the rebuilt entry is used next time
    assert sorted(p.name for p in tmp_path.iterdir()) == [data.cache_key(cfg.task, tokenizer, 32)]  # nothing aside


def test_unreachable_hub_says_how_to_work_offline(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="task.data_dir"):
        data.read_examples(compose(["task=rte", "task.data_dir=null"]).task)


def test_tokenisation_is_cached(tmp_path, monkeypatch):
    cfg = compose(["model=tiny-roberta", "task=toy-sentiment", f"data.cache_dir={tmp_path}"])
    tokenizer = load_tokenizer(cfg.model)
    first, cached = data.load_tokenized(cfg.task, tokenizer, 32, tmp_path)
    assert not cached

    def must_not_run(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(data, "tokenize", must_not_run)
    second, cached = data.load_tokenized(cfg.task, tokenizer, 32, tmp_path)
    assert cached and second["train"][:5] == first["train"][:5]
    with pytest.raises(AssertionError, match="tokenised again"):  # another max length is another entry
        data.load_tokenized(cfg.task, tokenizer, 16, tmp_path)


def test_batches_are_padded_dynamically_and_subsets_are_fixed(tmp_path):
    cfg = compose(["model=tiny-roberta", "task=toy-sentiment", f"data.cache_dir={tmp_path}", "data.max_length=64",
                   "data.max_train_samples=100", "data.max_eval_samples=50"])
    train_loader, eval_loaders = data.build_dataloaders(cfg, load_tokenizer(cfg.model))
    batch = next(iter(train_loader))
    assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max() < 64
    assert len(train_loader.dataset) == 100 and len(eval_loaders["validation"].dataset) == 50
    other_seed = compose(["model=tiny-roberta", "task=toy-sentiment", f"data.cache_dir={tmp_path}",
                          "data.max_train_samples=100", "seed=3"])
    other_loader, _ = data.build_dataloaders(other_seed, load_tokenizer(cfg.model))
    assert train_loader.dataset["input_ids"] == other_loader.dataset["input_ids"]  # same subset for every seed


def test_heldout_rows_are_never_trained_on_and_replace_dev(tmp_path):
    def loaders(*extra: str):
        cfg = compose(["model=tiny-roberta", "task=toy-sentiment", f"data.cache_dir={tmp_path}",
                       "data.max_train_samples=100", *extra])
        return data.build_dataloaders(cfg, load_tokenizer(cfg.model))

    plain_train, plain_eval = loaders()
    train, evals = loaders("data.heldout_samples=40")
    assert list(evals) == ["heldout"] and "validation" in plain_eval  # dev is not scored
    assert train.dataset["input_ids"] == plain_train.dataset["input_ids"]  # the study's own training rows
    assert len(evals["heldout"].dataset) == 40  # disjoint rows: the next test (the toy task repeats sentences)
    _, capped = loaders("data.heldout_samples=40", "data.max_eval_samples=8")  # the first 8 held-out rows
    first = sorted(map(tuple, capped["heldout"].dataset["input_ids"]))
    assert len(first) == 8 and set(first) <= set(map(tuple, evals["heldout"].dataset["input_ids"]))


def test_heldout_rows_leave_room_to_train():
    from datasets import Dataset

    train, held = data.subset_rows(10, None, 3)
    assert len(set(train)) == 7 and len(set(held)) == 3 and not set(train) & set(held)
    assert list(train) == list(data.subset_rows(10, 7)[0])  # the rows a run without holding out takes
    shuffled = Dataset.from_dict({"row": range(10)}).shuffle(seed=0)["row"]  # datasets' own seed-0 shuffle
    assert list(train) + list(held) == shuffled
    assert data.subset_rows(10, None) == (range(10), None) and data.subset_rows(10, 12) == (range(10), None)
    with pytest.raises(ConfigError, match="nothing would be left to train on"):
        data.subset_rows(10, None, 10)
    with pytest.raises(ConfigError, match="at most 7 can train"):
        data.subset_rows(10, 8, 3)


@pytest.mark.parametrize("subset", [["data.max_train_samples=48", "data.max_eval_samples=16"],
                                    ["data.max_train_samples=40", "data.heldout_samples=24"]])
def test_a_small_subset_tokenises_only_its_rows_and_gets_the_cached_runs_rows(tmp_path, monkeypatch, subset):
    """A run on a small share of a task tokenises only those rows and writes no cache entry; the rows, their
    order and their tokens are those a run reading the whole task from the cache gets."""
    def batches(cache: str, share: float) -> tuple[list, dict]:
        monkeypatch.setattr(data, "SUBSET_SHARE", share)
        cfg = compose(["model=tiny-roberta", "task=toy-sentiment", f"data.cache_dir={cache}", *subset])
        train, evals = data.build_dataloaders(cfg, load_tokenizer(cfg.model))
        return ([b["input_ids"].tolist() for b in train],
                {split: [b["labels"].tolist() for b in loader] for split, loader in evals.items()})

    whole = batches(str(tmp_path / "whole"), 0.0)  # never the subset path: the whole task, cached
    assert len(list((tmp_path / "whole").iterdir())) == 1
    assert batches(str(tmp_path / "subset"), 1.0) == whole
    assert not (tmp_path / "subset").exists() or not list((tmp_path / "subset").iterdir())  # nothing cached
    assert batches(str(tmp_path / "whole"), 1.0) == whole  # a cache entry already there is read


def test_evaluation_runs_in_length_order_over_the_same_examples():
    from datasets import Dataset

    rows = {"input_ids": [[1] * n for n in (5, 2, 9, 2, 7)], "label": [0, 1, 2, 3, 4]}
    ordered = data.length_sorted(Dataset.from_dict(rows))
    assert [len(ids) for ids in ordered["input_ids"]] == [2, 2, 5, 7, 9]
    assert ordered["label"] == [1, 3, 0, 4, 2]  # each label stays with its example; ties keep their order
    task = OmegaConf.create({"splits": ["train", "validation"]})
    _, evals = data.pick_rows({"train": Dataset.from_dict(rows), "validation": Dataset.from_dict(rows)}, task,
                              OmegaConf.create({"max_eval_samples": 3}))
    assert data.length_sorted(evals["validation"])["label"] == [1, 0, 2]  # the first 3 examples, sorted


def test_toy_task_is_deterministic_and_holds_adjectives_out():
    assert toy_sentiment("train", 50) == toy_sentiment("train", 50)
    held_out = POSITIVE[-HELD_OUT:] + NEGATIVE[-HELD_OUT:]
    train_words = " ".join(text for (text,), _ in toy_sentiment("train", 500))
    assert not any(f" {word}." in train_words for word in held_out)
    labels = [label for _, label in toy_sentiment("validation", 400)]
    assert 0.35 < sum(labels) / len(labels) < 0.65


def test_length_grouped_order_is_seeded_complete_and_resumable():
    import numpy as np
    import torch

    from subspace_tuning.data import LengthGroupedSampler, padding_fraction

    lengths = np.random.default_rng(0).integers(5, 120, size=1000)
    generator = torch.Generator().manual_seed(3)
    sampler = LengthGroupedSampler(lengths, 16, generator)
    first = list(sampler)
    assert sorted(first) == list(range(1000))  # every example once per epoch
    state = generator.get_state()
    second = list(sampler)
    assert second != first  # a new order every epoch
    generator.set_state(state)
    assert list(sampler) == second  # the checkpointed RNG state gives the same next epoch (resume)
    assert list(LengthGroupedSampler(lengths, 16, torch.Generator().manual_seed(3))) == first  # seeded
    batches = [np.asarray(first[i:i + 16]) for i in range(0, 1000, 16)]
    assert lengths[batches[0]].max() == lengths.max()  # the longest batch first
    shuffled = [np.asarray(p) for p in np.array_split(np.random.default_rng(1).permutation(1000), 63)]
    assert padding_fraction(lengths, batches) < 0.1 < padding_fraction(lengths, shuffled)


# --- GLUE test splits (subspace_tuning.predict) ---------------------------------------------------
def test_test_files_are_read_by_column_name_with_their_index(tmp_path):
    qqp = tmp_path / "QQP" / "test.tsv"  # QQP's test index column is "id"; the texts follow it
    qqp.parent.mkdir()
    qqp.write_text("id\tquestion1\tquestion2\n7\tWhy?\tHow?\n\n12\tWho\tWhere \"\n")
    task = compose(["task=qqp", f"task.data_dir={tmp_path}"]).task
    ((split, rows),) = data.read_test_examples(task).items()
    assert (split.submission, rows.indices, rows.texts) == ("QQP.tsv", ["7", "12"], [("Why?", "How?"),
                                                                                     ("Who", 'Where "')])


@pytest.mark.parametrize(("text", "message"), [
    ("index\tsentence1\tsentence2\n0\tonly one\n", r"RTE/test.tsv:2: malformed row, expected at least 3"),
    ("index\tsentence1\tsentence2\n", r"RTE/test.tsv: no examples \(only a header line\)"),
    ("index\tpremise\thypothesis\n0\ta\tb\n", r"header has no column 'sentence1'"),
])
def test_a_bad_test_file_names_file_and_line(tmp_path, text, message):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "test.tsv").write_text(text)
    with pytest.raises(DataError, match=message):
        data.read_test_examples(compose(["task=rte"]).task, tmp_path)


def test_a_task_without_a_glue_test_split_says_so():
    with pytest.raises(DataError, match="task toy-sentiment has no GLUE test split"):
        data.read_test_examples(compose(["task=toy-sentiment"]).task)


def test_hub_test_splits_take_idx_and_ignore_the_minus_one_labels(monkeypatch):
    from datasets import Dataset, DatasetDict

    loaded = []

    def load_dataset(path, name):
        loaded.append((path, name))
        rows = {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [-1, -1], "idx": [5, 9]}
        splits = ("test",) if name == "ax" else ("test_matched", "test_mismatched")
        return DatasetDict({split: Dataset.from_dict(rows) for split in splits})

    monkeypatch.setattr("datasets.load_dataset", load_dataset)
    examples = data.read_test_examples(compose(["task=mnli", "task.data_dir=null"]).task)
    assert [s.submission for s in examples] == ["MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]
    assert loaded == [("nyu-mll/glue", "mnli"), ("nyu-mll/glue", "ax")]
    assert all(rows.indices == ["5", "9"] and rows.texts == [("p0", "h0"), ("p1", "h1")] for rows in examples.values())


def test_a_missing_test_data_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=f"the GLUE data folder {tmp_path / 'nope'} does not exist"):
        data.read_test_examples(compose(["task=rte"]).task, tmp_path / "nope")
