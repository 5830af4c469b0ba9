"""User-facing errors: the runner prints their message as one paragraph, never a stack trace."""


class SubspaceTuningError(Exception):
    """Base class for errors caused by the user's configuration or data."""


class ConfigError(SubspaceTuningError):
    """A configuration value is unknown, out of range or inconsistent."""


class DataError(SubspaceTuningError):
    """A data file is missing or malformed."""


class NotMergeableError(SubspaceTuningError):
    """The method's phi(W) is not linear in the input, so it cannot be folded into nn.Linear weights."""


class TrainingDiverged(SubspaceTuningError):
    """The loss became NaN or infinite."""


def choices_message(kind: str, name: object, choices: list[str]) -> str:
    """'unknown model 'foo'; choose one of: a, b, c'."""
    return f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(choices))}"


class OutputError(SubspaceTuningError):
    """The output location cannot be written (not a directory, no permission, disk full)."""
