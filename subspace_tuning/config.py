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
