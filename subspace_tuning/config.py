"""Hydra glue: where the configs live, the resolvers they use, and composing them from Python."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def rank_tag(method_name: str, rank: int | None) -> str:
    """Folder name of the rank level: 'r8', or 'no-rank' for methods the rank setting does not apply to."""
    from .errors import SubspaceTuningError
    from .methods import method_class

    try:
        uses_rank = method_class(method_name).uses_rank
    except SubspaceTuningError:  # an unknown method is reported by the run itself, with the choices
        uses_rank = True
    return f"r{rank}" if uses_rank else "no-rank"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("rank_tag"):
        OmegaConf.register_new_resolver("rank_tag", rank_tag)


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """The config ``python train.py <overrides>`` would run with (for tests and tools)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides or [], return_hydra_config=return_hydra_config)


def method_options(cfg: DictConfig) -> dict:
    """The method YAML's settings, without its name."""
    options = OmegaConf.to_container(cfg.method, resolve=True)
    options.pop("name")
    return options


def model_yaml(model_name: str) -> DictConfig:
    """``conf/model/<model_name>.yaml``, for tools that build a model without composing a run."""
    from .errors import ConfigError, choices_message

    path = CONF_DIR / "model" / f"{model_name}.yaml"
    if not path.is_file():
        raise ConfigError(choices_message("model", model_name, [p.stem for p in (CONF_DIR / "model").glob("*.yaml")]))
    return OmegaConf.load(path)


def method_defaults(method_name: str) -> dict:
    """The settings of ``conf/method/<method_name>.yaml`` without its name, as a run gets them by default."""
    path = CONF_DIR / "method" / f"{method_name}.yaml"
    options = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}
    options.pop("name", None)
    return options
