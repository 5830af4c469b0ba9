"""Run output written atomically (temporary file + rename): a killed run never leaves half a file.

Every JSON file is strict JSON (no NaN / Infinity), and a location that cannot be written (a file in the way,
no permission, a full disk) is one OutputError paragraph naming the path and what to do.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import numbers
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import OutputError

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "hydra-core", "omegaconf", "safetensors")
ELSEWHERE = "or choose another output folder (hydra.run.dir, or hydra.sweep.dir for a sweep)"


def _in_the_way(path: Path) -> Path | None:
    """``path`` or its nearest ancestor that exists and is not a folder, if any."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def output_error(path: Path, err: OSError, what: str = "file") -> OutputError | None:
    """One paragraph for an OSError that means ``path`` cannot be written there; None for other errors."""
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"cannot write the {what} {path}: the disk is full or the quota is exceeded "
                           f"({os.strerror(code)}); free some space there {ELSEWHERE}")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write the {what} {path}: no permission ({os.strerror(code)}); make that folder "
                           f"writable (e.g. chmod u+w) {ELSEWHERE}")
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        blocker = _in_the_way(path if what == "output folder" else path.parent)
        if blocker is not None:
            return OutputError(f"cannot write the {what} {path}: {blocker} is a file where a folder is needed; "
                               f"remove or rename that file {ELSEWHERE}")
        if code == errno.EISDIR:
            return OutputError(f"cannot write the {what} {path}: a folder of that name is in the way; remove or "
                               f"rename it {ELSEWHERE}")
    return None


def ensure_writable_dir(path: Path) -> None:
    """Create the folder ``path`` if needed and prove that a file can be written in it (OutputError if not).

    The probe writes, syncs and removes a small temporary file, so a full disk shows up here, before any work.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-", suffix=".tmp")
        try:
            os.write(fd, b"subspace-tuning write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        problem = output_error(path, err, "output folder") or OutputError(
            f"cannot write the output folder {path}: {err.strerror or err}; fix that location {ELSEWHERE}")
        raise problem from None


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it over ``path``.

    A full disk, a missing permission or a file in the way is an OutputError naming ``path``.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; run output is meant to be shared
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        problem = output_error(path, err) if isinstance(err, OSError) else None
        if problem is None:
            raise
        raise problem from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def nonfinite_to_null(value: Any) -> Any:
    """``value`` with every NaN / inf / -inf (Python or numpy) replaced by None, through dicts, lists and tuples.

    numpy scalars become Python numbers on the way, so they are written as numbers rather than strings.
    """
    if isinstance(value, dict):
        return {key: nonfinite_to_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [nonfinite_to_null(item) for item in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, int):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def atomic_write_json(path: Path, data: Any) -> None:
    """Strict JSON (RFC 8259 has no NaN / Infinity): non-finite floats are written as null.

    A record that held one must say so in another field (the caller's job). ``allow_nan=False`` is the guard:
    a non-finite float that ever reaches the encoder fails loudly instead of writing invalid JSON.
    """
    atomic_write_text(path, json.dumps(nonfinite_to_null(data), indent=2, default=str, allow_nan=False) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                  metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@functools.cache
def git_commit() -> str | None:
    """The project's commit, with '-dirty' when the checkout has uncommitted changes.

    Read once per process: the code a sweep runs is the code it loaded, whatever is committed meanwhile."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def peak_memory_mb(device: torch.device) -> dict[str, float | str]:
    """Peak accelerator memory allocated by torch, or the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "kind": "cuda_allocated"}
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20,
            "kind": "cpu_max_rss"}
