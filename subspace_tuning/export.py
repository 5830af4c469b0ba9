"""Export a trained run as a standard transformers checkpoint folder.

    python -m subspace_tuning.export outputs/<experiment>/<model>/<task>/<method>/<rank>/<mpc>/seed<n>
    python -m subspace_tuning.export <run folder> out=exported/mrpc-dora

The model is rebuilt from the run's ``config.yaml`` (the same pretrained backbone), the trained
parameters are loaded from ``trained.safetensors`` and the method is merged: every adapted layer becomes a
plain ``nn.Linear`` holding phi(W). The folder written (default ``<run folder>/export``) holds
config.json, model.safetensors and the tokenizer, which
``AutoModelForSequenceClassification.from_pretrained`` loads with no project code. Before writing, the
merged model's logits are compared with the adapted model's on a probe batch (the largest difference is
printed and saved in ``export.json``).

Methods whose phi(W) is not linear in the input (prompt and prefix tuning, MPC_n, PA, the bottleneck
adapters) cannot become plain weights; the command refuses them and says why.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, NotMergeableError, SubspaceTuningError

USAGE = "usage: python -m subspace_tuning.export <run folder> [out=<folder>]"
# Single sentences: a text pair would give segment ids that a model with one token type (RoBERTa) cannot take.
PROBE = ["The merged model must agree with the adapted one before anything is written.", "A shorter probe."]


def rebuild(run: Path) -> tuple[DictConfig, Any, torch.nn.Module, Any]:
    """(config, tokenizer, adapted model with the trained parameters loaded, method) of a finished run."""
    from .config import method_options
    from .methods import build_method
    from .models import build_model, load_tokenizer
    from .runio import load_tensors

    config_file, trained = run / "config.yaml", run / "trained.safetensors"
    for path in (config_file, trained):
        if not path.is_file():
            raise ConfigError(f"{run} is not a finished run folder: {path.name} is missing "
                              "(train with train.save_trained=true)")
    cfg = OmegaConf.load(config_file)
    if cfg.model.source == "config":
        raise ConfigError(f"model {cfg.model.name} (source=config) is a random-init test model whose backbone the run "
                          "did not save; only runs on pretrained models (hub, minilm) can be exported")
    rank = cfg.rank.r if isinstance(cfg.rank, DictConfig) else cfg.rank  # runs written before rank became a value
    method = build_method(cfg.method.name, method_options(cfg), rank, OmegaConf.to_container(cfg.mpc))
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, int(cfg.task.num_labels), tokenizer)
    method.apply(model)
    method.load_state_dict(model, load_tensors(trained))
    return cfg, tokenizer, model.eval(), method


@torch.no_grad()
def merge_checked(model: torch.nn.Module, method: Any, tokenizer: Any) -> tuple[torch.nn.Module, float]:
    """The merged model and the largest logit difference to the adapted model on the probe batch."""
    from .methods.base import AdapterModule

    probe = tokenizer(PROBE, padding=True, return_tensors="pt")
    expected = model(**probe).logits
    try:
        merged = method.merge(model)
    except NotMergeableError as err:
        raise NotMergeableError(f"method {method.name} cannot be exported as a plain transformers checkpoint: {err}") \
            from err
    left = [name for name, module in merged.named_modules() if isinstance(module, AdapterModule)]
    if left:
        raise NotMergeableError(f"method {method.name} keeps modules that are not plain transformers layers after "
                                f"merging ({', '.join(left[:3])}), so it cannot be exported as a plain checkpoint")
    difference = float((merged(**probe).logits - expected).abs().max())
    if difference > 1e-3 * max(1.0, float(expected.abs().max())):
        raise SubspaceTuningError(f"the merged model's logits differ from the adapted model's by {difference:.3g}; "
                                  "nothing was written")
    return merged, difference


def label_names(cfg: DictConfig) -> dict[int, str] | None:
    labels = OmegaConf.select(cfg, "task.tsv.labels")
    return {i: str(label) for i, label in enumerate(labels)} if labels and len(labels) == cfg.task.num_labels else None


def export_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the merged checkpoint of ``run`` to ``out`` (default ``<run>/export``) and return its path."""
    run = Path(run)
    out = Path(out) if out is not None else run / "export"
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty; choose another out=<folder>")
    cfg, tokenizer, model, method = rebuild(run)
    merged, difference = merge_checked(model, method, tokenizer)
    names = label_names(cfg)
    if names:
        merged.config.id2label, merged.config.label2id = names, {v: k for k, v in names.items()}
    if int(cfg.task.num_labels) == 1:
        merged.config.problem_type = "regression"
    staging = out.with_name(f".{out.name}.partial")  # a failed export never leaves a half-written folder
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "export.json").write_text(json.dumps({
        "run": str(run.resolve()), "model": cfg.model.name, "task": cfg.task.name, "method": method.name,
        "rank": method.rank, "mpc": cfg.mpc.name, "max_abs_logit_difference": difference}, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    runs = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    if len(runs) != 1 or set(options) - {"out"}:
        sys.exit(USAGE)
    try:
        out = export_run(runs[0], options.get("out"))
    except SubspaceTuningError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    difference = json.loads((out / "export.json").read_text())["max_abs_logit_difference"]
    print(f"exported to {out} (merged vs adapted logits: max difference {difference:.2g}); "
          "load it with AutoModelForSequenceClassification.from_pretrained")


if __name__ == "__main__":
    main()
