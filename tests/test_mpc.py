"""The MPC framework: loss values (both reductions), composition with the A-and-B methods, PEFT's AdaLoRA
regulariser as an oracle, config errors, MPC_n."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_batch, tiny_model
from method_properties import ATOL, logits, perturb_trainable
from omegaconf import OmegaConf

from subspace_tuning.config import compose
from subspace_tuning.errors import ConfigError, NotMergeableError
from subspace_tuning.methods import build_method, catalogue
from subspace_tuning.methods.mpc import MPC, MPC_NAMES

# from the registry: every method that declares a constraint is tested with it, every other one refuses it
WITH_A_AND_B = [cls.name for cls in catalogue() if {"o", "d"} <= set(cls.mpc_support)]
WITHOUT_A_AND_B = [cls.name for cls in catalogue() if not cls.mpc_support]
NONLINEAR = [cls.name for cls in catalogue() if "n" in cls.mpc_support]

# Module 1: A A^T = diag(1, 4), so ||A A^T - I||_F = ||diag(0, 3)||_F = 3 (squared 9);
# B^T B = [[1, 1], [1, 2]], so ||B^T B - I||_F = ||[[0, 1], [1, 1]]||_F = sqrt(3) (squared 3)
# and ||B^T B - diag(B^T B)||_F = ||[[0, 1], [1, 0]]||_F = sqrt(2) (squared 2).
A1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # r = 2, in = 3
B1 = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])  # out = 3, r = 2
# Module 2: orthonormal rows, A A^T = I: error 0; B^T B = diag(4, 0), so ||B^T B - I||_F = ||diag(3, -1)||_F
# = sqrt(10) (squared 10) and its off-diagonal part is 0.
A2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
B2 = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])

HAND_COMPUTED = [  # (kind, reduction, modules, loss at weight 0.1)
    ("o", "mean_norm", 1, 0.1 * (3 + math.sqrt(3)) / 2),  # 0.2366025
    ("o", "sum_squared", 1, 0.1 * (9 + 3)),  # 1.2
    ("d", "mean_norm", 1, 0.1 * (3 + math.sqrt(2)) / 2),  # 0.2207107
    ("d", "sum_squared", 1, 0.1 * (9 + 2)),  # 1.1
    # two modules = four factor matrices: the mean divides by 4, the sum adds both modules
    ("o", "mean_norm", 2, 0.1 * (3 + math.sqrt(3) + 0 + math.sqrt(10)) / 4),  # 0.1973582
    ("o", "sum_squared", 2, 0.1 * (9 + 3 + 0 + 10)),  # 2.2
    ("d", "mean_norm", 2, 0.1 * (3 + math.sqrt(2) + 0 + 0) / 4),  # 0.1103553
    ("d", "sum_squared", 2, 0.1 * (9 + 2 + 0 + 0)),  # 1.1
]


@pytest.mark.parametrize("kind, reduction, modules, expected", HAND_COMPUTED)
def test_loss_equals_hand_computed_values(kind, reduction, modules, expected):
    factors = [(A1, B1), (A2, B2)][:modules]
    loss = MPC(kind, weight=0.1, reduction=reduction).loss(factors)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_default_reduction_is_the_mean_of_norms_and_patterns_cost_nothing():
    assert MPC("o").reduction == "mean_norm"
    q, _ = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))
    for reduction in ("mean_norm", "sum_squared"):
        assert float(MPC("o", reduction=reduction).loss([(q.T, q)])) == pytest.approx(0.0, abs=1e-12)
        assert float(MPC("d", reduction=reduction).loss([(q.T, 3 * q)])) == pytest.approx(0.0, abs=1e-12)
    assert MPC("none").loss([(A1, B1)]) is None and MPC("n").loss([(A1, B1)]) is None
    assert MPC("o").loss([]) is None


def test_gradient_is_finite_where_a_deviation_is_zero():
    # B = 0 (LoRA's init) has B^T B - diag(B^T B) = 0, where ||.||_F is not differentiable: its gradient is 0
    a, b = A2.clone().requires_grad_(), torch.zeros(3, 2, requires_grad=True)
    MPC("d").loss([(a, b)]).backward()
    assert torch.isfinite(a.grad).all() and torch.equal(b.grad, torch.zeros(3, 2))


def adapted(method_name: str, mpc: dict | None, rank: int = 4, seed: int = 0, **options):
    model = tiny_model("tiny-roberta", seed=seed)
    torch.manual_seed(seed + 1)
    method = build_method(method_name, options, rank, mpc)
    method.apply(model)
    return model.eval(), method


@pytest.mark.parametrize("method_name", WITH_A_AND_B)
@pytest.mark.parametrize("kind", ["o", "d"])
@pytest.mark.parametrize("reduction", ["mean_norm", "sum_squared"])
def test_regularizer_reduces_over_every_module(method_name, kind, reduction):
    model, method = adapted(method_name, {"name": kind, "weight": 0.3, "reduction": reduction})
    modules = method.low_rank_modules(model).values()
    eye = torch.eye(4)
    norms = []
    for m in modules:  # the deviations of the module docstring, written out with torch.linalg.norm
        a, b = m.lora_A.detach(), m.lora_B.detach()
        gram_b = b.T @ b
        target_b = eye if kind == "o" else torch.diag(torch.diagonal(gram_b))
        norms += [torch.linalg.norm(a @ a.T - eye), torch.linalg.norm(gram_b - target_b)]
    norms = torch.stack(norms)
    expected = norms.mean() if reduction == "mean_norm" else norms.pow(2).sum()
    terms = method.regularizers(model)
    assert list(terms) == [f"mpc_{kind}"] and len(modules) == 12
    assert float(terms[f"mpc_{kind}"].detach()) == pytest.approx(0.3 * float(expected), rel=1e-5)
    assert terms[f"mpc_{kind}"].requires_grad


def test_adalora_mpc_o_equals_peft_adalora_orthogonal_regulariser():
    """PEFT adds orth_reg_weight * (mean over every lora_A and lora_B of ||G - I||_F) to the loss in
    AdaLoraModel.forward: that difference is our MPC_o term on the same P and Q."""
    from test_peft_oracle_adalora import peft_adalora_pair

    ours, method, theirs = peft_adalora_pair("tiny-roberta", total_step=100, tinit=10, tfinal=10, deltaT=1)
    perturb_trainable(ours, scale=0.5)  # P, Q far from orthonormal and each factor's deviation different
    inner = theirs.base_model.model
    with torch.no_grad():
        for name, module in method.low_rank_modules(ours).items():
            inner.get_submodule(name).lora_A["default"].copy_(module.lora_A)
            inner.get_submodule(name).lora_B["default"].copy_(module.lora_B)
    batch = tiny_batch()
    with torch.no_grad():
        peft_term = theirs.base_model(**batch).loss - inner(**batch).loss  # with and without the regulariser
        ours_term = method.regularizers(ours)["mpc_o"]
    assert float(ours_term) > 0.1
    assert float(ours_term) == pytest.approx(float(peft_term), abs=1e-6)


def test_no_constraint_adds_no_term():
    for mpc in (None, {"name": "none", "weight": 0.0}, {"name": "n"}):
        model, method = adapted("lora", mpc)
        assert method.regularizers(model) == {}


def orthogonality_after_training(mpc: dict | None, steps: int = 10) -> dict[str, float]:
    model, method = adapted("lora", mpc)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for step in range(steps):
        loss = model(**tiny_batch(seed=step)).loss + sum(method.regularizers(model).values(), torch.zeros(()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return method.summary(model)["pattern_errors"]


# the mean of norms spreads the weight over every factor matrix, so it takes a larger weight in 10 steps
@pytest.mark.parametrize("reduction, weight", [("mean_norm", 1.0), ("sum_squared", 0.1)])
def test_training_with_mpc_lowers_the_pattern_errors(reduction, weight):
    free = orthogonality_after_training(None)
    orthonormal = orthogonality_after_training({"name": "o", "weight": weight, "reduction": reduction})
    diagonal = orthogonality_after_training({"name": "d", "weight": weight, "reduction": reduction})
    assert orthonormal["A_rows_orthonormal"] < 0.5 * free["A_rows_orthonormal"]  # about 0.3 vs 1.3
    assert orthonormal["B_columns_orthonormal"] < 0.9 * free["B_columns_orthonormal"]  # B starts at 0: slower
    assert diagonal["A_rows_orthonormal"] < 0.5 * free["A_rows_orthonormal"]
    assert diagonal["B_columns_orthogonal"] < free["B_columns_orthogonal"]


@pytest.mark.parametrize("method_name", WITHOUT_A_AND_B)
def test_mpc_without_a_and_b_is_a_config_error(method_name):
    rank = 4
    with pytest.raises(ConfigError, match="no low-rank factors A and B"):
        build_method(method_name, {}, rank, {"name": "o", "weight": 0.1})


def test_bad_mpc_settings_are_config_errors():
    with pytest.raises(ConfigError, match="supports only"):
        build_method("pa", {}, 4, {"name": "n"})  # PA already has MPC_n's nonlinearity
    with pytest.raises(ConfigError, match="unknown mpc"):
        build_method("lora", {}, 4, {"name": "x"})
    with pytest.raises(ConfigError, match="activation"):
        build_method("lora", {}, 4, {"name": "n", "activation": "nope"})
    with pytest.raises(ConfigError, match="no setting"):
        build_method("lora", {}, 4, {"name": "o", "wieght": 0.1})
    with pytest.raises(ConfigError, match="mpc.reduction"):
        build_method("lora", {}, 4, {"name": "o", "reduction": "mean"})


@pytest.mark.parametrize("kind", ["o", "d", "n"])
def test_config_group_composes(kind):
    cfg = compose([f"mpc={kind}", "method=trilora"])
    method = build_method("trilora", {}, 4, OmegaConf.to_container(cfg.mpc, resolve=True))
    assert method.mpc.name == kind and method.mpc.weight == float(cfg.mpc.weight)
    assert (method.mpc.weight > 0) == (kind != "n") and method.mpc.reduction == "mean_norm"


@pytest.mark.parametrize("kind", MPC_NAMES)
def test_the_yaml_and_the_dataclass_agree(kind):
    """Under protocol=simple (the values tools use outside a run) the mpc YAML gives the constraint MPC(kind) is:
    the settings that act for that constraint are equal."""
    composed = MPC.from_config(OmegaConf.to_container(compose([f"mpc={kind}", "protocol=simple"]).mpc, resolve=True))
    default = MPC(kind)
    acting = (["weight", "reduction"] if default.has_loss else []) + (["activation"] if default.nonlinear else [])
    assert {k: getattr(composed, k) for k in acting} == {k: getattr(default, k) for k in acting}


@pytest.mark.parametrize("kind", ["o", "d"])
def test_sum_squared_is_selectable_from_the_command_line(kind):
    cfg = compose([f"mpc={kind}", "mpc.reduction=sum_squared", "method=lora"])
    assert build_method("lora", {}, 4, OmegaConf.to_container(cfg.mpc, resolve=True)).mpc.reduction == "sum_squared"


@pytest.mark.parametrize("method_name", NONLINEAR)
def test_mpc_n_is_identity_at_init_nonlinear_and_not_mergeable(method_name):
    base = tiny_model("tiny-roberta")
    model, method = adapted(method_name, {"name": "n"})
    torch.testing.assert_close(logits(model), logits(base), atol=ATOL, rtol=1e-4)
    assert method.mergeable and not method.merges  # a mergeable method, made unmergeable by MPC_n at run time
    with pytest.raises(NotMergeableError, match="mpc=n"):
        method.merge(copy.deepcopy(model))
    module = next(iter(method.low_rank_modules(model).values()))
    with torch.no_grad():
        for param in (module.lora_B, getattr(module, "lora_E", None), getattr(module, "lora_G", None)):
            if param is not None:
                param.normal_()
        x = torch.randn(3, module.in_features)
        delta = module(x) - module.base(x)
        assert not torch.allclose(delta + (module(-x) - module.base(-x)), torch.zeros_like(delta), atol=1e-4)


def test_lora_with_mpc_n_is_pa():
    lora, _ = adapted("lora", {"name": "n"})
    pa, _ = adapted("pa", None)
    for p_lora, p_pa in zip(lora.parameters(), pa.parameters(), strict=True):
        assert torch.equal(p_lora, p_pa)  # same seed, same init
    with torch.no_grad():
        for model in (lora, pa):
            torch.manual_seed(7)
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.1 * torch.randn_like(param))
    torch.testing.assert_close(logits(lora), logits(pa))


def test_reference_reduction_is_hundreds_of_times_weaker_at_init_on_roberta_base_dims():
    # 12 layers x (query, key, value, attention output 768->768, FFN in 768->3072, FFN out 3072->768), LoRA init,
    # r = 8, weight 0.1: the reference (mean of unsquared norms) is about 0.236, the paper's equations taken
    # literally (squared norms summed over modules) about 83 (docs/methods.md, MPC)
    import math

    from subspace_tuning.methods.mpc import MPC

    torch.manual_seed(0)
    factors = []
    for _ in range(12):
        for fan_in, fan_out in [(768, 768)] * 4 + [(768, 3072), (3072, 768)]:
            a = torch.empty(8, fan_in)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            factors.append((a, torch.zeros(fan_out, 8)))
    assert float(MPC("o", 0.1, reduction="mean_norm").loss(factors)) == pytest.approx(0.2359, abs=2e-3)
    assert float(MPC("o", 0.1, reduction="sum_squared").loss(factors)) == pytest.approx(83.29, rel=1e-2)
