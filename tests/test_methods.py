"""Every registered method against every property it declares, on tiny RoBERTa and tiny DeBERTa, driven by the
registry (``catalogue()``): a new method is tested by being registered. Also: the catalogue's metadata against the
paper's tables, each method's settings defined once (conf/method/<name>.yaml, the config dataclass only types them),
the roberta-base parameter budgets of the paper, and a method registered at test time joining the matrix."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODELS
from method_properties import EXPECTED_COUNTS, low_rank, matrix_cases, run_case
from omegaconf import OmegaConf
from torch import nn

from subspace_tuning import config
from subspace_tuning.methods import REGISTRY, Method, build_method, catalogue, method_class, register
from subspace_tuning.methods.base import FAMILIES
from subspace_tuning.methods.defaults import method_defaults
from subspace_tuning.methods.extension.lora import LoRALinear, LowRankMethod

CASES = matrix_cases()
PAPER = json.loads(Path(config.__file__).with_name("paper_results.json").read_text())


# --- the matrix ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_property(tiny_name, case, tmp_path):
    run_case(tiny_name, case, tmp_path)


def test_every_registered_method_has_a_closed_form_count():
    """The guard: a registered method without a row would escape the count check."""
    missing = [cls.name for cls in catalogue() if cls.name not in EXPECTED_COUNTS]
    assert not missing, f"add a closed-form count for {missing} to EXPECTED_COUNTS in tests/method_properties.py"
    stale = set(EXPECTED_COUNTS) - set(REGISTRY)
    assert not stale, f"counts of methods that are not registered: {sorted(stale)}"


# --- the catalogue ------------------------------------------------------------------------------------------------
def test_catalogue_entries_are_complete_and_unique():
    classes = catalogue()
    assert classes == sorted(REGISTRY.values(), key=lambda cls: cls.paper_order)
    for cls in classes:
        assert cls.family in FAMILIES and isinstance(cls.display_name, str) and cls.display_name, cls
        assert isinstance(cls.mergeable, bool) and isinstance(cls.identity_at_init, bool), cls
        assert set(cls.mpc_support) <= {"o", "d", "n"}, cls
    for attr in ("name", "display_name", "paper_order"):
        values = [getattr(cls, attr) for cls in classes]
        assert len(set(values)) == len(values), f"{attr} repeated: {values}"


def test_register_refuses_a_class_without_its_own_catalogue_entry():
    class Unnamed(LowRankMethod):
        name = "unnamed"

    with pytest.raises(AssertionError, match="display_name"):
        register(Unnamed)
    assert "unnamed" not in REGISTRY


def test_peft_types_are_peft_names():
    peft = pytest.importorskip("peft")
    for cls in catalogue():
        if cls.peft_type is not None:
            assert cls.peft_type in peft.PeftType.__members__, cls.name


def test_display_names_and_order_are_the_papers():
    """Every row label of the paper's tables starts with its method's display name ('LoRA + MPC_o', 'AdaLoRA -
    MPC_o'), and within each rank block the paper's rows come in paper_order."""
    for model, table in PAPER["tables"].items():
        blocks: dict[int | None, list[int]] = {}
        for row in table["rows"]:
            cls = method_class(row["method"])
            assert row["label"].startswith(cls.display_name), (model, row["label"], cls.display_name)
            blocks.setdefault(row["rank"], []).append(cls.paper_order)
        for rank, orders in blocks.items():
            assert orders == sorted(orders), (model, rank, orders)


def test_every_method_has_its_entry_in_docs_methods_md():
    docs = (Path(config.__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    missing = [cls.name for cls in catalogue() if f"### {cls.display_name} (`{cls.name}`)" not in docs]
    assert not missing, f"docs/methods.md has no section for {missing}"


@pytest.mark.parametrize("name", [cls.name for cls in catalogue() if not cls.uses_rank])
def test_rank_free_methods_are_recorded_without_rank(name):
    assert build_method(name, {}, rank=8).rank is None


# --- settings: one source ----------------------------------------------------------------------------------------
def method_yaml(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(config.CONF_DIR / "method" / f"{name}.yaml"))


def test_every_method_has_a_yaml_and_every_yaml_a_method():
    assert {p.stem for p in (config.CONF_DIR / "method").glob("*.yaml")} == {cls.name for cls in catalogue()}


def check_settings_defined_once(cls: type[Method]) -> None:
    """The YAML holds a value for every setting and nothing else; the dataclass types them and holds no value."""
    fields = dataclasses.fields(cls.config_class)
    yaml = method_yaml(cls.name)
    assert yaml.pop("name") == cls.name
    assert set(yaml) == {f.name for f in fields} - {"rank"}, cls.name
    with_default = [f.name for f in fields if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING]
    assert not with_default, f"{cls.config_class.__name__} repeats the YAML's values of {with_default}"
    built = build_method(cls.name, {}, 4)
    assert {k: v for k, v in dataclasses.asdict(built.config).items() if k != "rank"} == \
        method_defaults(cls.name)


@pytest.mark.parametrize("name", [cls.name for cls in catalogue()])
def test_settings_are_defined_once(name):
    check_settings_defined_once(method_class(name))


def test_defaults_resolve_the_protocol_interpolations_under_protocol_simple():
    simple = config.compose(["protocol=simple"]).protocol.adalora
    defaults = method_defaults("adalora")
    assert {k: defaults[k] for k in simple} == OmegaConf.to_container(simple)
    defaults["alpha"] = -1.0  # a copy: the cache cannot be changed through it
    assert method_defaults("adalora")["alpha"] == simple.alpha


def test_explicit_settings_win_over_the_yaml():
    method = build_method("adalora", {"alpha": 32.0, "tinit": 0.1}, 4)
    assert (method.config.alpha, method.config.tinit, method.config.tfinal) == (32.0, 0.1, 0.5)


# --- the paper's budgets ------------------------------------------------------------------------------------------
PAPER_BUDGETS = {(row["method"], row["rank"]): row["per_mille"] for row in PAPER["tables"]["roberta-base"]["rows"]}


@pytest.mark.parametrize("name", sorted({m for m, _ in PAPER_BUDGETS}))
def test_roberta_base_budgets_match_the_paper(name):
    """The parameter table (``python -m subspace_tuning.params``, on the meta device) against the %Params column of
    the paper's RoBERTa-base table, within 1% (the paper rounds to two decimals)."""
    from subspace_tuning.params import table_rows

    rows = {row["rank"]: row["per_mille"] for row in table_rows("roberta-base", [name])}
    paper = {rank: per_mille for (method, rank), per_mille in PAPER_BUDGETS.items() if method == name}
    assert set(rows) == set(paper)
    for rank, published in paper.items():
        assert rows[rank] == pytest.approx(published, rel=0.01), f"{name} r={rank}: {rows[rank]} vs {published}"


# --- a method added at test time ----------------------------------------------------------------------------------
class GatedLoRALinear(LoRALinear):
    """phi(W) = W + g s B A with a learned scalar gate g starting at 1."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 activation: nn.Module | None = None) -> None:
        super().__init__(base, rank, alpha, dropout, activation)
        self.gate = nn.Parameter(torch.ones((), device=base.weight.device, dtype=base.weight.dtype))

    def core(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.gate


class GatedLoRA(LowRankMethod):
    """LoRA with a learned scalar gate on all six linear modules."""

    name = "gated_lora"
    display_name = "Gated LoRA"
    paper_order = 1000
    linear_class = GatedLoRALinear


GATED_LORA_YAML = """\
name: gated_lora
alpha: 16.0
dropout: 0.0
targets: null
"""


def test_a_method_registered_at_test_time_joins_the_matrix(temporary_method, monkeypatch, tmp_path):
    """The new method's class, YAML and count row are all it takes: the matrix, the guard and the settings check
    pick it up from the registry, and it passes every property on both tiny models."""
    gated = temporary_method(GatedLoRA, GATED_LORA_YAML)
    assert catalogue()[-1] is gated
    with pytest.raises(AssertionError, match="gated_lora"):  # no count yet: the guard fails
        test_every_registered_method_has_a_closed_form_count()
    monkeypatch.setitem(EXPECTED_COUNTS, "gated_lora", low_rank(lambda r: 1))  # + the gate per module
    test_every_registered_method_has_a_closed_form_count()
    check_settings_defined_once(gated)
    cases = [case for case in matrix_cases() if case.method == "gated_lora"]
    assert [(case.check, case.rank) for case in cases] == \
        [("identity", 4), ("only_own_train", 4), ("merge", 4), ("save_load", 4), ("count", 2), ("count", 8)]
    for model_name in TINY_MODELS:
        for case in cases:
            run_case(model_name, case, tmp_path)
