"""Run output: strict JSON, and one OutputError paragraph when the output location cannot be written."""

from __future__ import annotations

import errno
import json
import math
import os

import numpy as np
import pytest

from subspace_tuning import runio
from subspace_tuning.errors import OutputError


def strict_loads(text: str):
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_are_written_as_null_and_the_file_is_strict_json(tmp_path):
    record = {"loss": math.nan, "scores": [1.5, math.inf, {"deep": (-math.inf, 2)}],
              "numpy": [np.float32("nan"), np.float64(0.25), np.int64(3)], "ok": "text", "flag": True}
    path = tmp_path / "metrics.json"
    runio.atomic_write_json(path, record)
    assert strict_loads(path.read_text()) == {"loss": None, "scores": [1.5, None, {"deep": [None, 2]}],
                                              "numpy": [None, 0.25, 3], "ok": "text", "flag": True}
    with pytest.raises(ValueError, match="not strict JSON: NaN"):  # the parser does refuse what it must
        strict_loads('{"a": NaN}')


def test_the_encoder_refuses_a_non_finite_float_it_is_handed(monkeypatch, tmp_path):
    monkeypatch.setattr(runio, "nonfinite_to_null", lambda value: value)  # a conversion that missed one
    with pytest.raises(ValueError, match="not JSON compliant"):
        runio.atomic_write_json(tmp_path / "metrics.json", {"loss": math.nan})
    assert not list(tmp_path.iterdir())  # no file, not even a temporary one


def assert_one_paragraph(err: pytest.ExceptionInfo, *fragments: str):
    message = str(err.value)
    assert "\n" not in message and err.value.__cause__ is None and err.value.__suppress_context__
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_writable_folder_is_created_and_left_clean(tmp_path):
    runio.ensure_writable_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())


def test_a_file_in_the_way_of_the_output_folder(tmp_path):
    (tmp_path / "outputs").write_text("not a folder")
    with pytest.raises(OutputError) as err:
        runio.ensure_writable_dir(tmp_path / "outputs")
    assert_one_paragraph(err, f"{tmp_path / 'outputs'} is a file where a folder is needed", "remove or rename")
    with pytest.raises(OutputError) as err:  # the file is a parent of the folder
        runio.ensure_writable_dir(tmp_path / "outputs" / "run" / "seed0")
    assert_one_paragraph(err, str(tmp_path / "outputs" / "run" / "seed0"), f"{tmp_path / 'outputs'} is a file")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through chmod 0o500")
def test_a_read_only_output_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputError) as err:
            runio.ensure_writable_dir(folder)
        assert_one_paragraph(err, str(folder), "no permission", "chmod u+w")
    finally:
        folder.chmod(0o700)


def test_no_permission_reported_by_the_system(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):  # what mkstemp raises in a read-only folder, for any user
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(runio.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError) as err:
        runio.ensure_writable_dir(tmp_path)
    assert_one_paragraph(err, f"output folder {tmp_path}", "no permission", "hydra.sweep.dir")


def test_a_full_disk_is_found_by_the_probe_write(monkeypatch, tmp_path):
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(runio.os, "write", full)
        with pytest.raises(OutputError) as err:
            runio.ensure_writable_dir(tmp_path)
    assert_one_paragraph(err, str(tmp_path), "disk is full", "free some space")
    assert not list(tmp_path.iterdir())  # the probe file is removed


def test_atomic_write_reports_a_full_disk_naming_the_file(tmp_path):
    def full(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    path = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(OutputError) as err:
        runio.atomic_write(path, full)
    assert_one_paragraph(err, f"cannot write the file {path}", "disk is full")
    assert not list(path.parent.iterdir())  # the temporary file is removed


def test_atomic_write_reports_a_file_or_folder_in_the_way(tmp_path):
    (tmp_path / "run").write_text("a file")
    with pytest.raises(OutputError) as err:
        runio.atomic_write_text(tmp_path / "run" / "seed0" / "metrics.json", "{}")
    assert_one_paragraph(err, "metrics.json", f"{tmp_path / 'run'} is a file where a folder is needed")
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(OutputError) as err:
        runio.atomic_write_text(tmp_path / "metrics.json", "{}")
    assert_one_paragraph(err, str(tmp_path / "metrics.json"), "a folder of that name is in the way")


def test_other_errors_pass_through_unchanged(tmp_path):
    def broken(handle):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError, match="I/O error") as err:
        runio.atomic_write(tmp_path / "x.bin", broken)
    assert not isinstance(err.value, OutputError)
