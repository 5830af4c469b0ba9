"""validate_settings: every bad setting is refused up front, named as typed, all in one paragraph."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, model_cfg
from omegaconf import OmegaConf, open_dict

from subspace_tuning.config import CONF_DIR, compose
from subspace_tuning.errors import ConfigError
from subspace_tuning.validate import position_limit, validate_settings

FAST = ["model=tiny-roberta", "task=toy-sentiment"]

# (overrides on top of FAST, a phrase the message must contain)
REFUSED = [
    (["seed=abc"], "seed='abc' is not allowed: it must be an integer >= 0"),
    (["seed=/../../x"], "seed='/../../x' is not allowed"),
    (["seed=-1"], "seed=-1 is not allowed"),
    (["seed=true"], "seed=true is not allowed"),
    (["seed=2.0"], "seed=2.0 is not allowed"),  # would name a second folder (seed2.0) for the run seed2
    (["rank=0"], "rank=0 is not allowed: it must be an integer >= 1"),
    (["rank=2.5"], "rank=2.5 is not allowed"),
    (["method=bitfit", "rank=abc"], "rank='abc' is not allowed"),  # rank-free methods still need an integer
    (["optim.lr=inf"], "optim.lr=inf is not allowed: it must be a finite number > 0"),
    (["optim.lr=nan"], "optim.lr=nan is not allowed"),
    (["optim.lr=-1e-3"], "optim.lr=-0.001 is not allowed"),
    (["optim.lr=0"], "optim.lr=0 is not allowed"),
    (["optim.lr=fast"], "optim.lr='fast' is not allowed"),
    (["optim.lr=true"], "optim.lr=true is not allowed"),
    (["optim.head_lr=0"], "optim.head_lr=0 is not allowed: it must be null or a finite number > 0"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 is not allowed: it must be a finite number >= 0"),
    (["optim.head_weight_decay=nan"], "optim.head_weight_decay=nan is not allowed"),
    (["optim.eps=0"], "optim.eps=0 is not allowed: it must be a finite number > 0"),
    (["optim.betas=[0.9,1.0]"], "optim.betas=[0.9, 1.0] is not allowed: it must be two numbers in [0, 1)"),
    (["optim.betas=[0.9]"], "optim.betas=[0.9] is not allowed"),
    (["optim.betas=[a,0.9]"], "optim.betas=['a', 0.9] is not allowed"),
    (["optim.max_grad_norm=-1"], "optim.max_grad_norm=-1 is not allowed"),
    (["optim.max_grad_norm=inf"], "optim.max_grad_norm=inf is not allowed"),
    (["optim.warmup_ratio=1.0"], "optim.warmup_ratio=1.0 is not allowed: it must be a number in [0, 1)"),
    (["optim.warmup_ratio=-0.1"], "optim.warmup_ratio=-0.1 is not allowed"),
    (["++optim.warmup_steps=-1"], "optim.warmup_steps=-1 is not allowed: it must be null or an integer >= 0"),
    (["++optim.warmup_steps=2.5"], "optim.warmup_steps=2.5 is not allowed"),
    (["train.batch_size=0"], "train.batch_size=0 is not allowed: it must be an integer >= 1"),
    (["train.batch_size=2.5"], "train.batch_size=2.5 is not allowed"),
    (["train.eval_batch_size=abc"], "train.eval_batch_size='abc' is not allowed"),
    (["train.epochs=0"], "train.epochs=0 is not allowed"),
    (["train.max_steps=0"], "train.max_steps=0 is not allowed: it must be null or an integer >= 1"),
    (["train.eval_steps=-5"], "train.eval_steps=-5 is not allowed: it must be null, an integer >= 1 (steps) or a"),
    (["train.eval_steps=2.5"], "train.eval_steps=2.5 is not allowed"),  # config.steps_of would read it as 2
    (["train.eval_steps=0"], "train.eval_steps=0 is not allowed"),
    (["model.classifier_dropout=1.5"], "model.classifier_dropout=1.5 is not allowed: it must be null or a number in"),
    (["train.log_every=0"], "train.log_every=0 is not allowed"),
    (["train.threads=0"], "train.threads=0 is not allowed"),
    (["train.mixed_precision=fp32"],
     "train.mixed_precision='fp32' is not allowed: it must be one of auto, no, fp16, bf16"),
    (["train.mixed_precision=false"], "train.mixed_precision=false is not allowed"),
    (["++train.grad_accum_steps=0"], "train.grad_accum_steps=0 is not allowed"),
    (["train.grad_accum_steps=2.5"], "train.grad_accum_steps=2.5 is not allowed: it must be an integer >= 1"),
    (["train.log_with=tensorbored"], "train.log_with='tensorbored' is not allowed: it must be null, one of all, aim"),
    (["train.log_with=[tensorboard,7]"], "train.log_with=['tensorboard', 7] is not allowed"),
    (["train.gradient_checkpointing=1"], "train.gradient_checkpointing=1 is not allowed: it must be true or false"),
    (["train.compile=yes"], "train.compile='yes' is not allowed: it must be true or false"),
    (["train.early_stopping_patience=0"],
     "train.early_stopping_patience=0 is not allowed: it must be null or an integer >= 1"),
    (["data.max_train_samples=0"], "data.max_train_samples=0 is not allowed: it must be null or an integer >= 1"),
    (["data.max_eval_samples=-5"], "data.max_eval_samples=-5 is not allowed"),
    (["data.max_length=4"], "data.max_length=4 is not allowed: it must be an integer >= 8"),
    (["task.max_length=7"], "data.max_length=7 is not allowed"),  # data.max_length follows task.max_length
    (["task=rte"], "data.max_length=320 is not allowed: model tiny-roberta reads at most 129 tokens"),
    (["task=rte"], "so use data.max_length=129 or less"),
    (["data.max_length=130"], "model tiny-roberta reads at most 129 tokens"),
    (["model=roberta-base", "data.max_length=513"], "use data.max_length=512 or less"),
    (["model=minilm", "task=qnli", "data.max_length=513"], "model minilm reads at most 512 tokens"),
    (["experiment_name=../x"], "experiment_name='../x' is not allowed: it names a folder of the run path"),
    (["experiment_name=''"], "experiment_name='' is not allowed"),
    (["experiment_name=a/b"], "experiment_name='a/b' is not allowed"),
    (["model.name=.."], "model.name='..' is not allowed"),
    (["task.name='a b'"], "task.name='a b' is not allowed"),
    (["method.name=lora/x"], "method.name='lora/x' is not allowed"),
    (["mpc.name=."], "mpc.name='.' is not allowed"),
    (["optim.lr=${task.nope}"], "optim.lr could not be resolved"),
    (["method.alpha=abc"], "method.alpha='abc' is not allowed: it must be a finite number > 0 (the update's scale"),
    (["method.alpha=0"], "method.alpha=0 is not allowed"),
    (["method.alpha=null"], "method.alpha=null is not allowed"),  # LoRA's YAML gives a number: null means nothing
    (["method=dora", "method.alpha=-16"], "method.alpha=-16 is not allowed"),
    (["method.dropout=2.0"], "method.dropout=2.0 is not allowed: it must be a number in [0, 1) (dropout on the"),
    (["method=vera", "method.dropout=1"], "method.dropout=1 is not allowed"),
]

PASSES = [
    [],  # the default config (roberta-base, rte)
    ["experiment=quickstart"],
    ["model=tiny-roberta", "task=rte", "data.max_length=128"],
    ["model=tiny-roberta", "task=rte", "data.max_length=129"],  # exactly the limit: runs (test_position_limit_...)
    ["model=tiny-deberta", "task=rte", "data.max_length=4096"],  # relative positions only: no upper limit
    ["model=roberta-base", "data.max_length=512"],
    FAST + ["optim.lr='1e-3'", "optim.head_lr=1e-2", "optim.head_weight_decay=0"],  # numeric strings are numbers
    FAST + ["train.batch_size='4'", "train.eval_batch_size=64.0", "train.max_steps=null"],
    FAST + ["optim.max_grad_norm=0", "optim.warmup_ratio=0", "++optim.warmup_steps=0", "train.threads=1"],
    FAST + ["optim.max_grad_norm=null", "++optim.warmup_steps=null", "++train.grad_accum_steps=4"],
    FAST + ["train.mixed_precision=bf16", "seed=12", "rank=3", "experiment_name=my-run_2.b", "optim.betas=[0,0.98]"],
    FAST + ["experiment_name=2024", "train.mixed_precision=fp16", "data.max_train_samples=1"],
    FAST + ["train.mixed_precision=auto"],
    FAST + ["train.log_with=[tensorboard]", "train.gradient_checkpointing=true", "train.compile=true",
            "train.early_stopping_patience=3", "train.grad_accum_steps='2'"],
    FAST + ["train.eval_steps=0.25", "model.classifier_dropout=0.1"],  # eval_steps < 1: a fraction of the run
    FAST + ["train.eval_steps=50", "model.classifier_dropout=null", "protocol=simple"],
    FAST + ["method=pissa", "method.alpha=null", "method.dropout=0.1"],  # PiSSA's YAML: null = alpha is r
    FAST + ["method=adalora", "method.alpha='32'", "method.dropout=0"],
    FAST + ["method=ia3"],  # no alpha, no dropout
]


def refusal(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_settings(compose(overrides))
    return str(caught.value)


@pytest.mark.parametrize("overrides,phrase", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_bad_setting_is_named(overrides, phrase):
    message = refusal(FAST + overrides)
    assert phrase in message
    assert "\n" not in message  # one paragraph


@pytest.mark.parametrize("overrides", PASSES, ids=[" ".join(o) or "default" for o in PASSES])
def test_good_settings_pass(overrides):
    validate_settings(compose(overrides))


def test_numbers_written_as_text_are_read_as_numbers():
    cfg = compose(FAST + ["optim.lr='1e-3'", "train.batch_size=4.0", "train.eval_steps='0.5'", "optim.betas=['0.9',0]",
                          "data.max_train_samples='16'"])
    checked = validate_settings(cfg)
    assert (checked.optim.lr, checked.train.batch_size, checked.train.eval_steps) == (0.001, 4, 0.5)
    assert list(checked.optim.betas) == [0.9, 0] and checked.data.max_train_samples == 16
    assert type(checked.train.batch_size) is int and type(checked.optim.betas[0]) is float
    assert cfg.optim.lr == "1e-3"  # a copy: the caller's config is left as composed
    plain = compose(FAST)
    assert validate_settings(plain) is plain  # nothing to rewrite: the same object


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_passes(experiment):
    validate_settings(compose([f"experiment={experiment}"]))


# The longest input each model reads, worked out by hand from its YAML (None: no limit).
LIMITS = {"roberta-base": 512, "roberta-large": 512, "deberta-v3-base": None, "minilm": 512,
          "tiny-roberta": 129, "tiny-deberta": None}


def test_limits_cover_every_model():
    assert set(LIMITS) == {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}


@pytest.mark.parametrize("model", sorted(LIMITS))
def test_every_task_with_every_model(model):
    """The paper's model x task pairs all pass; a task longer than a model's positions is refused."""
    for task in sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")):
        cfg = compose([f"model={model}", f"task={task}"])
        if LIMITS[model] is None or cfg.task.max_length <= LIMITS[model]:
            validate_settings(cfg)
        else:
            with pytest.raises(ConfigError, match=f"at most {LIMITS[model]} tokens"):
                validate_settings(cfg)


def test_every_bad_setting_is_named_in_one_message():
    message = refusal(FAST + ["train.batch_size=0", "optim.lr=-1", "seed=abc", "experiment_name=../x",
                              "task=rte", "train.mixed_precision=fp8"])
    for key in ("train.batch_size=0", "optim.lr=-1", "seed='abc'", "experiment_name='../x'", "data.max_length=320",
                "train.mixed_precision='fp8'"):
        assert f"{key} is not allowed" in message
    assert "\n" not in message


def test_absent_optional_keys_pass_and_absent_required_keys_are_named():
    cfg = compose(FAST)
    with open_dict(cfg):
        for key in ("warmup_ratio", "warmup_steps"):
            cfg.optim.pop(key, None)  # an older config
        validate_settings(cfg)
        cfg.train.pop("batch_size")
    with pytest.raises(ConfigError, match=r"train.batch_size is missing: it must be an integer >= 1"):
        validate_settings(cfg)


# --- the position rule, checked against the model itself ---------------------------------------------------------
def positions_run(model: str, length: int, **arch) -> bool:
    """Whether a tiny ``model`` (its YAML with ``arch`` overrides) runs a full, unpadded input of ``length`` tokens."""
    from transformers import AutoModelForSequenceClassification

    from subspace_tuning.models import architecture_config

    torch.manual_seed(0)
    config = architecture_config(model_yaml(model, **arch), 2, vocab_size=1000, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=4, intermediate_size=64)
    net = AutoModelForSequenceClassification.from_config(config).eval()
    ids = torch.randint(5, 1000, (1, length))  # no pad id among them: every token takes a position
    try:
        with torch.no_grad():
            net(input_ids=ids, attention_mask=torch.ones_like(ids))
    except (IndexError, RuntimeError):  # "index 130 is out of bounds", "size of tensor a (129) must match ..."
        return False
    return True


def model_yaml(model: str, **arch):
    cfg = model_cfg(model)
    for key, value in arch.items():
        OmegaConf.update(cfg, f"arch.{key}", value)
    return cfg


@pytest.mark.parametrize("model,arch,limit", [
    ("tiny-roberta", {}, 129),  # 130 positions, pad 0
    ("tiny-roberta", {"pad_token_id": 1}, 128),  # roberta-base's pad id: 514 -> 512
    ("tiny-roberta", {"pad_token_id": 3}, 126),
    ("minilm", {}, 512),  # BERT: positions 0 .. n-1
    ("tiny-deberta", {"position_biased_input": True}, 128),  # DeBERTa with absolute positions
])
def test_position_limit_is_exactly_what_the_model_runs(model, arch, limit):
    assert position_limit(model_yaml(model, **arch)).tokens == limit
    assert positions_run(model, limit, **arch)
    assert not positions_run(model, limit + 1, **arch)


def test_relative_positions_only_set_no_limit():
    assert position_limit(model_cfg("tiny-deberta")) is None
    assert position_limit(model_cfg("deberta-v3-base")) is None
    assert positions_run("tiny-deberta", 300)  # 128 position embeddings, yet 300 tokens run


# --- the command line ---------------------------------------------------------------------------------------------
def train_calls_validate() -> bool:
    return "validate_settings" in (ROOT / "subspace_tuning" / "train.py").read_text()


@pytest.mark.skipif(not train_calls_validate(), reason="subspace_tuning/train.py does not call validate_settings yet")
def test_train_py_refuses_a_bad_setting_without_a_traceback(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *FAST, "train.batch_size=0",
                             f"output_root={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "train.batch_size=0 is not allowed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))  # refused before the run folder was written
