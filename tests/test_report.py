"""The report: aggregation of synthetic run records by hand, its three formats, the paper's numbers, figures."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from subspace_tuning.report import main
from subspace_tuning.results import GLUE_TASKS, PAPER_FILE, RowKey, build_tables, find_runs, load_paper

METRIC = {"cola": "matthews", "stsb": "pearson"}


def write_run(root: Path, task: str, method: str = "lora", rank: int | None = 8, mpc: str = "none", seed: int = 0,
              best: float = 0.8, last: float | None = None, status: str = "completed", model: str = "roberta-base",
              per_mille: float | None = 10.62, error: str | None = None, variant: dict[str, str] | None = None,
              protocol: str | None = None, fingerprint: str | None = None) -> Path:
    """A metrics.json laid out and shaped like the runner's (scores as fractions). ``variant`` / ``protocol``
    None: a file written before runs recorded them (the fields are absent)."""
    metric = METRIC.get(task, "accuracy")
    folder = root / model / task / method / ("no-rank" if rank is None else f"r{rank}") / f"mpc-{mpc}"
    if variant:
        folder /= ",".join(f"{k}={v}" for k, v in sorted(variant.items()))
    folder /= f"seed{seed}"
    folder.mkdir(parents=True)

    def record(score: float, epoch: float) -> dict:
        return {"epoch": epoch, "step": int(10 * epoch), "train_loss": 0.5, "regularizers": {}, "lr": 1e-4,
                "scores": {metric: score, "f1": 0.5}, "elapsed_s": 1.0}

    data = {"status": status, "model": model, "task": task, "method": method, "rank": rank, "mpc": mpc, "seed": seed,
            "metric": metric, "best": record(best, 1.0), "last": record(best if last is None else last, 2.0),
            "history": [], "versions": {}, "git_commit": None}
    if per_mille is not None:
        data["parameters"] = {"trainable": 1, "head": 1, "total": 1000, "per_mille": per_mille}
    if error is not None:
        data["error"] = error
    for name, value in (("variant", variant), ("protocol", protocol), ("config_fingerprint", fingerprint)):
        if value is not None:
            data[name] = value
    (folder / "metrics.json").write_text(json.dumps(data))
    return folder / "metrics.json"


def se(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values))


def run_main(capsys: pytest.CaptureFixture, *args: str) -> str:
    main([str(a) for a in args])
    return capsys.readouterr().out


def markdown_row(text: str, label: str, nth: int = 0) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip() for cell in rows[nth].strip("|").split("|")]


# --- aggregation -------------------------------------------------------------------------------------
def test_mean_and_standard_error_over_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for seed, score in enumerate([0.70, 0.72, 0.74]):
        write_run(tmp_path, "rte", seed=seed, best=score)
    for seed, score in enumerate([0.85, 0.88]):
        write_run(tmp_path, "mrpc", seed=seed, best=score)
    out = run_main(capsys, tmp_path, "--no-param-lookup")
    cells = markdown_row(out, "LoRA")
    assert cells[:3] == ["LoRA", "8", "10.62"]
    rte_se, mrpc_se = se([70, 72, 74]), se([85, 88])  # 1.1547, 1.5
    assert cells[3] == f"72.00 ± {rte_se:.2f} (3)" == "72.00 ± 1.15 (3)"
    assert cells[4] == "86.50 ± 1.50 (2)"
    # The average is the mean of the task means; its SE combines the tasks' SEs (independent runs).
    avg_se = math.sqrt(rte_se**2 + mrpc_se**2) / 2
    assert cells[5] == f"79.25 ± {avg_se:.2f} (2-3)"
    assert "RTE (Acc)" in out and out.index("RTE (Acc)") < out.index("MRPC (Acc)")  # the paper's column order


def test_single_seed_has_no_standard_error(tmp_path: Path) -> None:
    write_run(tmp_path, "cola", best=0.6123)
    table = build_tables(find_runs([tmp_path]))[0]
    cell = table.rows[0].cells["cola"]
    assert (cell.text(), table.metrics["cola"]) == ("61.23 (1)", "matthews")


def test_missing_failed_and_running_cells_are_marked_and_never_averaged(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path, "rte", seed=0, best=0.70)
    write_run(tmp_path, "rte", seed=1, best=0.74)
    write_run(tmp_path, "rte", seed=2, best=0.10, status="failed", error="the loss became nan at step 7\ntrace")
    write_run(tmp_path, "rte", seed=3, best=0.99, status="running")
    write_run(tmp_path, "mrpc", seed=0, best=0.80)
    write_run(tmp_path, "mrpc", method="dora", seed=0, best=0.90, per_mille=11.28)
    write_run(tmp_path, "rte", method="dora", seed=0, best=0.20, status="failed", per_mille=11.28)
    out = run_main(capsys, tmp_path, "--no-param-lookup")
    lora, dora = markdown_row(out, "LoRA"), markdown_row(out, "DoRA")
    assert lora[3] == "72.00 ± 2.00 (2; 1 failed, 1 running)"  # 10 and 99 left out
    assert lora[5] == "incomplete"
    assert dora[3:] == ["– (1 failed)", "90.00 (1)", "incomplete"]
    assert "Runs: 4 completed, 2 failed, 1 running" in out
    assert "- failed: rte LoRA r=8 seed 2: the loss became nan at step 7 (" in out


def test_missing_task_cell_blocks_the_average(tmp_path: Path) -> None:
    write_run(tmp_path, "rte", best=0.7)
    write_run(tmp_path, "mrpc", best=0.8)
    write_run(tmp_path, "rte", method="full", rank=None, best=0.75, per_mille=1000.0)
    table = build_tables(find_runs([tmp_path]))[0]
    full = table.row(RowKey("full", None, "none"))
    assert table.tasks == ["rte", "mrpc"] and "mrpc" not in full.cells
    assert full.average(table.tasks) is None
    assert table.row(RowKey("lora", 8, "none")).average(table.tasks).value == pytest.approx(75.0)


def test_last_epoch_scores_on_request(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path, "sst2", seed=0, best=0.95, last=0.90)
    write_run(tmp_path, "sst2", seed=1, best=0.93, last=0.92)
    assert markdown_row(run_main(capsys, tmp_path, "--no-param-lookup"), "LoRA")[3] == "94.00 ± 1.00 (2)"
    out = run_main(capsys, tmp_path, "--no-param-lookup", "--last")
    assert markdown_row(out, "LoRA")[3] == "91.00 ± 1.00 (2)"
    assert "last epoch" in out and (tmp_path / "report_last.md").is_file() and (tmp_path / "report.md").is_file()


def test_rows_in_the_papers_order_with_its_labels(tmp_path: Path) -> None:
    keys = [("adalora", 8, "o"), ("lora", 2, "n"), ("ssb", None, "none"), ("adalora", 8, "none"), ("lora", 8, "o"),
            ("full", None, "none"), ("hadapter", 8, "none"), ("lora", 8, "none"), ("sam_parser", None, "none")]
    for method, rank, mpc in keys:
        write_run(tmp_path, "rte", method=method, rank=rank, mpc=mpc)
    table = build_tables(find_runs([tmp_path]))[0]
    assert [(r.key.label, r.key.rank) for r in table.rows] == [
        ("Fully FT", None), ("SAM-PARSER", None), ("SSB", None), ("LoRA + MPC_n", 2), ("HAdapter", 8),
        ("LoRA", 8), ("LoRA + MPC_o", 8), ("AdaLoRA - MPC_o", 8), ("AdaLoRA", 8)]


def test_names_order_and_family_come_from_the_method_classes(tmp_path: Path) -> None:
    """A method registered later (no entry anywhere in the report) is labelled and placed by its class."""
    from subspace_tuning.figures import rank_panels
    from subspace_tuning.methods import method_class, register, unregister

    gated = register(type("GatedLoRA", (method_class("lora"),), {
        "name": "gated_lora_report_test", "display_name": "Gated LoRA", "paper_order": 125}))
    try:
        for method in ("trilora", gated.name, "lora", "not_registered"):
            write_run(tmp_path, "rte", method=method)
        for mpc in ("none", "o"):
            write_run(tmp_path, "rte", method=gated.name, mpc=mpc, seed=1)
        rows = build_tables(find_runs([tmp_path]))[0].rows
        assert [r.key.label for r in rows] == ["LoRA", "Gated LoRA", "Gated LoRA + MPC_o", "TriLoRA",
                                               "not_registered"]
        assert [title for title, _ in rank_panels(rows)] == ["methods", "Gated LoRA with MPC"]
    finally:
        unregister(gated.name)


def test_one_table_per_model_and_duplicates_counted_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path / "a", "rte", best=0.7, fingerprint="f1")
    write_run(tmp_path / "b", "rte", best=0.7, fingerprint="f1")  # the same run copied into a second sweep folder
    write_run(tmp_path / "b", "rte", model="deberta-v3-base", best=0.8, per_mille=7.23)
    out = run_main(capsys, tmp_path / "a", tmp_path / "b", "--no-param-lookup", "--out", tmp_path / "out")
    assert "## deberta-v3-base" in out and "## roberta-base" in out
    assert markdown_row(out, "LoRA")[3] == "80.00 (1)" and markdown_row(out, "LoRA", 1)[3] == "70.00 (1; 1 duplicate)"
    assert "Runs: 1 completed, 0 failed, 0 running, 1 duplicate records left out" in out
    assert "- duplicate: rte LoRA r=8 seed 0: 2 records, used " in out
    assert "(the same configuration: copies of one run)" in out
    assert (tmp_path / "out" / "report.md").is_file() and not (tmp_path / "a" / "report.md").exists()


def test_duplicates_of_different_configurations_are_listed_never_averaged(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    # Two sweeps of different settings written before runs recorded their variant: one seed, two results.
    write_run(tmp_path / "a", "rte", best=0.60, fingerprint="lr-1e-4")
    write_run(tmp_path / "b", "rte", best=0.80, fingerprint="lr-1e-3")
    write_run(tmp_path / "b", "rte", seed=1, best=0.70, fingerprint="lr-1e-3")
    out = run_main(capsys, tmp_path / "a", tmp_path / "b", "--no-param-lookup", "--out", tmp_path / "out")
    cell = markdown_row(out, "LoRA")[3]
    assert cell.endswith("(2; 1 duplicate)")  # two seeds, not three: 60 and 80 are never both averaged
    assert cell.split()[0] in ("65.00", "75.00")
    assert "config fingerprints differ" in out
    row = next(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert (row["rte_n"], row["rte_duplicates"]) == ("2", "1")


def test_budget_fallback_for_rows_without_a_recorded_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path, "rte", status="failed", per_mille=None)
    asked = []

    def lookup(model: str, pairs: list) -> dict:
        asked.append((model, pairs))
        return {("lora", 8): 10.6181}

    table = build_tables(find_runs([tmp_path]), budget_lookup=lookup)[0]
    assert asked == [("roberta-base", [("lora", 8)])] and table.rows[0].per_mille == pytest.approx(10.6181)
    assert markdown_row(run_main(capsys, tmp_path, "--no-param-lookup"), "LoRA")[2] == "–"


def test_median_over_seeds_on_request(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for seed, score in enumerate([0.70, 0.72, 0.80]):
        write_run(tmp_path, "rte", seed=seed, best=score)
    for seed, score in enumerate([0.85, 0.88]):
        write_run(tmp_path, "mrpc", seed=seed, best=score)
    write_run(tmp_path, "rte", method="dora", best=0.5, status="failed")
    mean = run_main(capsys, tmp_path, "--no-param-lookup")
    assert markdown_row(mean, "LoRA")[3] == f"74.00 ± {se([70, 72, 80]):.2f} (3)"
    out = run_main(capsys, tmp_path, "--no-param-lookup", "--stat", "median")
    # The median of each cell (even counts: the middle two averaged), no spread; Avg = mean of the task medians.
    assert markdown_row(out, "LoRA")[3:] == ["72.00 (3)", "86.50 (2)", f"{(72 + 86.5) / 2:.2f} (2-3)"]
    assert markdown_row(out, "DoRA")[3] == "– (1 failed)"
    assert out.startswith("# Results (best epoch, median over seeds)") and "Avg: mean of the task medians" in out
    assert "left out of the median" in out
    # Its own files: the mean report written first is not overwritten.
    assert (tmp_path / "report.md").read_text() == mean.split("\nwrote ")[0]
    row = next(r for r in csv.DictReader((tmp_path / "report_median.csv").open()) if r["method"] == "lora")
    assert (row["statistic"], row["rte_median"], row["rte_n"], row["avg_median"]) == ("median", "72.0000", "3",
                                                                                      "79.2500")
    assert "rte_se" not in row and "rte_mean" not in row
    tex = (tmp_path / "report_median.tex").read_text()
    assert "median over seeds (seeds); Avg: mean of the task medians" in tex and "\\pm" not in tex.split("\n", 1)[1]
    assert "tab:roberta-base-median" in tex


def test_median_difference_to_the_paper(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for seed, score in enumerate([0.70, 0.80, 0.81]):
        write_run(tmp_path, "rte", seed=seed, best=score)
    out = run_main(capsys, tmp_path, "--no-param-lookup", "--paper", "--stat", "median", "--format", "md")
    # Table II, LoRA r=8, RTE: 80.14; our median 80.00 (the mean would be 77.00).
    assert markdown_row(out, "↳ ours − paper")[3] == "-0.14" and "our median minus the published" in out


# --- variants: settings changed on the command line ---------------------------------------------------
def test_variants_of_one_method_are_rows_of_their_own(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for seed in range(2):
        write_run(tmp_path, "rte", seed=seed, best=0.60 + 0.02 * seed, variant={"optim.lr": "0.001"},
                  protocol="paper")
        write_run(tmp_path, "rte", seed=seed, best=0.80 + 0.02 * seed, variant={"optim.lr": "3e-4"},
                  protocol="paper")
        write_run(tmp_path, "rte", seed=seed, best=0.70, variant={}, protocol="paper")
    write_run(tmp_path, "rte", method="dora", best=0.9, per_mille=11.28, variant={"method.alpha": "32"})
    write_run(tmp_path, "rte", method="adalora", mpc="o", best=0.75, variant={"optim.lr": "0.001"})
    out = run_main(capsys, tmp_path, "--no-param-lookup")
    table = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # One method's rows together in the paper's order, the experiment's own settings first, then by value.
    assert [row.split(" | ")[0][2:] for row in table] == [
        "LoRA", "LoRA [optim.lr=3e-4]", "LoRA [optim.lr=0.001]", "AdaLoRA [optim.lr=0.001]",
        "DoRA [method.alpha=32]"]
    assert markdown_row(out, "LoRA")[3] == "70.00 ± 0.00 (2)"
    assert markdown_row(out, "LoRA [optim.lr=3e-4]")[3] == "81.00 ± 1.00 (2)"
    assert markdown_row(out, "LoRA [optim.lr=0.001]")[3] == "61.00 ± 1.00 (2)"
    assert "duplicate" not in out.split("## roberta-base")[1]
    rows = {(r["method"], r["variant"]): r for r in csv.DictReader((tmp_path / "report.csv").open())}
    assert set(rows) == {("lora", ""), ("lora", "optim.lr=3e-4"), ("lora", "optim.lr=0.001"),
                         ("adalora", "optim.lr=0.001"), ("dora", "method.alpha=32")}
    assert rows[("lora", "optim.lr=0.001")]["label"] == "LoRA [optim.lr=0.001]"
    assert rows[("lora", "optim.lr=0.001")]["protocol"] == "paper"
    assert rows[("dora", "method.alpha=32")]["protocol"] == ""  # its runs recorded none
    assert float(rows[("lora", "optim.lr=0.001")]["rte_mean"]) == pytest.approx(61.0)


def test_variant_rows_keep_their_own_budget_and_the_papers_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for task in GLUE_TASKS:
        write_run(tmp_path, task, best=0.9, per_mille=None, status="failed")
        write_run(tmp_path, task, best=0.9, per_mille=None, status="failed", variant={"optim.lr": "1e-3"})
        write_run(tmp_path, task, best=0.9, per_mille=None, status="failed", variant={"method.alpha": "32"})
    asked = []

    def lookup(model: str, pairs: list) -> dict:
        asked.append(pairs)
        return {("lora", 8): 10.6181}

    table = build_tables(find_runs([tmp_path]), budget_lookup=lookup)[0]
    # The closed-form budget holds for a learning-rate variant, not for one that changes the method's settings.
    assert asked == [[("lora", 8)]]
    assert [(r.key.variant_text, r.per_mille) for r in table.rows] == [
        ("", pytest.approx(10.6181)), ("method.alpha=32", None), ("optim.lr=1e-3", pytest.approx(10.6181))]
    out = run_main(capsys, tmp_path, "--no-param-lookup", "--paper", "--format", "md")
    assert [markdown_row(out, "↳ paper", i)[3] for i in range(3)] == ["87.38"] * 3  # Table II, LoRA r=8, MNLI


def test_records_without_a_variant_join_the_default_row(tmp_path: Path) -> None:
    write_run(tmp_path / "old", "rte", seed=0, best=0.70)  # written before runs recorded variant and protocol
    write_run(tmp_path / "new", "rte", seed=1, best=0.74, variant={}, protocol="paper")
    (row,) = build_tables(find_runs([tmp_path]))[0].rows
    assert row.key == RowKey("lora", 8, "none") and sorted(row.cells["rte"].values) == [70.0, 74.0]


def test_rows_mixing_protocols_are_flagged(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path, "rte", seed=0, protocol="paper")
    write_run(tmp_path, "rte", seed=1, protocol="scripts")
    out = run_main(capsys, tmp_path, "--no-param-lookup", "--format", "csv")
    assert "- mixed protocols: LoRA r=8 averages runs of the paper, scripts protocols" in out
    assert next(csv.DictReader((tmp_path / "report.csv").open()))["protocol"] == "paper+scripts"


def test_a_malformed_variant_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_run(tmp_path, "rte")
    path.write_text(json.dumps(json.loads(path.read_text()) | {"variant": ["optim.lr=1e-3"]}))
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "'variant' is ['optim.lr=1e-3'], not an object" in capsys.readouterr().err


# --- formats ---------------------------------------------------------------------------------------------
def test_degenerate_runs_are_marked_counted_and_listed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # seed 1 predicted one class at its best evaluation, seed 2 at its last only; seed 0 is a record written before
    # runs kept the flag (no "degenerate" anywhere): not degenerate
    write_run(tmp_path, "rte", seed=0, best=0.70)
    for seed, flags in ((1, {"best": True, "last": True}), (2, {"best": False, "last": True})):
        path = write_run(tmp_path, "rte", seed=seed, best=0.53)
        path.write_text(json.dumps(json.loads(path.read_text()) | {"degenerate": flags}))
    out = run_main(capsys, tmp_path, "--no-param-lookup")
    assert markdown_row(out, "LoRA")[3] == f"58.67 ± {se([70, 53, 53]):.2f} (3)†1"
    assert "†k: k of the cell's seeds are degenerate runs" in out
    assert "Degenerate (†): 1 of 3 completed runs predicted one class" in out
    assert [line for line in out.splitlines() if line.startswith("- degenerate:")] == [
        f"- degenerate: rte LoRA r=8 seed 1 ({tmp_path / 'roberta-base/rte/lora/r8/mpc-none/seed1/metrics.json'})"]
    assert markdown_row(run_main(capsys, tmp_path, "--no-param-lookup", "--last"), "LoRA")[3].endswith("(3)†2")
    assert next(csv.DictReader((tmp_path / "report.csv").open()))["rte_degenerate"] == "1"
    assert "\\textdagger{}1" in (tmp_path / "report.tex").read_text()
    write_run(tmp_path / "clean", "rte", best=0.70)
    out = run_main(capsys, tmp_path / "clean", "--no-param-lookup")
    assert markdown_row(out, "LoRA")[3] == "70.00 (1)" and "Degenerate (" not in out


def test_markdown_csv_and_latex_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for seed, score in enumerate([0.70, 0.72, 0.74]):
        write_run(tmp_path, "rte", mpc="o", seed=seed, best=score)
    write_run(tmp_path, "stsb", mpc="o", best=0.9, status="failed")
    out = run_main(capsys, tmp_path, "--no-param-lookup")
    assert (tmp_path / "report.md").read_text() in out
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["method"], row["label"], row["rank"], row["mpc"]) == (
        "roberta-base", "lora", "LoRA + MPC_o", "8", "o")
    assert float(row["rte_mean"]) == pytest.approx(72.0) and float(row["rte_se"]) == pytest.approx(se([70, 72, 74]),
                                                                                                   abs=1e-4)
    assert (row["rte_n"], row["stsb_n"], row["stsb_failed"], row["avg_mean"]) == ("3", "", "1", "")
    tex = (tmp_path / "report.tex").read_text()
    assert "\\begin{tabular}" in tex and "LoRA + MPC$_o$" in tex and "72.00 $\\pm$ 1.15 (3)" in tex
    assert tex.count("&") == 2 * 5  # header and one row, 6 columns each

    run_main(capsys, tmp_path, "--no-param-lookup", "--format", "csv", "--out", tmp_path / "only_csv")
    assert [p.name for p in (tmp_path / "only_csv").iterdir()] == ["report.csv"]


# --- the paper's numbers ---------------------------------------------------------------------------
def test_paper_values_and_differences(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for task in GLUE_TASKS:
        write_run(tmp_path, task, best=0.9)
        write_run(tmp_path, task, method="vera", best=0.9, per_mille=1.0)
    out = run_main(capsys, tmp_path, "--no-param-lookup", "--paper")
    assert markdown_row(out, "LoRA")[3:] == ["90.00 (1)"] * 9
    # Table II, LoRA at r=8: MNLI 87.38, SST-2 94.84, CoLA 64.58, QQP 89.39, QNLI 92.47, RTE 80.14, MRPC 89.21,
    # STS-B 90.96, average 86.12.
    assert markdown_row(out, "↳ paper")[2:] == ["10.62", "87.38", "94.84", "64.58", "89.39", "92.47", "80.14",
                                                "89.21", "90.96", "86.12"]
    assert markdown_row(out, "↳ ours − paper")[3:] == ["+2.62", "-4.84", "+25.42", "+0.61", "-2.47", "+9.86",
                                                       "+0.79", "-0.96", "+3.88"]
    assert markdown_row(out, "↳ paper", 1)[3:] == ["no published number"] * 9  # VeRA is not in the paper
    assert markdown_row(out, "↳ ours − paper", 1)[3:] == ["–"] * 9
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "report.csv").open())}
    assert float(rows["lora"]["mnli_paper"]) == 87.38 and float(rows["lora"]["avg_diff"]) == pytest.approx(3.88)
    assert rows["vera"]["mnli_paper"] == ""
    assert "no published number" in (tmp_path / "report.tex").read_text()


def test_paper_average_over_a_subset_of_tasks_and_models_without_a_table(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path, "rte", method="ssb", rank=None, best=0.8)
    write_run(tmp_path, "mrpc", method="ssb", rank=None, best=0.9)
    write_run(tmp_path, "rte", model="minilm", best=0.6)
    out = run_main(capsys, tmp_path, "--no-param-lookup", "--paper")
    # Table II, SSB: RTE 78.53, MRPC 87.75; the printed 84.72 averages all 8 tasks, so compare on the 2 shown.
    assert markdown_row(out, "↳ paper")[3:] == ["78.53", "87.75", f"{(78.53 + 87.75) / 2:.2f}*"]
    assert "* the paper's average over the tasks shown" in out
    assert "no published number for minilm" in out


def test_paper_data_file_is_complete_and_consistent() -> None:
    data = json.loads(PAPER_FILE.read_text())
    assert "2407.05417" in data["source"]["citation"]
    known = {(i["model"], i["row"]) for i in data["inconsistent_averages"]}
    assert len(known) == 5
    for model, table in data["tables"].items():
        rows = table["rows"]
        assert len(rows) == 58 and [r["row"] for r in rows] == list(range(1, 59))
        for row in rows:
            assert list(row["scores"]) == list(GLUE_TASKS)
            mean = statistics.fmean(row["scores"].values())
            # The printed averages match their rows to rounding, except where the paper itself is inconsistent.
            assert (abs(mean - row["avg"]) <= 0.011) != ((model, row["row"]) in known)
        by_key = {(r["method"], r["rank"], r["mpc"]): r for r in rows}
        for rank in (2, 4, 8, 16):  # the paper prints PA and LoRA + MPC_n identically
            assert by_key[("pa", rank, "none")]["scores"] == by_key[("lora", rank, "n")]["scores"]
    base = {(r["method"], r["rank"]): r["per_mille"] for r in data["tables"]["roberta-base"]["rows"]}
    assert [base[("lora", r)] for r in (2, 4, 8, 16)] == [2.65, 5.31, 10.62, 21.24]  # the paper's Table II budgets
    assert [base[(m, None)] for m in ("sam_parser", "ia3", "ssl", "ssb", "bitfit", "full")] == [
        0.44, 0.44, 0.22, 0.66, 0.82, 1000]
    paper = load_paper()
    assert paper.score("deberta-v3-base", RowKey("full", None, "none"), "cola", "matthews") == 69.19
    assert paper.score("deberta-v3-base", RowKey("full", None, "none"), "cola", "accuracy") is None


def test_paper_data_is_package_data() -> None:
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert "paper_results.json" in pyproject.split("[tool.setuptools.package-data]")[1]


# --- errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, message", [
    ("empty", "found no metrics.json under"),
    ("absent", "no such folder"),
    ("broken", "is not valid JSON"),
    ("not_a_run", "is not a run record: it has no 'task'"),
    ("format", "unknown --format 'md,html'"),
])
def test_errors_are_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str) -> None:
    folder, args = tmp_path / "sweep", []
    folder.mkdir()
    if case == "absent":
        folder = tmp_path / "nowhere"
    elif case == "broken":
        write_run(folder, "rte").write_text('{"status": "compl')
    elif case == "not_a_run":
        path = write_run(folder, "rte")
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "task"}))
    elif case == "format":
        write_run(folder, "rte")
        args = ["--format", "md,html"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(folder), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err
    assert "Traceback" not in err
    if case == "broken":
        assert "metrics.json" in err and "line 1" in err


def test_report_imports_no_heavy_libraries() -> None:
    code = ("import sys, subspace_tuning.report; "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_results_report_and_figures_import_no_cycle() -> None:
    """results is the shared layer: it imports neither renderer, and the report and the figures never import each
    other (each imported alone in a fresh interpreter)."""
    others = {"results": ("report", "figures"), "report": ("figures",), "figures": ("report",)}
    for module, forbidden in others.items():
        code = (f"import sys, subspace_tuning.{module}; "
                f"print([m for m in {forbidden!r} if 'subspace_tuning.' + m in sys.modules])")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "[]", (module, result.stdout)


# --- figures ----------------------------------------------------------------------------------------------
def test_figures_written_as_png_and_pdf(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for seed in range(3):
        for task in ("rte", "mrpc"):
            write_run(tmp_path, task, method="full", rank=None, seed=seed, best=0.80 + 0.01 * seed, per_mille=1000.0)
            for rank in (2, 8):
                write_run(tmp_path, task, rank=rank, seed=seed, best=0.70 + 0.01 * (seed + rank))
                write_run(tmp_path, task, rank=rank, mpc="o", seed=seed, best=0.72 + 0.01 * (seed + rank))
            for method, budget in (("ssl", 0.22), ("ssb", 0.66)):
                write_run(tmp_path, task, method=method, rank=None, seed=seed, best=0.75, per_mille=budget)
    write_run(tmp_path, "rte", method="dora", rank=8, best=0.7)  # incomplete: named in a footnote, not drawn
    # Through ``python -m``, as users run it: figures.py must see the same row classes as the report.
    result = subprocess.run([sys.executable, "-m", "subspace_tuning.report", str(tmp_path), "--no-param-lookup",
                             "--figures", "--paper", "--format", "md"], capture_output=True, text=True, check=True)
    figures = tmp_path / "figures"
    names = sorted(p.name for p in figures.iterdir())
    assert names == ["roberta-base_avg_vs_rank.pdf", "roberta-base_avg_vs_rank.png",
                     "roberta-base_reconstruction.pdf", "roberta-base_reconstruction.png"]
    assert (figures / "roberta-base_avg_vs_rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (figures / "roberta-base_reconstruction.pdf").read_bytes()[:5] == b"%PDF-"
    # Panels: every method as the paper runs it (LoRA), and LoRA with its MPC variants (LoRA, LoRA + MPC_o).
    assert (f"{figures / 'roberta-base_avg_vs_rank'}.png and .pdf: 3 lines in 2 panels, full fine-tuning line at "
            f"81.00; 1 incomplete rows not drawn") in result.stdout
    assert (f"{figures / 'roberta-base_reconstruction'}.png and .pdf: 2 methods, full fine-tuning line at 81.00"
            in result.stdout)


def test_figures_keep_variants_apart_and_take_the_median(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from subspace_tuning.figures import write_figures

    for seed in range(3):
        for task in ("rte", "mrpc"):
            for rank in (2, 8):
                write_run(tmp_path, task, rank=rank, seed=seed, best=0.70 + 0.01 * seed)
                write_run(tmp_path, task, rank=rank, seed=seed, best=0.50 + 0.1 * seed, variant={"optim.lr": "1e-3"})
    tables = build_tables(find_runs([tmp_path]), statistic="median")
    (line,) = write_figures(tables, tmp_path / "figures", load_paper())
    assert line == f"{tmp_path / 'figures' / 'roberta-base_avg_vs_rank_median'}.png and .pdf: 2 lines in 1 panels, " \
                   "no full fine-tuning line"
    assert [row.average(tables[0].tasks).value for row in tables[0].rows] == pytest.approx([71.0, 60.0] * 2)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "roberta-base_avg_vs_rank_median.pdf", "roberta-base_avg_vs_rank_median.png"]
