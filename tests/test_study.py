"""The CPU study's statistics and claims table (subspace_tuning.study) on constructed run records whose answers are
known: hand-computed intervals and p-values, and claims made true, false or noise by construction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_report import write_run  # the runner's metrics.json layout, shared with the report's tests

from subspace_tuning.results import find_runs
from subspace_tuning.study import (
    EQUIVALENCE_MARGIN,
    bootstrap_ci,
    collect,
    combine,
    fill_readme,
    lr_search,
    lr_search_markdown,
    main,
    next_runs,
    study,
    t_interval,
    verdict,
    wilcoxon_p,
)

SEEDS = range(5)
NOISE = (0.0, 1.0, -1.0, 2.0, -2.0)  # seed-to-seed spread with mean 0


def run(root: Path, task: str, method: str, scores: list[float], mpc: str = "none",
        degenerate: tuple[int, ...] = ()) -> None:
    """One row's runs of ``task``, one per seed, scores in points; ``degenerate``: seeds flagged one-class."""
    rank = 8 if method in ("lora", "dora", "trilora", "adalora", "flora") else None
    for seed, score in zip(SEEDS, scores, strict=True):
        path = write_run(root, task, method, rank, mpc, seed, best=score / 100, model="minilm")
        if seed in degenerate:
            data = json.loads(path.read_text())
            data["degenerate"] = {"best": True, "last": True}
            path.write_text(json.dumps(data))


def result(root: Path) -> dict:
    return study(find_runs([root]))["models"][0]


def claim(model: dict, claim_id: str) -> dict:
    return next(c for c in model["claims"] if c["id"] == claim_id)


def comparisons(model: dict, claim_id: str) -> list[dict]:
    return [e for e in model["comparisons"] if e["claim"] == claim_id]


# --- the statistics by hand -------------------------------------------------------------------------
def test_t_interval_matches_a_hand_computation() -> None:
    # mean 3, sd sqrt(2.5), se sqrt(0.5); t(0.975, 4 df) = 2.776445 (tables)
    low, high = t_interval([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(0.5)
    assert low == pytest.approx(3 - half, abs=1e-5) and high == pytest.approx(3 + half, abs=1e-5)
    assert t_interval([4.0]) is None


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([2.0, 2.0, 2.0]) == pytest.approx((2.0, 2.0))
    assert bootstrap_ci([]) is None
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0] * 4)
    assert 2.3 < low < 3 < high < 3.7  # the mean 3 with se sqrt(2/20) ~ 0.32: roughly 3 +- 1.96 * 0.32
    assert bootstrap_ci([1.0, 5.0, 2.0]) == bootstrap_ci([1.0, 5.0, 2.0])  # seeded: the table regenerates


def test_wilcoxon_on_known_cases() -> None:
    p, note = wilcoxon_p([1, 2, 3, 4, 5, 6, 7, 8])  # every sign positive: exact two-sided p = 2 / 2**8
    assert p == pytest.approx(2 / 256) and note == ""
    assert wilcoxon_p([0.0, 0.0, 0.0]) == (1.0, "every difference is 0: p = 1 by convention")
    p, note = wilcoxon_p([1, 2, 3, 4, 5])
    assert p == pytest.approx(2 / 32) and "cannot reach p < 0.05" in note
    assert wilcoxon_p([]) == (None, "no pairs")


@pytest.mark.parametrize("kind, ci, expected", [
    ("greater", (0.5, 2.0), "supported"), ("greater", (-2.0, -0.1), "contradicted"),
    ("greater", (-1.0, 1.0), "not significant"), ("less", (-2.0, -0.1), "supported"),
    ("less", (0.1, 2.0), "contradicted"), ("smaller_std", (-1.0, -0.5), "supported"),
    ("comparable", (-1.5, 1.9), "supported"), ("comparable", (-1.0, 2.5), "not significant"),
    ("comparable", (-5.0, -2.5), "contradicted"), ("close", (-1.9, 4.0), "supported"),
    ("close", (-3.0, 1.0), "not significant"), ("close", (-5.0, -2.1), "contradicted"),
])
def test_verdict_rule(kind: str, ci: tuple[float, float], expected: str) -> None:
    assert EQUIVALENCE_MARGIN == 2.0  # the cases above are placed around it
    assert verdict(kind, ci, n=10) == expected


@pytest.mark.parametrize("kind, ci", [("greater", (0.05, 8.9)), ("less", (-3.0, -0.1)), ("smaller_std", (-2.0, -1.0)),
                                      ("greater", (-3.0, -0.1))])
def test_an_ordered_claim_needs_the_wilcoxon_test_to_agree(kind: str, ci: tuple[float, float]) -> None:
    """A CI that excludes 0 with p >= 0.05 (a narrow bootstrap of a few pairs) is not significant either way."""
    assert verdict(kind, ci, n=10, p=0.2754) == "not significant"
    assert verdict(kind, ci, n=10, p=0.0371) != "not significant"
    assert verdict("comparable", (-1.5, 1.9), n=10, p=0.9) == "supported"  # equivalence: the CI alone
    assert verdict(kind, ci, n=5, p=0.0625) != "not significant"  # 5 pairs cannot reach 0.05: the CI alone


def test_verdict_needs_pairs_and_combines() -> None:
    assert verdict("greater", None, 0) == "not run"
    assert verdict("greater", (1.0, 2.0), 2) == "not significant"  # too few pairs for any verdict
    assert combine(["supported", "not run", "supported"]) == "supported"
    assert combine(["supported", "contradicted"]) == "contradicted"
    assert combine(["supported", "not significant"]) == "not significant"
    assert combine(["not run", "not run"]) == "not run"


# --- claims on constructed runs ----------------------------------------------------------------------
@pytest.mark.parametrize("shift, expected", [(3.0, "supported"), (-3.0, "contradicted"), (0.0, "not significant")])
def test_dora_vs_lora(tmp_path: Path, shift: float, expected: str) -> None:
    for task, base in (("rte", 60.0), ("cola", 30.0)):
        run(tmp_path, task, "lora", [base + e for e in NOISE])
        # shift 0: the differences are pure seed noise, symmetric about 0
        dora = [base + e + shift for e in NOISE] if shift else [base + e for e in reversed(NOISE)]
        run(tmp_path, task, "dora", dora)
    model = result(tmp_path)
    (c5,) = comparisons(model, "C5")
    assert (c5["n"], c5["verdict"]) == (10, expected) and claim(model, "C5")["verdict"] == expected
    assert c5["mean"] == pytest.approx(shift)
    if shift:
        assert c5["ci"] == pytest.approx([shift, shift]) and c5["p"] == pytest.approx(2 / 2 ** 10)
    else:
        assert c5["ci"][0] < 0 < c5["ci"][1] and c5["p"] == pytest.approx(1.0)
    # the rows no run was made of: their claims are "not run", never an error
    assert claim(model, "C2")["verdict"] == "not run"
    assert comparisons(model, "C2")[0]["note"] == "no runs of (IA)3, Fully FT"
    assert claim(model, "C4")["parts"] == ["not run", "not run"]


def test_comparable_and_close(tmp_path: Path) -> None:
    run(tmp_path, "rte", "full", [70 + e for e in NOISE])
    run(tmp_path, "rte", "ia3", [70.3 + e for e in NOISE])  # within the margin: comparable
    run(tmp_path, "rte", "ssb", [60 + e for e in NOISE])  # 10 points below full FT: not close
    run(tmp_path, "rte", "ssl", [55 + e for e in NOISE])
    model = result(tmp_path)
    assert claim(model, "C2")["verdict"] == "supported"
    assert [e["verdict"] for e in comparisons(model, "C3")] == ["supported", "contradicted", "contradicted"]
    assert claim(model, "C3")["verdict"] == "contradicted"


def test_mpc_spread_and_sam_parser(tmp_path: Path) -> None:
    for task in ("rte", "mrpc", "sst2"):
        run(tmp_path, task, "lora", [70 + 2 * e for e in NOISE])
        run(tmp_path, task, "lora", [75 + 0.5 * e for e in NOISE], mpc="o")  # better by 2-8, a quarter of the spread
        run(tmp_path, task, "sam_parser", [50 + e for e in NOISE])
    model = result(tmp_path)
    (c7,) = comparisons(model, "C7")
    spread = math.sqrt(sum(e * e for e in NOISE) / 4)
    assert c7["n"] == 3 and c7["mean"] == pytest.approx(0.5 * spread - 2 * spread)
    assert c7["verdict"] == "supported" and "cannot reach p < 0.05" in c7["note"]
    assert comparisons(model, "C6")[0]["verdict"] == "supported" and claim(model, "C6")["verdict"] == "supported"
    assert claim(model, "C6")["parts"].count("not run") == 4
    c1 = claim(model, "C1")
    assert c1["verdict"] == "supported" and c1["parts"].count("supported") == 2


def test_per_task_table_baseline_and_degenerate(tmp_path: Path) -> None:
    run(tmp_path, "rte", "lora", [47.0, 47.0, 60.0, 62.0, 64.0], degenerate=(0, 1))  # all-class-0: 47% -> base 53
    run(tmp_path, "cola", "lora", [10.0, 20.0, 30.0, 40.0, 50.0])
    model = result(tmp_path)
    rte = next(r for r in model["per_task"] if r["task"] == "rte")
    assert (rte["n"], rte["degenerate"], rte["median"]) == (5, 2, 60.0)
    assert rte["baseline"] == pytest.approx(53.0) and rte["margin"] == pytest.approx(56.0 - 53.0)
    cola = next(r for r in model["per_task"] if r["task"] == "cola")
    assert (cola["baseline"], cola["degenerate"], cola["mean"]) == (0.0, 0, 30.0)
    assert cola["ci"] == pytest.approx(t_interval([10.0, 20.0, 30.0, 40.0, 50.0]))
    assert model["baselines"]["rte"]["source"] == "majority share from 2 one-class run(s)"


def test_the_recorded_majority_share_is_the_baseline(tmp_path: Path) -> None:
    run(tmp_path, "sst2", "lora", [80.0, 81.0, 82.0, 83.0, 84.0])  # no run predicted one class
    assert result(tmp_path)["baselines"]["sst2"]["value"] is None
    path = next(tmp_path.rglob("metrics.json"))
    data = json.loads(path.read_text())
    data["last"]["predictions"] = {"majority_class": 1, "majority_share": 0.6, "label_majority_share": 0.5092}
    path.write_text(json.dumps(data))
    sst2 = next(r for r in result(tmp_path)["per_task"] if r["task"] == "sst2")
    assert sst2["baseline"] == pytest.approx(50.92) and sst2["margin"] == pytest.approx(82.0 - 50.92)


def test_the_command_writes_both_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(tmp_path / "runs", "rte", "lora", [60 + e for e in NOISE])
    run(tmp_path / "runs", "rte", "dora", [63 + e for e in NOISE])
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "study.md").read_text()
    assert "| LoRA | rte | 5 | 60.00 | 60.00 |" in text and "| 0 / 0 |" in text and "| C5 DoRA beats LoRA |" in text
    assert "| C5 | DoRA > LoRA | 5 | 3.00 | [3.00, 3.00] |" in text
    data = json.loads((tmp_path / "out" / "study.json").read_text())
    assert claim(data["models"][0], "C5")["verdict"] == "supported"
    assert "wrote " in capsys.readouterr().out


def test_a_missing_folder_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: no such folder:")


# --- the lr search, committed results, the README ------------------------------------------------------
def test_lr_search_takes_per_task_the_best_held_out_lr_that_learns_there(tmp_path: Path) -> None:
    for lr, lora, ia3 in (("0.0001", 80.0, 60.0), ("0.001", 85.0, 70.0), ("0.01", 85.0, 75.0), ("0.1", 50.0, 50.0)):
        write_run(tmp_path, "sst2", "lora", 8, "none", 0, best=lora / 100, variant={"optim.lr": lr})
        write_run(tmp_path, "sst2", "ia3", None, "none", 0, best=ia3 / 100, variant={"optim.lr": lr})
    write_run(tmp_path, "sst2", "lora", 8, "none", 0, best=0.99, variant={"optim.lr": "1.0"}, status="failed")
    write_run(tmp_path, "stsb", "ia3", None, "none", 0, best=0.4, variant={"optim.lr": "0.01"})
    result = lr_search(find_runs([tmp_path]))
    assert (result["task"], result["check_tasks"], list(result["methods"])) == ("sst2", ["stsb"], ["ia3", "lora"])
    ia3, lora = result["methods"]["ia3"], result["methods"]["lora"]
    assert ia3["chosen"] == {"sst2": 0.01, "stsb": 0.01} and not ia3["edge"] and not ia3["pending"]
    # the search task's own choice stands; a tie (85 at 1e-3 and 1e-2) goes to the smaller lr
    assert lora["chosen"] == {"sst2": 0.001, "stsb": None} and lora["pending"] == [("stsb", 0.001)]
    assert next_runs(result) == ["python train.py -m experiment=cpu_study_lr_search hydra.sweeper.params.task=stsb "
                                 "\"hydra.sweeper.rows=['method=lora optim.lr=0.001']\""]

    def check(lr: str, pearson: float, degenerate: bool = False) -> None:
        path = write_run(tmp_path, "stsb", "lora", 8, "none", 0, best=pearson / 100, variant={"optim.lr": lr})
        if degenerate:
            data = json.loads(path.read_text())
            data["degenerate"] = {"best": True, "last": True}
            path.write_text(json.dumps(data))

    check("0.001", 40.0, degenerate=True)  # constant on the check task: the next-ranked lr is the candidate
    assert lr_search(find_runs([tmp_path]))["methods"]["lora"]["pending"] == [("stsb", 0.01)]
    check("0.01", 25.0)  # not constant, but below the study's margin (30 of Pearson): not learned either
    assert lr_search(find_runs([tmp_path]))["methods"]["lora"]["pending"] == [("stsb", 0.0001)]
    check("0.0001", 50.0)
    result = lr_search(find_runs([tmp_path]))
    assert result["methods"]["lora"]["chosen"] == {"sst2": 0.001, "stsb": 0.0001}
    table = lr_search_markdown(result)
    assert "**85.00**" in table and "0.0001: 50.00; 0.001: constant; 0.01: 25.00" in table
    assert "99" not in table  # a failed run has no score


def test_lr_search_without_lr_runs_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path, "sst2", "lora", 8, "none", 0)
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--lr-search"])
    assert "no completed run with an optim.lr setting" in capsys.readouterr().err


def test_collect_keeps_only_the_small_result_files(tmp_path: Path) -> None:
    path = write_run(tmp_path / "runs", "sst2", "lora", 8, "none", 0)
    (path.parent / "trained.safetensors").write_bytes(b"weights")
    (path.parent / "analysis.json").write_text("{}")
    assert collect(tmp_path / "runs", tmp_path / "kept") == 1
    kept = tmp_path / "kept" / path.parent.relative_to(tmp_path / "runs")
    assert sorted(p.name for p in kept.iterdir()) == ["analysis.json", "metrics.json"]
    assert find_runs([tmp_path / "kept"])[0].best == pytest.approx(80.0)


def test_readme_blocks_are_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- begin study -->\nold\n<!-- end study -->\nafter\n")
    assert fill_readme(readme, {"study": "| new |\n", "subspace": "x"}) == ["study"]
    assert readme.read_text() == "intro\n<!-- begin study -->\n| new |\n<!-- end study -->\nafter\n"
