"""Hugging Face PEFT as an independent oracle for (IA)3, DoRA, prompt tuning and prefix tuning.

The same tiny model is adapted by this project and by PEFT, our (perturbed, i.e. trained-looking)
parameters are copied into PEFT's, and the forward outputs must agree within float32 round-off:
atol 1e-5, rtol 1e-4 on logits / hidden states of magnitude ~1.

Where the two differ by documented design, the test removes the difference rather than the check:
- RoBERTa prompt tuning: PEFT shifts the real tokens' absolute positions by n, we keep them; the test
  zeroes the position-embedding table (in both) so positions cannot matter, and compares the real
  tokens' final hidden states (PEFT's head reads the first virtual token, ours reads <s>).
- Prefix tuning: PEFT 0.21's prefix forward fails on transformers 5 encoders (it looks for a
  ``past_key_values`` argument, now ``cache``), so the oracle is PEFT's prefix layout (``get_prompt``)
  fed to transformers' own key/value cache path of the unmodified model, with the real tokens' position
  ids passed explicitly. DeBERTa has no cache path, hence no oracle (see the DeBERTa attention test in
  test_methods_reconstruction.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_batch, tiny_model
from method_properties import perturb_trainable

from subspace_tuning.architectures import head_parameter_names
from subspace_tuning.methods import build_method

peft = pytest.importorskip("peft")

TOL = {"atol": 1e-5, "rtol": 1e-4}
LAYER = r".*encoder\.layer\.\d+\."
KEY_VALUE = {"tiny-roberta": r"attention\.self\.(key|value)", "tiny-deberta": r"attention\.self\.(key_proj|value_proj)"}


def inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def with_random_biases(model: torch.nn.Module, seed: int = 5) -> torch.nn.Module:
    """Random-init models have zero biases and unit LayerNorms; move them so bias handling is tested too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or "LayerNorm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=g))
    return model


def adapted(base: torch.nn.Module, method: str, rank: int | None = None, **options) -> torch.nn.Module:
    """A copy of ``base`` adapted by our ``method``, its parameters perturbed; the head kept as in ``base``."""
    torch.manual_seed(1)
    ours = copy.deepcopy(base)
    build_method(method, options, rank).apply(ours)
    perturb_trainable(ours.eval())
    with torch.no_grad():
        for name in head_parameter_names(ours):
            ours.get_parameter(name).copy_(base.get_parameter(name))
    return ours


def ours_and_peft(model_name: str, method: str, peft_config, rank: int | None = None, **options):
    """(our adapted model, PEFT model) from one tiny model."""
    base = with_random_biases(tiny_model(model_name))
    return adapted(base, method, rank, **options), peft.get_peft_model(copy.deepcopy(base), peft_config).eval()


def peft_modules(peft_model, attribute: str):
    """(name in our model, PEFT module) for every PEFT module with ``attribute``."""
    prefix = "base_model.model."
    for name, module in peft_model.named_modules():
        if hasattr(module, attribute) and len(getattr(module, attribute)):
            yield name.removeprefix(prefix), module


def final_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor], **extra) -> torch.Tensor:
    """The last layer's hidden states (LayerNorm-ed, magnitude ~1: a random tiny head's logits are ~0.01, too
    small for an absolute tolerance to mean much)."""
    with torch.no_grad():
        return model(**batch, **extra, output_hidden_states=True).hidden_states[-1]


def assert_same_hidden(got: torch.Tensor, expected: torch.Tensor, attention_mask: torch.Tensor) -> None:
    valid = attention_mask.bool()  # padded positions are never read
    torch.testing.assert_close(got[valid], expected[valid], **TOL)


def assert_same_outputs(ours, peft_model):
    batch = inputs(tiny_batch())
    assert_same_hidden(final_hidden(ours, batch), final_hidden(peft_model, batch), batch["attention_mask"])


def test_ia3_matches_peft(tiny_name):
    config = peft.IA3Config(task_type=peft.TaskType.SEQ_CLS,
                            target_modules=rf"{LAYER}({KEY_VALUE[tiny_name]}|output\.dense)$",
                            feedforward_modules=rf"{LAYER}output\.dense$")
    ours, theirs = ours_and_peft(tiny_name, "ia3", config)
    copied = 0
    with torch.no_grad():
        for name, module in peft_modules(theirs, "ia3_l"):
            mine = ours.get_submodule(name)
            scale = mine.scale_in if module.is_feedforward else mine.scale_out
            module.ia3_l["default"].copy_(scale.view_as(module.ia3_l["default"]))
            copied += 1
    assert copied == 3 * ours.config.num_hidden_layers
    assert_same_outputs(ours, theirs)


def test_dora_matches_peft(tiny_name):
    targets = rf"{LAYER}.*(query|key|value|query_proj|key_proj|value_proj|dense)$"
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, lora_alpha=16, target_modules=targets,
                             use_dora=True)
    ours, theirs = ours_and_peft(tiny_name, "dora", config, rank=4)
    copied = 0
    with torch.no_grad():
        for name, module in peft_modules(theirs, "lora_magnitude_vector"):
            mine = ours.get_submodule(name)
            module.lora_A["default"].weight.copy_(mine.lora_A)
            module.lora_B["default"].weight.copy_(mine.lora_B)
            module.lora_magnitude_vector["default"].weight.copy_(mine.magnitude)
            copied += 1
    assert copied == 6 * ours.config.num_hidden_layers
    assert_same_outputs(ours, theirs)


def test_prompt_tuning_matches_peft(tiny_name):
    n = 5
    base = with_random_biases(tiny_model(tiny_name))
    if tiny_name == "tiny-roberta":
        with torch.no_grad():
            base.roberta.embeddings.position_embeddings.weight.zero_()  # position conventions differ (docstring)
    ours = adapted(base, "prompt_tuning", num_virtual_tokens=n)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(
        task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=n)).eval()
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.base_model.soft_prompt.embedding)
    batch = inputs(tiny_batch())
    with torch.no_grad():
        got = ours.base_model(**batch).last_hidden_state  # the soft positions are stripped before the head
    assert_same_hidden(got, final_hidden(theirs, batch)[:, n:], batch["attention_mask"])


@pytest.mark.parametrize(("reparameterize", "attention"), [(False, "sdpa"), (False, "eager"), (True, "sdpa")])
def test_prefix_tuning_matches_peft_layout_and_transformers_cache(reparameterize, attention):
    n, hidden_mlp = 4, 16
    base = with_random_biases(tiny_model("tiny-roberta"))
    base.set_attn_implementation(attention)
    ours = adapted(base, "prefix_tuning", num_virtual_tokens=n, reparameterize=reparameterize,
                   encoder_hidden_size=hidden_mlp)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(
        task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=n, prefix_projection=reparameterize,
        encoder_hidden_size=hidden_mlp))
    encoder = theirs.prompt_encoder["default"]
    with torch.no_grad():
        if reparameterize:
            encoder.load_state_dict(ours.prefix_encoder.state_dict())
        else:
            layers = [ours.roberta.encoder.layer[i].attention.self for i in range(ours.config.num_hidden_layers)]
            encoder.embedding.weight.copy_(torch.cat([t for m in layers for t in (m.prefix_key, m.prefix_value)], 1))
        cache = theirs.get_prompt(batch_size=4)
    batch = inputs(tiny_batch(batch=4))
    plain = base  # the unmodified model
    mask = torch.cat([torch.ones(4, n, dtype=torch.long), batch["attention_mask"]], 1)
    positions = plain.roberta.embeddings.create_position_ids_from_input_ids(batch["input_ids"], 0)
    expected = final_hidden(plain, {"input_ids": batch["input_ids"], "attention_mask": mask}, position_ids=positions,
                            cache=cache)
    assert_same_hidden(final_hidden(ours, batch), expected, batch["attention_mask"])
