"""The parameter table: meta-device counts that reproduce the paper's %Params column."""

from __future__ import annotations

import json

import pytest

from subspace_tuning.params import main, table_rows

PAPER_LORA_ROBERTA_BASE = {2: 2.65, 4: 5.31, 8: 10.62, 16: 21.24}  # per mille, the paper's Table II


def test_lora_matches_the_paper_within_one_percent():
    rows = {row["rank"]: row for row in table_rows("roberta-base", ["lora"])}
    for rank, paper in PAPER_LORA_ROBERTA_BASE.items():
        assert rows[rank]["per_mille"] == pytest.approx(paper, rel=0.01)
        assert rows[rank]["trainable"] == 12 * rank * (4 * (768 + 768) + 2 * (768 + 3072))
    assert rows[8]["total"] == 124_647_170  # RobertaForSequenceClassification, 2 labels


def test_full_fine_tuning_is_1000_per_mille_on_every_paper_model():
    for model in ("roberta-base", "roberta-large", "deberta-v3-base"):
        (row,) = table_rows(model, ["full"])
        assert row["rank"] is None and row["per_mille"] == 1000.0


def test_json_format(capsys):
    main(["--model", "roberta-large", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    lora = [r for r in rows if r["method"] == "lora"]
    assert [r["rank"] for r in lora] == [2, 4, 8, 16]
    assert set(lora[0]) == {"method", "rank", "trainable", "total", "per_mille"}


def test_unknown_model_lists_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "nope"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: unknown model 'nope'; choose one of: deberta-v3-base")
