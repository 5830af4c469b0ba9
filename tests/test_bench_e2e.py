"""The end-to-end benchmark (``python -m subspace_tuning.bench.e2e``): both sides run the same job on the same rows,
alternate ours / peer pair after pair, and report every phase (no timing thresholds: numbers from a shared test
machine mean nothing; docs/benchmarks.md has the real table)."""

from __future__ import annotations

import json

import pytest

from subspace_tuning.bench import e2e

pytest.importorskip("peft")

PHASE_KEYS = ("startup_s", "train_s", "eval_s", "other_s", "total_s")


def quick_args(tmp_path, *extra: str):
    return e2e.parse_args(["--quick", "--work-dir", str(tmp_path / "work"), *extra])


def test_quick_run_writes_both_sides_with_every_phase(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    result = e2e.main(["--quick", "--pairs", "1", "--work-dir", str(tmp_path / "work"), "--json", str(out),
                       "--length-grouping", "both"])  # the Trainer's length-grouped sampler runs too
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = result["rows"]
    assert [(r["side"], r["pair"], r["order"]) for r in rows] == [("ours", 1, 0), ("peer", 1, 1)]
    for r in rows:
        assert r["error"] is None and r["returncode"] == 0, r
        assert all(r[key] >= 0 for key in PHASE_KEYS), r
        assert 0 < r["data_ready_s"] < r["startup_s"] and r["train_s"] > 0
        assert r["total_s"] > r["startup_s"] + r["train_s"]
        assert r["steps"] == 4 and r["steps_per_s"] > 0  # 32 rows, batch 8, one epoch
        assert 50 < r["peak_rss_mb"] < 20_000 and 0 <= r["score"] <= 1
    ours, peer = rows
    assert not ours["cached_tokens"]  # a fresh cache: the first run tokenises
    (entry,) = result["summary"]
    assert entry["job"] == "toy-sentiment/lora" and entry["ours"]["runs"] == entry["peer"]["runs"] == 1
    assert entry["ratio"] == pytest.approx(ours["total_s"] / peer["total_s"], rel=1e-2)
    table = capsys.readouterr().out
    assert "| toy-sentiment/lora | ours |" in table and "| toy-sentiment/lora | peer |" in table


def test_pairs_alternate_ours_and_peer_over_every_job(tmp_path, monkeypatch):
    """A B A B ...: every pair runs each job once, ours first, then the peer."""
    calls = []

    def fake(side: str):
        def run(job, folder, *rest):
            pair, order = rest[-3], rest[-2]
            calls.append((pair, job.name, side, order))
            return {"job": job.name, "side": side, "pair": pair, "order": order, "error": "not run"}
        return run

    monkeypatch.setattr(e2e, "run_ours", fake("ours"))
    monkeypatch.setattr(e2e, "run_peer", fake("peer"))
    jobs = [e2e.Job("t", m, []) for m in ("lora", "ia3")]
    e2e.run_pairs(jobs, quick_args(tmp_path, "--pairs", "3"), tmp_path)
    expected = [(p, f"t/{m}", side) for p in (1, 2, 3) for m in ("lora", "ia3") for side in ("ours", "peer")]
    assert [c[:3] for c in calls] == expected
    assert [c[3] for c in calls] == list(range(12))


def test_summary_takes_medians_over_completed_pairs_and_paired_ratios():
    def r(side, pair, total, score, error=None):
        return {"job": "t/lora", "side": side, "pair": pair, "error": error, "startup_s": 1.0, "train_s": 2.0,
                "eval_s": 0.5, "other_s": total - 3.5, "total_s": total, "steps_per_s": 3.0, "peak_rss_mb": 100.0,
                "score": score}

    rows = [r("ours", 1, 10.0, 0.8), r("peer", 1, 20.0, 0.7), r("ours", 2, 30.0, 0.9), r("peer", 2, 20.0, 0.8),
            r("ours", 3, 12.0, 0.85), r("peer", 3, 15.0, 0.9), r("ours", 4, 1.0, 0.1, error="exit 1")]
    (entry,) = e2e.summarise(rows)
    assert entry["ours"]["total_s"] == 12.0 and entry["peer"]["total_s"] == 20.0  # the failed run is left out
    assert entry["ours"]["runs"] == 3 and entry["ours"]["score"] == 0.85
    assert entry["ours"]["score_mean"] == 0.85 and entry["ours"]["score_std"] == pytest.approx(0.05)
    assert entry["ratio"] == 0.6
    assert entry["paired_ratio"] == pytest.approx(0.8)  # median of 0.5, 1.5, 0.8
    assert not entry["target_met"]
    table = e2e.format_table([entry])
    assert "| t/lora | ours | 1.0 | 2.0 | 0.5 | 8.5 | 12.0 |" in table and "0.60 (0.80)" in table


def test_both_sides_get_the_same_settings_rows_and_order(tmp_path):
    """The peer's job is resolved from our run's configuration, and its rows are our loaders' rows, in their order."""
    from subspace_tuning.bench.e2e_peer import select_rows
    from subspace_tuning.config import compose
    from subspace_tuning.data import build_dataloaders
    from subspace_tuning.models import load_tokenizer

    args = quick_args(tmp_path, "--methods", "adalora", "--train-samples", "48", "--eval-samples", "40")
    (job,) = e2e.build_jobs(args)
    cfg = compose([*job.overrides, f"data.cache_dir={tmp_path / 'cache'}"])
    peer = job.peer
    assert peer["lr"] == cfg.optim.lr and peer["weight_decay"] == cfg.optim.weight_decay
    assert (peer["epochs"], peer["batch_size"], peer["seed"], peer["threads"]) == (1, 8, 0, 1)
    assert peer["total_steps"] == 6 and peer["warmup_steps"] == int(0.06 * 6)  # protocol=simple: 6% warmup
    assert peer["adalora"] and peer["peft_config"]["total_step"] == 6 and peer["peft_config"]["init_r"] == 8
    tokenizer = load_tokenizer(cfg.model)
    train_loader, eval_loaders = build_dataloaders(cfg, tokenizer)
    train, dev = select_rows(cfg.task, 48, 40, tokenizer, 32, drop_token_types=True)
    assert train["input_ids"] == train_loader.dataset["input_ids"] and train["labels"] == train_loader.dataset["labels"]
    ours_dev = next(iter(eval_loaders.values())).dataset
    assert dev["input_ids"] == ours_dev["input_ids"] and dev["labels"] == ours_dev["labels"]
    assert set(train.column_names) == set(train_loader.dataset.column_names)


def test_pairs_cycle_through_the_seeds_with_both_sides_on_the_pairs_seed(tmp_path, monkeypatch):
    """--seeds 2,0 --pairs 3: pairs run seeds 0, 2, 0; each side of a pair runs the job composed for that seed."""
    from subspace_tuning.config import compose

    args = quick_args(tmp_path, "--seeds", "2,0", "--pairs", "3", "--lr", "3e-3")
    jobs = e2e.build_jobs(args)
    assert [job.seed for job in jobs] == [0, 2]
    for job in jobs:
        cfg = compose(job.overrides)
        assert cfg.seed == job.peer["seed"] == job.seed
        assert cfg.optim.lr == job.peer["lr"] == 3e-3
    calls = []
    monkeypatch.setattr(e2e, "run_ours", lambda job, *rest: calls.append(("ours", job.seed)) or {})
    monkeypatch.setattr(e2e, "run_peer", lambda job, *rest: calls.append(("peer", job.seed)) or {})
    monkeypatch.setattr(e2e, "finish_row", lambda row: row)
    e2e.run_pairs(jobs, args, tmp_path)
    assert calls == [("ours", 0), ("peer", 0), ("ours", 2), ("peer", 2), ("ours", 0), ("peer", 0)]


@pytest.mark.parametrize("grouping, ours, peer", [("ours", True, False), ("both", True, True), ("none", False, False)])
def test_length_grouping_says_which_side_groups_its_batches(tmp_path, grouping, ours, peer):
    from subspace_tuning.config import compose

    (job,) = e2e.build_jobs(quick_args(tmp_path, "--length-grouping", grouping))
    assert compose(job.overrides).data.group_by_length is ours
    assert job.peer["group_by_length"] is peer


@pytest.mark.parametrize("argv, message", [
    (["--pairs", "0"], "--pairs"),
    (["--methods", "sam_parser"], "sam_parser"),
    (["--tasks", "nope"], "nope"),
    (["--data-dir", "/nonexistent/glue"], "/nonexistent/glue"),
    (["--model", "../x"], "../x"),
    (["--pairs", "1", "--pairs", "2"], "given twice"),
    (["--tasks", "mnli"], "evaluation splits"),
    (["--seq-len", "100000"], "data.max_length=100000"),
    (["--seeds", "0,x"], "--seeds"),
    (["--lr", "0"], "--lr"),
])
def test_bad_options_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        e2e.main(["--quick", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_a_non_empty_work_dir_is_refused(tmp_path, capsys):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "old").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        e2e.main(["--quick", "--work-dir", str(tmp_path / "work")])
    assert exit_info.value.code == 2 and "not empty" in capsys.readouterr().err
