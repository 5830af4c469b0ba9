"""Bad input stops with one clear paragraph, never a stack trace, and is never recorded as a success."""

from __future__ import annotations

import json

import pytest
from conftest import QUICK, run_in_process, train_py

from subspace_tuning.errors import ConfigError, DataError
from subspace_tuning.methods import build_method


@pytest.mark.parametrize("override,expected", [
    (["rank=0"], "needs a rank >= 1, got 0"),
    (["rank=-2"], "needs a rank >= 1, got -2"),
    (["rank=abc"], "needs a rank >= 1, got 'abc'"),
    (["rank=64"], "rank 64 is larger than module .* allows \\(32 x 32\\); choose rank <= 32"),
    (["task=rte", "task.data_dir=/nonexistent/glue"], "data_dir /nonexistent/glue has no RTE/train.tsv"),
    (["task.metrics=[bleu]"], "unknown metric 'bleu'"),
])
def test_bad_config_fails_clearly_and_is_recorded_as_failed(tmp_path, override, expected):
    with pytest.raises((ConfigError, DataError), match=expected):
        run_in_process(tmp_path, ["method=lora", *override])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["best"] is None
    assert not (tmp_path / "run" / "trained.safetensors").exists()


def test_unknown_registered_method_lists_choices():
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of: .*full.*lora"):
        build_method("nope", {}, 8)


def test_unknown_method_setting_lists_the_settings():
    with pytest.raises(ConfigError, match="method 'lora' has no setting 'alpah'; its settings are: alpha"):
        build_method("lora", {"alpah": 8}, 8)


def test_cli_unknown_group_option_lists_choices(tmp_path):
    result = train_py(["model=nope"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/nope'" in result.stderr and "tiny-roberta" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_config_error_is_one_paragraph_without_traceback(tmp_path):
    result = train_py([*QUICK, "rank=0", f"output_root={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "error: rank=0 is not allowed: it must be an integer >= 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("default/**/metrics.json"))  # checked before anything is written
