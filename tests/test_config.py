"""Every config group option composes, and the run folder layout resolves."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from subspace_tuning.config import CONF_DIR, compose, method_options
from subspace_tuning.methods import build_method

GROUPS = ("model", "task", "method", "mpc", "protocol", "experiment")


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
    # settings outside the readable path get a variant folder: runs of different configurations never share one
    # (numbers in one spelling: 3e-4 and 0.0003 name the same folder)
    assert cfg.hydra.run.dir == "outputs/default/roberta-base/rte/lora/r2/mpc-none/optim.lr=0.0003,train.epochs=3/seed4"


def test_rank_free_methods_share_one_folder_whatever_the_rank():
    from subspace_tuning.resume import config_fingerprint

    two, eight = (compose(["method=ia3", f"rank={r}"], return_hydra_config=True) for r in (2, 8))
    assert two.hydra.run.dir == eight.hydra.run.dir == "outputs/default/roberta-base/rte/ia3/no-rank/mpc-none/seed0"
    assert config_fingerprint(two) == config_fingerprint(eight)


def test_unsafe_path_values_stay_inside_the_output_tree():
    cfg = compose(["seed=/../../x", "method.alpha=a/b"], return_hydra_config=True)
    assert ".." not in cfg.hydra.run.dir.split("/") and cfg.hydra.run.dir.startswith("outputs/default/roberta-base/")


def test_protocol_paper_takes_table6_and_the_authors_scripts():
    rte = compose(["task=rte"])  # RTE: Table 6 lr 1.2e-3; scripts: warmup 200 of 3900 steps, eval every 100
    assert (rte.protocol.name, rte.optim.lr, rte.optim.weight_decay, rte.model.classifier_dropout) == \
        ("paper", 1.2e-3, 0.01, 0.2)
    assert rte.protocol.reference_steps == 78 * 50
    assert round(rte.optim.warmup_ratio * 3900) == 200 and round(rte.train.eval_steps * 3900) == 100
    adalora = compose(["task=rte", "method=adalora", "mpc=o"])
    assert (round(adalora.method.tinit * 3900), round(adalora.method.tfinal * 3900), adalora.method.alpha,
            adalora.mpc.weight) == (600, 1800, 32, 0.3)
    assert compose(["task=rte", "method=full"]).optim.lr == 2e-5  # the model's own GLUE lr, not the PEFT one
    # where Table 6 and the scripts disagree, paper keeps Table 6 and scripts takes the scripts' lr
    assert (compose(["task=qnli"]).optim.lr, compose(["task=qnli", "protocol=scripts"]).optim.lr) == (1.2e-3, 5e-4)
    simple = compose(["task=rte", "protocol=simple"])
    assert (simple.optim.warmup_ratio, simple.train.eval_steps, simple.model.classifier_dropout) == (0.06, None, None)


def test_quickstart_needs_no_download():
    cfg = compose(["experiment=quickstart"])
    assert cfg.model.source == "minilm" and cfg.task.builtin and cfg.experiment_name == "quickstart"


def test_paper_models_carry_their_dimensions():
    dims = {"roberta-base": (768, 12), "roberta-large": (1024, 24), "deberta-v3-base": (768, 12)}
    for name, (hidden, layers) in dims.items():
        arch = compose([f"model={name}"]).model.arch
        assert (arch.hidden_size, arch.num_hidden_layers) == (hidden, layers)


@pytest.mark.parametrize("task", ["mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb"])
def test_protocol_fractions_give_the_scripts_step_counts_on_the_full_data(task):
    from subspace_tuning.config import steps_of

    cfg = compose([f"task={task}", "method=adalora"])
    total, scripts = cfg.protocol.reference_steps, cfg.task.scripts
    assert total == -(-cfg.task.train_size // 32) * cfg.task.epochs
    warmup = scripts.warmup_steps if scripts.warmup_steps is not None else scripts.warmup_ratio * total
    assert round(cfg.optim.warmup_ratio * total) == round(warmup)
    assert steps_of(cfg.train.eval_steps, total) == scripts.eval_steps
    assert [steps_of(cfg.method[k], total) for k in ("tinit", "tfinal", "deltaT")] == \
        [scripts.adalora.tinit, scripts.adalora.tfinal, scripts.adalora.deltaT]
    # a run on an eighth of the data keeps the proportions instead of outlasting the run
    assert abs(steps_of(cfg.train.eval_steps, total // 8) - max(1, scripts.eval_steps / 8)) <= 1


def test_a_per_method_lr_wins_over_the_protocol_and_mpc_keeps_the_methods():
    by_method = "+optim.lr_by_method={lora: 0.003, full: 0.0002}"
    assert compose(["method=lora", "mpc=o", by_method]).optim.lr == 0.003
    assert compose(["method=full", by_method]).optim.lr == 0.0002
    other = compose(["method=dora", "protocol=simple", "task=rte", by_method])
    assert other.optim.lr == other.task.lr  # a method the mapping does not name keeps the protocol's
