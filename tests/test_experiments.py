"""Experiment configs expand to exactly the paper's grids."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
from conftest import train_py
from omegaconf import OmegaConf

from subspace_tuning.config import CONF_DIR

REPO = CONF_DIR.parent


def paper_rows(model: str) -> list[tuple[str, int | None, str]]:
    tables = json.loads(files("subspace_tuning").joinpath("paper_results.json").read_text())["tables"]
    return [(row["method"], row["rank"], row["mpc"]) for row in tables[model]["rows"]]


def grid_rows(row_strings: list[str]) -> list[tuple[str, int | None, str]]:
    rows = []
    for row in row_strings:
        values = dict(part.split("=", 1) for part in row.split())
        rank = int(values["rank"]) if "rank" in values else None
        rows.append((values["method"], rank, values.get("mpc", "none")))
    return rows


@pytest.mark.parametrize("experiment,model", [("table2_roberta_base", "roberta-base"),
                                              ("table3_deberta_v3_base", "deberta-v3-base"),
                                              ("table4_roberta_large", "roberta-large")])
def test_table_experiments_hold_exactly_the_paper_rows(experiment, model):
    assert OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml").defaults[1] == {"override /model": model}
    grid = OmegaConf.load(CONF_DIR / "grid" / "paper_table.yaml")
    assert sorted(grid_rows(list(grid.rows)), key=str) == sorted(paper_rows(model), key=str)
    assert grid.params.task.split(",") == ["mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb"]
    assert grid.params.seed == "0,1,2,3,4"


def test_dry_run_prints_the_grid_size(tmp_path):
    result = train_py(["-m", "experiment=table2_roberta_base", "hydra.sweeper.dry_run=true",
                       f"output_root={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("grid: 2320 runs (58 rows x 40 grid points); 0 already complete, 2320 to run")
    assert not list(tmp_path.glob("**/metrics.json"))


@pytest.mark.parametrize("task,samples", [("rte", 128), ("mrpc", 128), ("stsb", 256), ("cola", 256), ("sst2", 768)])
def test_mini_glue_states_its_training_subset_per_task(task, samples):
    from subspace_tuning.config import compose

    cfg = compose(["experiment=mini_glue", f"task={task}"])
    assert cfg.model.name == "minilm" and cfg.data.max_train_samples == samples and cfg.data.max_eval_samples is None
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.max_length, cfg.train.threads) == (1, 16, 64, 1)
    sweep = OmegaConf.load(CONF_DIR / "experiment" / "mini_glue.yaml").hydra
    assert len(sweep.sweeper.rows) * 5 * 3 == 210 and sweep.launcher.n_jobs == 2


AUTHORS_METHODS = ["lora", "pissa", "milora", "moslora", "lora_dash", "liera", "flexlora"]


@pytest.mark.parametrize("experiment,model", [("authors_methods_roberta_base", "roberta-base"),
                                              ("authors_methods_deberta_v3_base", "deberta-v3-base"),
                                              ("authors_methods_roberta_large", "roberta-large")])
def test_authors_methods_experiments_run_every_newer_method_beside_lora(experiment, model):
    from subspace_tuning.config import compose
    from subspace_tuning.methods import catalogue

    grid = OmegaConf.load(CONF_DIR / "grid" / "authors_methods.yaml")
    rows = grid_rows(list(grid.rows))
    expected = [(method, rank, "none") for rank in (2, 4, 8, 16) for method in AUTHORS_METHODS
                if (method, rank) != ("flexlora", 2)]  # FlexLoRA refuses r = 2: nothing to move between modules
    assert rows == expected
    assert set(AUTHORS_METHODS) <= {cls.name for cls in catalogue()}
    assert grid.params.seed == "0,1,2,3,4" and "rank" not in grid.params
    assert grid.params.task.split(",") == ["mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb"]
    cfg = compose([f"experiment={experiment}", "method=lora_dash"])
    assert (cfg.model.name, cfg.experiment_name, cfg.protocol.name) == (model, experiment, "paper")


def test_authors_methods_dry_run_counts_every_run(tmp_path):
    result = train_py(["-m", "experiment=authors_methods_roberta_base", "hydra.sweeper.dry_run=true",
                       f"output_root={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("grid: 1080 runs (27 rows x 40 grid points); 0 already complete, 1080 to run")


def test_cpu_study_holds_the_issue_rows_the_study_compares():
    from subspace_tuning.study import STUDY_ROWS

    sweep = OmegaConf.load(CONF_DIR / "experiment" / "cpu_study.yaml").hydra.sweeper
    rows = [(method, mpc) for method, _, mpc in grid_rows(list(sweep.rows))]
    assert rows == [(row.method, row.mpc) for row in STUDY_ROWS]
    assert sweep.params.seed == "0,1,2,3,4" and "stsb" in sweep.params.task.split(",")  # a pair task


def test_cpu_study_lrs_are_the_committed_searchs_choice():
    from subspace_tuning.config import compose
    from subspace_tuning.results import find_runs
    from subspace_tuning.study import STUDY_ROWS, lr_search

    result = lr_search(find_runs([REPO / "docs" / "cpu_study" / "runs" / "lr_search"]))
    assert (result["task"], result["check_tasks"]) == ("sst2", ["stsb"])
    search = result["methods"]
    assert set(search) == {row.method for row in STUDY_ROWS}
    assert not [method for method, entry in search.items() if entry["edge"] or entry["pending"]]
    study_lr = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / "cpu_study.yaml").study_lr)
    assert study_lr == {task: {method: entry["chosen"][task] for method, entry in search.items()}
                        for task in ("sst2", "stsb")}
    for row in STUDY_ROWS:  # what a run of the study trains with
        cfg = compose(["experiment=cpu_study", "task=stsb", f"method={row.method}", f"mpc={row.mpc}"])
        assert cfg.optim.lr == study_lr["stsb"][row.method]


def test_cpu_study_two_run_smoke_then_the_study_tables(tmp_path):
    import subprocess
    import sys

    result = train_py(["-m", "experiment=cpu_study", "model=tiny-roberta", "task.data_dir=null",
                       "hydra.launcher.n_jobs=1", "hydra.sweeper.params.task=toy-sentiment",
                       "hydra.sweeper.params.seed=0",
                       "hydra.sweeper.rows=['method=lora','method=ia3']", "train.max_steps=2",
                       "data.max_train_samples=32", "train.eval_batch_size=200", f"output_root={tmp_path}",
                       f"data.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "cpu_study").glob("**/metrics.json")]
    assert sorted(r["method"] for r in records) == ["ia3", "lora"]
    assert all(r["status"] == "completed" and r["model"] == "tiny-roberta" and r["rank"] in (8, None) for r in records)
    study = subprocess.run([sys.executable, "-m", "subspace_tuning.study", str(tmp_path / "cpu_study"), "--out",
                            str(tmp_path / "tables")], capture_output=True, text=True, timeout=300)
    assert study.returncode == 0, study.stderr
    assert (tmp_path / "tables" / "study.md").is_file() and (tmp_path / "tables" / "study.json").is_file()
