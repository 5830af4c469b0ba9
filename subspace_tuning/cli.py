"""The command-line convention of the tools (params, export, report, bench; train is Hydra's).

Every tool is argparse through ``ArgumentParser`` below and a console script (``subspace-tuning-<tool>``, the same
as ``python -m subspace_tuning.<tool>``): ``--help`` prints the usage, the options and the module docstring's
example command lines and exits 0; a command line the tool cannot take (an unknown or abbreviated option, a
missing argument, an option given twice, a bad value) is one paragraph on stderr, ``error: <what>; usage: ...;
see <tool> --help``, exit status 2. Any other user-facing error (a SubspaceTuningError) is also one ``error:``
paragraph (``fail``). Models are named by their file in ``conf/model/`` only (``named_model_yaml``).

Only the standard library is imported here, so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from omegaconf import DictConfig

SCRIPT_PREFIX = "subspace-tuning-"  # the console scripts of pyproject.toml


def fail(err: object, code: int = 2) -> NoReturn:
    """Print ``error: <err>`` (one paragraph) on stderr and exit with ``code``."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(code)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def examples(doc: str) -> str:
    """The example command lines of a module docstring (its lines that start with 'python ')."""
    return "\n".join(line for line in doc.splitlines() if line.strip().startswith("python "))


def program(prog: str) -> str:
    """The name the user ran: the console script (``subspace-tuning-report``) when run as one, else ``prog``."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return script if script.startswith(SCRIPT_PREFIX) else prog


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse turns the ValueError into a usage error)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError(text)
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def non_negative_int_set(text: str) -> set[int]:
    """An argparse type: comma-separated integers >= 0 ('0,1' -> {0, 1}), e.g. seeds."""
    try:
        return {non_negative_int(part) for part in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds (integers >= 0), "
                                         "e.g. 0 or 0,1") from None


class _StoreOnce(argparse.Action):
    """argparse's plain store, except that an option given twice is a usage error: the later value silently
    winning hides a typo in a long command line."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        given: dict[str, Any] = getattr(parser, "given", {})
        if option_string is not None and self.dest in given:
            raise argparse.ArgumentError(self, f"given twice ({given[self.dest]}, {values})")
        given[self.dest] = values
        setattr(namespace, self.dest, values)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose ``--help`` ends with the module docstring's examples, whose options take their full name
    only and once, and whose parse errors are one paragraph on stderr: 'error: <what>; usage: <the accepted
    arguments>; see --help', exit status 2."""

    def __init__(self, prog: str, doc: str) -> None:
        super().__init__(prog=program(prog), description=doc.split("\n\n")[0], epilog="examples:\n" + examples(doc),
                         formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        self.given: dict[str, Any] = {}  # the options seen in this parse (_StoreOnce)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; {one_line(self.format_usage())}; see {self.prog} --help")


def parse_with_presets(parser: ArgumentParser, argv: Sequence[str] | None, quick: dict[str, Any],
                       defaults: dict[str, Any]) -> argparse.Namespace:
    """Add ``--json`` and ``--quick`` and parse: options left unset take ``quick``'s values (the tests' tiny
    settings) with ``--quick``, else ``defaults``'. The benchmarks' command lines end here."""
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny settings for tests: " + str(quick))
    args = parser.parse_args(argv)
    for key, value in (quick if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def named_model_yaml(name: str) -> DictConfig:
    """``conf/model/<name>.yaml`` for a model *name*; a path or a file name is refused, so a tool only ever
    builds the models the project configures."""
    from .config import CONF_DIR, model_yaml
    from .errors import ConfigError

    if not name or any(sep in name for sep in ("/", "\\")) or name.endswith(".yaml") or name.strip(".") == "":
        choices = ", ".join(sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
        raise ConfigError(f"model {name!r} is not a model name: models come from {CONF_DIR / 'model'} and are named "
                          f"by their file name without .yaml (choose one of: {choices}); add a YAML file there for "
                          f"another model")
    return model_yaml(name)
