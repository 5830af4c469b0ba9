"""Shared fixtures: tiny random-init models built from the test YAMLs, a fixed input batch, a private SVD cache,
and methods registered for one test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from subspace_tuning.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SUBSPACE_TUNING_SHARED", ROOT.parent / "shared"))
GLUE_DIR = SHARED / "glue"
TINY_MODELS = ("tiny-roberta", "tiny-deberta")
# a quick run: a tiny model on the built-in task, no progress bar, the whole dev set in one batch
QUICK = ["model=tiny-roberta", "task=toy-sentiment", "train.progress=false", "train.eval_batch_size=200"]

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True, scope="session")
def private_svd_cache(tmp_path_factory: pytest.TempPathFactory):
    """The SVD cache of the spectral methods goes to a temporary folder, not the user's ~/.cache."""
    from subspace_tuning.methods.reconstruction.spectral import svd_cache

    with svd_cache(tmp_path_factory.mktemp("svd-cache")):
        yield


def model_cfg(name: str):
    return OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")


def tiny_model(name: str, num_labels: int = 2, seed: int = 0) -> torch.nn.Module:
    """A tiny random model in eval mode (dropout off), with vocabulary 1000 so tests need no tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from subspace_tuning.models import architecture_config

    torch.manual_seed(seed)
    config = architecture_config(model_cfg(name), num_labels, vocab_size=1000)
    return AutoModelForSequenceClassification.from_config(config).eval()


def tiny_batch(batch: int = 4, length: int = 12, seed: int = 1, num_labels: int = 2) -> dict[str, torch.Tensor]:
    """Random token ids with some right padding, and labels."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 1000, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, -4:] = 0
    input_ids[0, -4:] = 0
    labels = torch.randint(0, num_labels, (batch,), generator=g)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture(params=TINY_MODELS)
def tiny_name(request) -> str:
    return request.param


@pytest.fixture
def temporary_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[type, str], type]]:
    """``temporary_method(cls, yaml_text)`` registers a method class for this test, with ``yaml_text`` as its
    ``conf/method/<name>.yaml`` in a copy of conf/ that the config functions read; both are gone afterwards."""
    from subspace_tuning import config
    from subspace_tuning.methods import defaults, load_all, register, unregister

    load_all()  # the built-in methods first, as in any run
    registered = []

    def add(cls: type, yaml_text: str) -> type:
        conf = tmp_path / "conf"
        if not conf.exists():
            shutil.copytree(config.CONF_DIR, conf)
        (conf / "method" / f"{cls.name}.yaml").write_text(yaml_text)
        for module in (config, defaults):
            monkeypatch.setattr(module, "CONF_DIR", conf)
        defaults._method_defaults.cache_clear()  # read from the copy from now on
        registered.append(register(cls).name)
        return cls

    yield add
    for name in registered:
        unregister(name)
    defaults._method_defaults.cache_clear()


requires_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"no GLUE data at {GLUE_DIR}")


def run_in_process(tmp_path: Path, overrides: list[str]) -> dict:
    """Train ``QUICK`` + ``overrides`` in this process into ``tmp_path / 'run'`` (no Hydra, no run lock)."""
    from subspace_tuning.config import compose
    from subspace_tuning.train import train

    cfg = compose(QUICK + [f"data.cache_dir={tmp_path / 'cache'}"] + overrides)
    return train(cfg, tmp_path / "run")


def kill_after_step(method_name: str, step: int, launch: Callable[[], object], folder: Path) -> Path:
    """Run ``launch`` (a training run of ``method_name``) and kill it, as Ctrl-C would, right after optimizer step
    ``step``; checks that the run ``folder`` records ``failed`` and keeps its last epoch checkpoint for a relaunch to
    resume, and returns it."""
    from subspace_tuning.methods import method_class

    cls = method_class(method_name)
    original = cls.after_optimizer_step

    def killed(self, model, at_step, total_steps):
        original(self, model, at_step, total_steps)
        if at_step == step:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, "after_optimizer_step", killed)
        with pytest.raises(KeyboardInterrupt):
            launch()
    from subspace_tuning.train import CHECKPOINT

    assert json.loads((folder / "metrics.json").read_text())["status"] == "failed"
    assert (folder / CHECKPOINT).is_file()
    return folder


def train_py(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in a subprocess, as a user runs it."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
