"""The benchmark runs end to end on a tiny model and reports every requested row (no timing thresholds:
numbers from a shared test machine mean nothing; docs/benchmarks.md has the real table)."""

from __future__ import annotations

import json

import pytest

from subspace_tuning.bench import main
from subspace_tuning.bench.peft_rows import peft_config
from subspace_tuning.methods import catalogue

pytest.importorskip("peft")

METHODS = ["lora", "ia3", "sam_parser", "prefix_tuning"]


def test_quick_benchmark_writes_every_row_with_times_and_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--quick", "--device", "cpu", "--methods", ",".join(METHODS), "--svd-model", "tiny-roberta",
          "--json", str(out)])
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) >= {"frozen", "full", *METHODS, "peft:lora", "peft:ia3"}
    for name in ("frozen", "full", *METHODS, "peft:lora", "peft:ia3"):
        row = rows[name]
        assert row["error"] is None, row["error"]
        assert row["step_ms"] > 0 and row["peak_mb"] > 0 and row["eval_samples_per_s"] > 0, name
        assert row["setup_s"] >= 0 and len(row["step_ms_all"]) >= result["settings"]["repeats"]  # frozen: + anchors
        assert row["step_vs_frozen"] > 0 and row["step_vs_full"] > 0
    for name in ("lora", "ia3"):  # the methods PEFT has get ours / PEFT ratios
        assert rows[name]["step_vs_peft"] > 0 and rows[name]["memory_vs_peft"] > 0
    assert rows["sam_parser"]["step_vs_peft"] is None
    assert rows["lora"]["merged"]["mergeable"] and rows["lora"]["merged"]["vs_plain"] > 0
    assert rows["lora"]["merged"]["leftover_modules"] == []  # merged = plain nn.Linear layers only
    assert not rows["prefix_tuning"]["merged"]["mergeable"]
    assert "peft:prefix_tuning" in rows  # PEFT 0.21's prefix tuning fails on transformers 5: a row with its error
    assert {"lora_step_vs_frozen", "lora_step_vs_peft", "lora_memory_vs_peft"} <= set(result["targets"])
    svd = result["svd_setup"]  # SAM-PARSER's set-up on tiny-roberta dims: computed, then from the SVD cache
    assert svd["matrices"] > 0 and svd["seconds"]["sam_parser"] > 0 and svd["cached_seconds"]["sam_parser"] > 0
    assert {"sam_parser_svd_setup_tiny-roberta", "sam_parser_svd_setup_tiny-roberta_cached"} <= set(result["targets"])
    table = capsys.readouterr().out
    assert "peft:lora" in table and "xfrozen" in table


def test_unknown_method_is_a_clear_error():
    with pytest.raises(SystemExit, match="nope"):
        main(["--quick", "--methods", "nope"])


def test_every_method_with_a_peft_type_has_its_peft_config():
    """The peer rows follow the catalogue: a method class that names a PEFT counterpart gets a config of that type."""
    with_peft = [cls for cls in catalogue() if cls.peft_type is not None]
    assert {"lora", "dora", "adalora"} <= {cls.name for cls in with_peft}
    for cls in with_peft:
        assert peft_config(cls.name, 4, ["query"], total_step=100).peft_type.value == cls.peft_type, cls.name
    assert peft_config("dora", 4, ["query"]).use_dora and not peft_config("lora", 4, ["query"]).use_dora


def test_peft_adalora_takes_our_schedule_in_steps():
    config = peft_config("adalora", 6, ["query"], {"target_r": 2, "tinit": 0.1, "tfinal": 0.2, "deltaT": 0.05},
                         total_step=100, orth_reg_weight=0.1)
    assert (config.init_r, config.target_r, config.total_step, config.tinit, config.tfinal, config.deltaT,
            config.orth_reg_weight) == (6, 2, 100, 10, 20, 5, 0.1)
