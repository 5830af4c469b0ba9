"""GLUE data: exact row counts of the real files, validation messages, tokenisation cache, padding."""

from __future__ import annotations

import pytest
from conftest import GLUE_DIR, requires_glue

from subspace_tuning import data
from subspace_tuning.config import compose
from subspace_tuning.errors import DataError
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


def test_evaluation_runs_in_length_order_over_the_same_examples():
    from datasets import Dataset

    rows = {"input_ids": [[1] * n for n in (5, 2, 9, 2, 7)], "label": [0, 1, 2, 3, 4]}
    ordered = data.eval_subset(Dataset.from_dict(rows), None)
    assert [len(ids) for ids in ordered["input_ids"]] == [2, 2, 5, 7, 9]
    assert ordered["label"] == [1, 3, 0, 4, 2]  # each label stays with its example; ties keep their order
    assert data.eval_subset(Dataset.from_dict(rows), 3)["label"] == [1, 0, 2]  # the first 3 examples, sorted


def test_toy_task_is_deterministic_and_holds_adjectives_out():
    assert toy_sentiment("train", 50) == toy_sentiment("train", 50)
    held_out = POSITIVE[-HELD_OUT:] + NEGATIVE[-HELD_OUT:]
    train_words = " ".join(text for (text,), _ in toy_sentiment("train", 500))
    assert not any(f" {word}." in train_words for word in held_out)
    labels = [label for _, label in toy_sentiment("validation", 400)]
    assert 0.35 < sum(labels) / len(labels) < 0.65
