"""Hydra glue: where the configs live, the resolvers they use, and composing them from Python."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .paths import CONF_DIR


def reference_steps(train_size: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of a full-data run (the run a protocol's step counts were written for)."""
    return math.ceil(int(train_size) / int(batch_size)) * int(epochs)


def per_run(steps: float | None, reference: int, fallback: float | None = None) -> float | None:
    """A step count of the reference run as a fraction of it (``fallback`` when the count is null), so that it
    scales with a shorter run: settings read a value below 1 as a fraction of the run's optimizer steps."""
    return fallback if steps is None else float(steps) / int(reference)


def lr_for(method_name: str, lr: float, full_ft_lr: float | None, by_method: Any = None) -> float:
    """The method's own learning rate where ``optim.lr_by_method`` names it (the CPU study's per-method search,
    docs/cpu_study/README.md), else full fine-tuning's where the protocol gives one, else the task's."""
    if by_method and method_name in by_method:
        return by_method[method_name]
    return full_ft_lr if method_name == "full" and full_ft_lr is not None else lr


def steps_of(value: float | None, total_steps: int) -> int | None:
    """A step setting as steps: values >= 1 are steps, values in (0, 1) fractions of ``total_steps`` (at least 1)."""
    if value is None:
        return None
    return int(value) if value >= 1 else max(1, round(float(value) * total_steps))


def register_resolvers() -> None:
    from .resume import run_folder

    resolvers = {"run_folder": run_folder, "reference_steps": reference_steps, "per_run": per_run, "lr_for": lr_for}
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """The config ``python train.py <overrides>`` would run with (for tests and tools)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides or [], return_hydra_config=return_hydra_config)


def method_options(cfg: DictConfig) -> dict:
    """The composed run's method settings (``cfg.method``, interpolations resolved), without its name."""
    options = OmegaConf.to_container(cfg.method, resolve=True)
    options.pop("name")
    return options


def model_yaml(model_name: str) -> DictConfig:
    """``conf/model/<model_name>.yaml``, for tools that build a model without composing a run."""
    from .errors import ConfigError, choices_message

    path = CONF_DIR / "model" / f"{model_name}.yaml"
    if any(sep in model_name for sep in ("/", "\\")) or model_name.endswith(".yaml") or not path.is_file():
        raise ConfigError(choices_message("model", model_name, [p.stem for p in (CONF_DIR / "model").glob("*.yaml")]))
    return OmegaConf.load(path)
