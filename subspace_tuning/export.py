"""Export a trained run as a standard transformers checkpoint folder or as a Hugging Face PEFT adapter.

    python -m subspace_tuning.export outputs/<experiment>/<model>/<task>/<method>/<rank>/<mpc>/seed<n>
    python -m subspace_tuning.export <run folder> --out exported/mrpc-dora
    python -m subspace_tuning.export <run folder> --format peft --out exported/mrpc-lora-peft
    python -m subspace_tuning.export <run folder> --push-to-hub my-name/roberta-base-mrpc-lora

The model is rebuilt from the run's ``config.yaml`` (the same pretrained backbone) and the trained parameters are
loaded from ``trained.safetensors``. ``--format merged`` (the default) merges the method: every adapted layer
becomes a plain ``nn.Linear`` holding phi(W), and the folder (config.json, model.safetensors, the tokenizer) loads
with ``AutoModelForSequenceClassification.from_pretrained`` and no project code. ``--format peft`` writes
``adapter_config.json`` + ``adapter_model.safetensors`` (the classification head as ``modules_to_save``) that
``peft.PeftModel.from_pretrained(base, folder)`` loads onto the pretrained backbone (``peft_format``: which
methods, and how). Before anything is final, the exported model's logits are compared with the adapted model's on
a probe batch (the PEFT folder is loaded back with PEFT for it); the largest difference is printed and saved in
``export.json``. Every export also writes a README.md model card with the Hub's metadata header (``model_card``).

Only results are exported: the run's ``metrics.json`` must say ``completed``, every trained tensor must be
finite, and the exported logits must match (a NaN difference fails the check). Methods whose phi(W) is not linear
in the input (prompt and prefix tuning, MPC_n, PA, the bottleneck adapters) cannot become plain weights, and
methods with no exact PEFT adapter cannot become one; the command refuses them and says why.

Options: ``--format merged|peft``; ``--out DIR``, where to write (default ``<run folder>/export``, or
``<run folder>/export-peft``; it must not exist or be empty); ``--push-to-hub REPO_ID``, upload the finished folder
with huggingface_hub (a failed upload leaves the local export as it is).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import warnings
from collections.abc import Callable, Iterator
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


def check_completed(run: Path) -> dict[str, Any]:
    """The run's ``metrics.json`` record; refuse a run whose record does not say ``completed`` (failed, running, or
    no record)."""
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
    return record


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
    from .models import load_tokenizer
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
    model = backbone(cfg, tokenizer)
    method.apply(model)
    method.load_state_dict(model, tensors)
    return cfg, tokenizer, model.eval(), method


def backbone(cfg: DictConfig, tokenizer: Any) -> torch.nn.Module:
    """The run's pretrained backbone with a fresh classification head, as the runner builds it."""
    from .models import build_model

    return build_model(cfg.model, int(cfg.task.num_labels), tokenizer).eval()


def check_logits(what: str, got: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest difference between the exported model's logits ``got`` and the adapted model's ``expected``;
    raise if it exceeds float32 round-off (relative to the logits' size)."""
    difference = float((got - expected).abs().max())
    tolerance = 1e-3 * max(1.0, float(expected.abs().max()))
    if not difference <= tolerance:  # written so that NaN fails (every comparison with NaN is false)
        raise ExportError(f"the {what} logits differ from the adapted model's by {difference:.3g} "
                          f"(tolerance {tolerance:.3g}); nothing was written")
    return difference


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
        return merged, check_logits("merged model's", merged(**probe).logits, expected)


def label_names(cfg: DictConfig) -> dict[int, str] | None:
    labels = OmegaConf.select(cfg, "task.tsv.labels")
    return {i: str(label) for i, label in enumerate(labels)} if labels and len(labels) == cfg.task.num_labels else None


def merged_writer(cfg: DictConfig, tokenizer: Any, model: torch.nn.Module, method: Any) -> Writer:
    """Merge now (refusing what cannot merge); the writer saves the checked merged checkpoint."""
    merged, difference = merge_checked(model, method, tokenizer)
    names = label_names(cfg)
    if names:
        merged.config.id2label, merged.config.label2id = names, {v: k for k, v in names.items()}
    if int(cfg.task.num_labels) == 1:
        merged.config.problem_type = "regression"

    def write(folder: Path) -> float:
        merged.save_pretrained(folder)
        return difference

    return write


def peft_writer(cfg: DictConfig, tokenizer: Any, model: torch.nn.Module, method: Any, steps: int) -> Writer:
    """Build PEFT's model holding the trained state now (refusing methods with no exact PEFT adapter); the writer
    saves it with PEFT and loads it back onto a fresh backbone with ``PeftModel.from_pretrained`` to check it."""
    import torch

    from .config import method_options
    from .peft_format import check_exportable, peft_model_of

    check_exportable(method)  # before any backbone is built
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ExportError("--format peft needs Hugging Face PEFT: pip install 'subspace-tuning[peft]' (peft 0.21.2, "
                          "the version the export is tested against)") from None

    def initial() -> torch.nn.Module:
        fresh, again = backbone(cfg, tokenizer), type(method)(method.config)  # the same settings, at initialisation
        again.mpc = method.mpc
        return again.apply(fresh)

    with quiet_peft():
        adapter = peft_model_of(method, model, backbone(cfg, tokenizer), method_options(cfg), initial, steps)

    def write(folder: Path) -> float:
        from peft import PeftModel

        adapter.save_pretrained(folder)
        with quiet_peft():
            loaded = PeftModel.from_pretrained(backbone(cfg, tokenizer), folder).eval()
        probe = tokenizer(PROBE, padding=True, return_tensors="pt")
        with torch.no_grad():
            return check_logits("PEFT adapter's (loaded back with PeftModel.from_pretrained)",
                                loaded(**probe).logits, model(**probe).logits)

    return write


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT 0.21 calls a transformers 5 method that warns it is deprecated; the warning is not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


Writer = Callable[[Path], float]
FORMATS = ("merged", "peft")


def export_run(run: str | Path, out: str | Path | None = None, format: str = "merged",
               push_to_hub: str | None = None) -> Path:
    """Write ``run`` as a merged checkpoint or a PEFT adapter (``format``) with its model card to ``out`` (default
    ``<run>/export`` or ``<run>/export-peft``), upload it to the Hub repository ``push_to_hub`` if given, and return
    its path."""
    from .model_card import write_model_card

    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    run = Path(run)
    out = Path(out) if out is not None else run / ("export" if format == "merged" else "export-peft")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty folder; choose another --out folder")
    cfg, tokenizer, model, method = rebuild(run)
    record = check_completed(run)
    if format == "merged":
        write = merged_writer(cfg, tokenizer, model, method)
    else:
        write = peft_writer(cfg, tokenizer, model, method, int(record.get("steps") or 1))
    staging = out.with_name(f".{out.name}.partial")  # a failed export never leaves a half-written folder
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        difference = write(staging)
        tokenizer.save_pretrained(staging)
        summary = {"run": str(run.resolve()), "format": format, "model": cfg.model.name, "task": cfg.task.name,
                   "method": method.name, "rank": method.rank, "mpc": cfg.mpc.name,
                   "max_abs_logit_difference": difference}
        # strict JSON: a NaN here is a bug, never a value
        (staging / "export.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        write_model_card(staging, cfg, record, method, summary, push_to_hub)  # replaces PEFT's own README.md
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except OSError as err:
        raise ExportError(f"cannot write the export to {out}: {err.strerror or err}; choose another "
                          f"--out folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if push_to_hub:
        push(out, push_to_hub)
    return out


class PushError(SubspaceTuningError):
    """The upload to the Hugging Face Hub failed (offline, no token, no permission); the local export is intact."""


def push(folder: Path, repo_id: str) -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created if missing); return the commit URL."""
    import os

    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)  # read now, not when huggingface_hub was imported
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        return str(api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model",
                                     commit_message="Upload subspace-tuning export"))
    except Exception as err:  # network, HTTP, authentication and validation errors have no common base
        raise PushError(f"the export at {folder} is complete and untouched, but uploading it to the Hugging Face Hub "
                        f"repository {repo_id!r} failed ({type(err).__name__}: {one_line(str(err))[:300]}). Check "
                        f"the network and your token (hf auth login, or HF_TOKEN), then upload the folder as it "
                        f"is: hf upload {repo_id} {folder}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("python -m subspace_tuning.export", __doc__)
    parser.add_argument("run", metavar="RUN_FOLDER", type=Path, help="the folder of a completed run")
    parser.add_argument("--format", choices=FORMATS, default="merged",
                        help="merged: a plain transformers checkpoint (default); peft: a PEFT adapter folder")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help="where to write (default <run folder>/export or export-peft; must not exist or be "
                             "empty)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID",
                        help="upload the finished export to this Hugging Face Hub model repository")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; every error is one paragraph on stderr and exit status 2."""
    args = parse_args(argv)
    from transformers.utils import logging

    logging.disable_progress_bar()  # the command answers in one line (or one error paragraph), not loading bars
    try:
        out = export_run(args.run, args.out, args.format, args.push_to_hub)
    except SubspaceTuningError as err:
        fail(err)
    difference = json.loads((out / "export.json").read_text())["max_abs_logit_difference"]
    loader = "AutoModelForSequenceClassification" if args.format == "merged" else "peft.PeftModel"
    print(f"exported to {out} (exported vs adapted logits: max difference {difference:.2g}); load it with "
          f"{loader}.from_pretrained" + (f"; uploaded to {args.push_to_hub}" if args.push_to_hub else ""))


if __name__ == "__main__":
    main()
