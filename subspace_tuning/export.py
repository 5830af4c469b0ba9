"""Export a trained run as a standard transformers checkpoint folder.

    python -m subspace_tuning.export outputs/<experiment>/<model>/<task>/<method>/<rank>/<mpc>/seed<n>
    python -m subspace_tuning.export <run folder> --out exported/mrpc-dora

The model is rebuilt from the run's ``config.yaml`` (the same pretrained backbone), the trained
parameters are loaded from ``trained.safetensors`` and the method is merged: every adapted layer becomes a
plain ``nn.Linear`` holding phi(W). The folder written (default ``<run folder>/export``) holds
config.json, model.safetensors and the tokenizer, which
``AutoModelForSequenceClassification.from_pretrained`` loads with no project code. Before writing, the
merged model's logits are compared with the adapted model's on a probe batch (the largest difference is
printed and saved in ``export.json``).

Only results are exported: the run's ``metrics.json`` must say ``completed``, every trained tensor must be
finite, and the merged logits must match (a NaN difference fails the check). Methods whose phi(W) is not linear
in the input (prompt and prefix tuning, MPC_n, PA, the bottleneck adapters) cannot become plain weights; the
command refuses them and says why.

Options: ``--out DIR``, where to write (default ``<run folder>/export``; it must not exist or be empty).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from .cli import ArgumentParser, fail, one_line
from .errors import ConfigError, NotMergeableError, SubspaceTuningError

if TYPE_CHECKING:  # torch is imported where it is used, so that --help and usage errors answer at once
    import torch

# Single sentences: a text pair would give segment ids that a model with one token type (RoBERTa) cannot take.
PROBE = ["The merged model must agree with the adapted one before anything is written.", "A shorter probe."]


class ExportError(SubspaceTuningError):
    """The run holds no result to export (unfinished, failed, non-finite weights) or the export cannot be written."""


def check_completed(run: Path) -> None:
    """Refuse a run whose ``metrics.json`` does not say ``completed`` (failed, running, or no record)."""
    path = run / "metrics.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{run} has no metrics.json, so nothing says its training completed; export only "
                          f"folders of runs that completed") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read {path} ({err}); a run writes it whole, so rerun the run") from None
    status = record.get("status") if isinstance(record, dict) else None
    if status != "completed":
        error = (str(record.get("error") or "").strip().splitlines() or [""])[0][:200] if status else ""
        raise ExportError(f"{run} is not a completed run: its metrics.json says status {status!r}"
                          + (f" ({error})" if error else "")
                          + "; only completed runs are exported (rerun it: relaunching the sweep resumes it)")


def check_finite(tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse trained tensors holding NaN or infinity, naming the first such tensor."""
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ExportError(f"trained tensor {name!r} in {source} has {bad} non-finite values (NaN or "
                                  f"infinity) of {tensor.numel()}; the run diverged, so there is no model to export: "
                                  f"rerun it (e.g. with a lower optim.lr)")


def read_file(path: Path, load: Callable[[Path], Any]) -> Any:
    """``load(path)``; a damaged file is one ConfigError paragraph naming it."""
    try:
        return load(path)
    except Exception as err:  # YAML, safetensors and OS errors have no common base
        raise ConfigError(f"cannot read {path}: {one_line(str(err)) or type(err).__name__}; the run wrote it "
                          f"whole, so it was changed since: rerun the run") from None


def rebuild(run: Path) -> tuple[DictConfig, Any, torch.nn.Module, Any]:
    """(config, tokenizer, adapted model with the trained parameters loaded, method) of a completed run whose
    trained tensors are finite."""
    from .config import method_options
    from .methods import build_method
    from .models import build_model, load_tokenizer
    from .runio import load_tensors

    config_file, trained = run / "config.yaml", run / "trained.safetensors"
    for path in (config_file, trained):
        if not path.is_file():
            raise ConfigError(f"{run} is not a finished run folder: {path.name} is missing "
                              "(train with train.save_trained=true)")
    check_completed(run)
    cfg = read_file(config_file, OmegaConf.load)
    if cfg.model.source == "config":
        raise ConfigError(f"model {cfg.model.name} (source=config) is a random-init test model whose backbone the run "
                          "did not save; only runs on pretrained models (hub, minilm) can be exported")
    tensors = read_file(trained, load_tensors)
    check_finite(tensors, trained)
    method = build_method(cfg.method.name, method_options(cfg), cfg.rank, OmegaConf.to_container(cfg.mpc))
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, int(cfg.task.num_labels), tokenizer)
    method.apply(model)
    method.load_state_dict(model, tensors)
    return cfg, tokenizer, model.eval(), method


def merge_checked(model: torch.nn.Module, method: Any, tokenizer: Any) -> tuple[torch.nn.Module, float]:
    """The merged model and the largest logit difference to the adapted model on the probe batch."""
    import torch

    from .methods.base import AdapterModule

    probe = tokenizer(PROBE, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**probe).logits
        try:
            merged = method.merge(model)
        except NotMergeableError as err:
            raise NotMergeableError(f"method {method.name} cannot be exported as a plain transformers checkpoint: "
                                    f"{err}") from err
        left = [name for name, module in merged.named_modules() if isinstance(module, AdapterModule)]
        if left:
            raise NotMergeableError(f"method {method.name} keeps modules that are not plain transformers layers "
                                    f"after merging ({', '.join(left[:3])}), so it cannot be exported as a plain "
                                    f"checkpoint")
        difference = float((merged(**probe).logits - expected).abs().max())
    tolerance = 1e-3 * max(1.0, float(expected.abs().max()))
    if not difference <= tolerance:  # written so that NaN fails (every comparison with NaN is false)
        raise ExportError(f"the merged model's logits differ from the adapted model's by {difference:.3g} "
                          f"(tolerance {tolerance:.3g}); nothing was written")
    return merged, difference


def label_names(cfg: DictConfig) -> dict[int, str] | None:
    labels = OmegaConf.select(cfg, "task.tsv.labels")
    return {i: str(label) for i, label in enumerate(labels)} if labels and len(labels) == cfg.task.num_labels else None


def export_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the merged checkpoint of ``run`` to ``out`` (default ``<run>/export``) and return its path."""
    run = Path(run)
    out = Path(out) if out is not None else run / "export"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty folder; choose another --out folder")
    cfg, tokenizer, model, method = rebuild(run)
    merged, difference = merge_checked(model, method, tokenizer)
    names = label_names(cfg)
    if names:
        merged.config.id2label, merged.config.label2id = names, {v: k for k, v in names.items()}
    if int(cfg.task.num_labels) == 1:
        merged.config.problem_type = "regression"
    staging = out.with_name(f".{out.name}.partial")  # a failed export never leaves a half-written folder
    try:
        shutil.rmtree(staging, ignore_errors=True)
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "export.json").write_text(json.dumps({  # strict JSON: a NaN here is a bug, never a value
            "run": str(run.resolve()), "model": cfg.model.name, "task": cfg.task.name, "method": method.name,
            "rank": method.rank, "mpc": cfg.mpc.name, "max_abs_logit_difference": difference}, indent=2,
            allow_nan=False) + "\n")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"cannot write the export to {out}: {err.strerror or err}; choose another "
                          f"--out folder") from None
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("python -m subspace_tuning.export", __doc__)
    parser.add_argument("run", metavar="RUN_FOLDER", type=Path, help="the folder of a completed run")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help="where to write (default <run folder>/export; must not exist or be empty)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; every error is one paragraph on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        out = export_run(args.run, args.out)
    except SubspaceTuningError as err:
        fail(err)
    difference = json.loads((out / "export.json").read_text())["max_abs_logit_difference"]
    print(f"exported to {out} (merged vs adapted logits: max difference {difference:.2g}); "
          "load it with AutoModelForSequenceClassification.from_pretrained")


if __name__ == "__main__":
    main()
