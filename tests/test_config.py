"""Every config group option composes, and the run folder layout resolves."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from subspace_tuning.config import CONF_DIR, compose, method_options
from subspace_tuning.methods import build_method

GROUPS = ("model", "task", "method", "mpc", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose([f"{group}={option}"], return_hydra_config=True)
    OmegaConf.resolve(cfg)  # every interpolation (run folder included) resolves
    assert cfg.hydra.run.dir.startswith(f"{cfg.output_root}/{cfg.experiment_name}/{cfg.model.name}/")


@pytest.mark.parametrize("method", options("method"))
def test_every_method_yaml_builds(method):
    cfg = compose([f"method={method}"])
    built = build_method(cfg.method.name, method_options(cfg), cfg.rank)
    assert built.name == method == cfg.method.name


def test_tasks_carry_the_paper_table6_hyperparameters():
    table6 = {"mnli": (5e-4, 7), "sst2": (8e-4, 24), "cola": (5e-4, 25), "qqp": (5e-4, 5), "qnli": (1.2e-3, 5),
              "rte": (1.2e-3, 50), "mrpc": (1e-3, 30), "stsb": (2.2e-3, 25)}
    for task, (lr, epochs) in table6.items():
        cfg = compose([f"task={task}"])
        assert (cfg.optim.lr, cfg.train.epochs, cfg.train.batch_size) == (lr, epochs, 32)


def test_overrides_reach_the_run():
    cfg = compose(["task=rte", "optim.lr=3e-4", "train.epochs=3", "rank=2", "seed=4"], return_hydra_config=True)
    assert (cfg.optim.lr, cfg.train.epochs, cfg.rank, cfg.seed) == (3e-4, 3, 2, 4)
    assert cfg.hydra.run.dir == "outputs/default/roberta-base/rte/lora/r2/mpc-none/seed4"


def test_quickstart_needs_no_download():
    cfg = compose(["experiment=quickstart"])
    assert cfg.model.source == "minilm" and cfg.task.builtin and cfg.experiment_name == "quickstart"


def test_paper_models_carry_their_dimensions():
    dims = {"roberta-base": (768, 12), "roberta-large": (1024, 24), "deberta-v3-base": (768, 12)}
    for name, (hidden, layers) in dims.items():
        arch = compose([f"model={name}"]).model.arch
        assert (arch.hidden_size, arch.num_hidden_layers) == (hidden, layers)
