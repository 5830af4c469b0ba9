"""The subspace analysis of learned updates (issue 17 part 8): each measure on a constructed dW whose answer is known
exactly, the analysis of adapted tiny models with hand-set updates, and the command on runs trained in-process."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_in_process, tiny_model
from method_properties import perturb_trainable

from subspace_tuning.analyze import (
    amplification,
    analyze_model,
    diagonal_share,
    effective_rank,
    main,
    matrix_measures,
    subspace_share,
)
from subspace_tuning.methods import build_method

M, N = 12, 10
SIGMA = torch.tensor([10.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5], dtype=torch.float64)


def orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]


U, V = orthogonal(M, 0), orthogonal(N, 1)
W = U[:, :N] @ torch.diag(SIGMA) @ V.T  # W's singular vectors are the columns of U[:, :N] and V, in order


def update(left: slice, right: slice, seed: int = 2) -> torch.Tensor:
    """A random dW in the span of W's left singular vectors ``left`` and right ones ``right``."""
    u, v = U[:, left], V[:, right]
    core = torch.randn(u.shape[1], v.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u @ core @ v.T


# --- each measure on a constructed dW ------------------------------------------------------------------------------
def test_share_is_one_inside_the_top_k_span_and_zero_outside():
    inside, outside = update(slice(0, 3), slice(0, 3)), update(slice(3, 10), slice(3, 10))
    assert subspace_share(inside, U, V.T, 3) == pytest.approx({"left": 1.0, "right": 1.0, "both": 1.0}, abs=1e-12)
    assert subspace_share(outside, U, V.T, 3) == pytest.approx({"left": 0.0, "right": 0.0, "both": 0.0}, abs=1e-12)
    # in W's top-3 column space but not its row space: the left share only
    mixed = update(slice(0, 3), slice(5, 8))
    assert subspace_share(mixed, U, V.T, 3) == pytest.approx({"left": 1.0, "right": 0.0, "both": 0.0}, abs=1e-12)


def test_share_of_a_known_split():
    # energy 9 on (u1, v1), 16 on (u5, v5): share(1) = share(4) = 9/25, share(5) = 1
    delta = 3 * torch.outer(U[:, 0], V[:, 0]) + 4 * torch.outer(U[:, 4], V[:, 4])
    assert subspace_share(delta, U, V.T, 4)["both"] == pytest.approx(9 / 25, abs=1e-12)
    assert subspace_share(delta, U, V.T, 5)["both"] == pytest.approx(1.0, abs=1e-12)


def test_amplification_factor_by_hand():
    # dW = c u_j v_j^T, r = 1: U^T W V = sigma_j, so the factor is c / sigma_j
    assert amplification(W, 2.0 * torch.outer(U[:, 0], V[:, 0]), 1) == pytest.approx(0.2, abs=1e-12)
    assert amplification(W, 2.0 * torch.outer(U[:, 9], V[:, 9]), 1) == pytest.approx(4.0, abs=1e-12)
    # r = 2, dW = 3 u1 v1^T + 1 u3 v3^T: sqrt(9 + 1) / sqrt(10^2 + 6^2)
    delta = 3 * torch.outer(U[:, 0], V[:, 0]) + torch.outer(U[:, 2], V[:, 2])
    assert amplification(W, delta, 2) == pytest.approx(math.sqrt(10 / 136), abs=1e-12)
    # a direction W does not have at all: the factor is infinite, recorded as None
    assert amplification(W, torch.outer(U[:, 11], V[:, 0]), 1) is None


def test_effective_rank_by_hand():
    assert effective_rank(torch.outer(U[:, 0], V[:, 0])) == pytest.approx(1.0)
    assert effective_rank(U[:, :4] @ V[:, :4].T) == pytest.approx(4.0)  # four equal singular values
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)  # singular values 3 and 1
    expected = float(torch.exp(-(p * p.log()).sum()))
    assert effective_rank(3 * torch.outer(U[:, 0], V[:, 0]) + torch.outer(U[:, 1], V[:, 1])) == pytest.approx(expected)


def test_diagonal_share_is_one_for_a_rescaling_of_ws_triplets():
    rescaled = U[:, :N] @ torch.diag(torch.linspace(-1, 1, N, dtype=torch.float64)) @ V.T
    assert diagonal_share(rescaled, U[:, :N], V.T) == pytest.approx(1.0, abs=1e-12)
    assert diagonal_share(torch.outer(U[:, 0], V[:, 1]), U[:, :N], V.T) == pytest.approx(0.0, abs=1e-12)


def test_matrix_measures_chance_and_k():
    out = matrix_measures(W, update(slice(0, 2), slice(0, 2)), (U[:, :N], SIGMA, V.T), r=2)
    assert out["share_r"] == pytest.approx({"k": 2, "left": 1.0, "right": 1.0, "both": 1.0, "chance": 4 / 120})
    assert out["share_10pct"]["k"] == 1 and out["share_10pct"]["chance"] == pytest.approx(1 / 120)
    assert out["effective_rank"] <= 2.0 + 1e-9 and out["amplification"] is not None


# --- adapted tiny models with hand-set updates ------------------------------------------------------------------
def adapted(name: str, rank: int = 4, **options) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    pretrained = tiny_model("tiny-roberta")
    model = copy.deepcopy(pretrained)
    method = build_method(name, options, rank)
    method.apply(model)
    return pretrained, model, method


@pytest.mark.parametrize(("rows", "expected"), [(slice(0, 4), 1.0), (slice(4, 8), 0.0)])
def test_lora_update_set_inside_or_outside_ws_top_r_span(rows, expected):
    from subspace_tuning.methods.extension.lora import LowRankLinear

    pretrained, model, method = adapted("lora")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LowRankLinear):
                u, _, vh = torch.linalg.svd(pretrained.get_submodule(name).weight.double())
                module.lora_B.copy_(u[:, rows])
                module.lora_A.copy_(vh[rows])
    result = analyze_model(pretrained, model, method, r=4)
    assert result["skipped"] is None and len(result["matrices"]) == 12  # 2 layers x 6 linear kinds
    for row in result["matrices"].values():
        assert row["share_r"]["both"] == pytest.approx(expected, abs=1e-5)
        assert row["effective_rank"] == pytest.approx(4.0, abs=1e-4)  # s B A with orthonormal B, A
    assert result["summary"]["share_r"]["both"] == pytest.approx(expected, abs=1e-5)


def test_sam_parser_only_rescales_ws_singular_triplets():
    pretrained, model, method = adapted("sam_parser")
    perturb_trainable(model)
    result = analyze_model(pretrained, model, method, r=8)
    assert len(result["matrices"]) == 12
    assert result["summary"]["diagonal"] == pytest.approx(1.0, abs=1e-5)
    assert all(row["diagonal"] == pytest.approx(1.0, abs=1e-5) for row in result["matrices"].values())


def test_full_fine_tuning_analyses_the_matrices_that_changed():
    pretrained, model, method = adapted("full")
    with torch.no_grad():
        model.roberta.encoder.layer[1].attention.self.value.weight.add_(0.01)
        model.classifier.dense.weight.add_(1.0)  # the head is not a backbone matrix
    result = analyze_model(pretrained, model, method, r=8)
    value = "roberta.encoder.layer.1.attention.self.value"
    assert list(result["matrices"]) == [value]
    assert result["matrices"][value]["effective_rank"] == pytest.approx(1.0, abs=1e-4)  # float32 W + 0.01 - W


@pytest.mark.parametrize(("name", "why"), [("bitfit", "bitfit changed no weight matrix"),
                                           ("prompt_tuning", "prompt_tuning cannot be merged into plain weights")])
def test_methods_without_a_matrix_update_are_skipped_with_why(name, why):
    pretrained, model, method = adapted(name)
    perturb_trainable(model)
    result = analyze_model(pretrained, model, method, r=8)
    assert result["matrices"] == {} and result["skipped"].startswith(why)


# --- the command on runs trained in-process ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder of two finished runs (LoRA and SAM-PARSER, 6 steps) on a tiny pretrained-style backbone saved
    as a local folder (export's rebuild refuses random-init models, whose backbone a run does not save)."""
    from subspace_tuning.config import compose
    from subspace_tuning.models import build_model, load_tokenizer

    root = tmp_path_factory.mktemp("analyze")
    backbone = root / "backbone"
    model_cfg = compose(["model=tiny-roberta"]).model
    torch.manual_seed(0)
    build_model(model_cfg, 2, load_tokenizer(model_cfg)).save_pretrained(backbone)
    for method in ("lora", "sam_parser"):
        run_in_process(root / "work" / method, [f"method={method}", "model.source=hub", f"model.hub_name={backbone}",
                                                "train.max_steps=6", "optim.lr=1e-2"])
        sweep_run = root / "sweep" / "tiny-roberta" / "toy-sentiment" / method / "seed0"
        sweep_run.parent.mkdir(parents=True)
        (root / "work" / method / "run").rename(sweep_run)
    return root / "sweep"


def test_command_on_one_run_writes_its_analysis(trained_runs: Path, capsys: pytest.CaptureFixture):
    run = trained_runs / "tiny-roberta" / "toy-sentiment" / "lora" / "seed0"
    main([str(run)])
    out = capsys.readouterr().out
    assert out.startswith("# dW of lora (r = 8) on tiny-roberta toy-sentiment")
    result = json.loads((run / "analysis.json").read_text())
    assert len(result["matrices"]) == 12 and result["task"] == "toy-sentiment"
    assert 0.0 < result["summary"]["share_r"]["both"] < 1.0 and result["summary"]["effective_rank"] <= 8.0 + 1e-6
    assert (run / "analysis.md").read_text() == out


def test_command_on_a_sweep_writes_the_table_and_figures(trained_runs: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture):
    main([str(trained_runs), "--out", str(tmp_path), "--figures"])
    out = capsys.readouterr().out
    tables = json.loads((tmp_path / "subspace_analysis.json").read_text())
    rows = tables["tiny-roberta"]["rows"]
    assert list(rows) == ["SAM-PARSER", "LoRA r=8"]  # the paper's row order
    assert rows["SAM-PARSER"]["tasks"]["toy-sentiment"]["diagonal"] == pytest.approx(1.0, abs=1e-4)
    assert rows["LoRA r=8"]["family"] == "extension" and "| LoRA r=8 | extension |" in out
    assert (tmp_path / "figures" / "subspace_tiny-roberta_toy-sentiment.png").stat().st_size > 0


def test_seeds_select_the_runs_analysed(trained_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    main([str(trained_runs), "--out", str(tmp_path), "--seeds", "1,2", "--no-write-runs"])  # the runs are seed 0
    assert json.loads((tmp_path / "subspace_analysis.json").read_text()) == {}
    with pytest.raises(SystemExit):
        main([str(trained_runs), "--seeds", "zero"])
    assert "not a comma-separated list of seeds" in capsys.readouterr().err


def test_command_errors_are_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: found no run under") and err.count("\n") == 1
