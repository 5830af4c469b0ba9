"""A method's default settings: ``conf/method/<name>.yaml``, the one place they are written.

Outside a composed run (params, the benchmark, tests) the YAML's protocol interpolations (AdaLoRA's schedule and
alpha) resolve under ``protocol=simple``, one global choice rather than a task's scripts (docs/protocol.md). Read
with OmegaConf alone, so the method layer needs neither Hydra nor the run's configuration code.
"""

from __future__ import annotations

import copy
import functools

from omegaconf import OmegaConf

from ..errors import ConfigError, choices_message
from ..paths import CONF_DIR

DEFAULTS_PROTOCOL = "simple"


def method_defaults(method_name: str) -> dict:
    """The settings of ``conf/method/<method_name>.yaml`` without its name (a copy; read once per name)."""
    return copy.deepcopy(_method_defaults(method_name))


@functools.cache
def _method_defaults(method_name: str) -> dict:
    folder = CONF_DIR / "method"
    path = folder / f"{method_name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"{choices_message('method', method_name, choices)} (a method's settings live in "
                          f"{folder}/<name>.yaml)")
    tree = OmegaConf.create({"protocol": OmegaConf.load(CONF_DIR / "protocol" / f"{DEFAULTS_PROTOCOL}.yaml"),
                             "method": OmegaConf.load(path)})
    options = OmegaConf.to_container(tree.method, resolve=True)
    options.pop("name", None)
    return options
