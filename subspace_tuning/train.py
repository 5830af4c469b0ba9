"""The training recipe: one plain loop, no Trainer. ``python train.py <overrides>`` runs ``main``.

Order of work: build the model with the chosen method, train with AdamW and a linear warmup/decay
schedule through accelerate, evaluate every epoch (and every ``train.eval_steps``), and keep the run
folder current after every evaluation: ``metrics.json`` (status ``running`` until the end),
``train_log.jsonl`` (one line per evaluation), ``config.yaml`` and the trained parameters.

Nothing is lost when a run dies: at every epoch end ``checkpoint.pt`` holds the trainable state, the
optimizer, the scheduler, every RNG and the method's own state (AdaLoRA's allocator), and a relaunch of
the same configuration continues from it and ends with the same result. A completed run of the same
configuration is not run again.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import CONF_DIR, method_options, register_resolvers, steps_of
from .errors import SubspaceTuningError, TrainingDiverged
from .resume import claim_folder, completed_metrics, config_fingerprint, data_digest, read_record, variant
from .runio import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    git_commit,
    library_versions,
    peak_memory_mb,
    save_tensors,
)

log = logging.getLogger("subspace_tuning")
CHECKPOINT = "checkpoint.pt"
LOCK_SUFFIX = ".lock"


class Run:
    """The run folder and what it records; every write is atomic and only the main process writes."""

    def __init__(self, folder: Path, cfg: DictConfig, fingerprint: str, is_main: bool = True) -> None:
        self.folder, self.cfg, self.is_main = folder, cfg, is_main
        protocol = OmegaConf.select(cfg, "protocol", default=None)
        self.metrics: dict[str, Any] = {
            "status": "running",
            "model": cfg.model.name, "task": cfg.task.name, "method": cfg.method.name,
            "rank": cfg.rank, "mpc": cfg.mpc.name, "seed": cfg.seed,
            "variant": variant(command_line_overrides()),
            "protocol": protocol.name if protocol is not None else None,
            "protocol_settings": OmegaConf.to_container(protocol, resolve=True) if protocol is not None else None,
            "metric": cfg.task.metrics[0], "best": None, "last": None, "history": [],
            "config_fingerprint": fingerprint, "data_fingerprint": data_digest(cfg),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": library_versions(), "git_commit": git_commit(),
        }
        previous = read_record(folder)
        if previous and previous.get("config_fingerprint") == fingerprint:
            # an unfinished run's evaluations stay on record until its checkpoint replaces them
            self.metrics.update({k: previous.get(k) for k in ("best", "last")}, history=previous.get("history") or [])

    def write_config(self) -> None:
        if self.is_main:
            atomic_write_text(self.folder / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))

    def update(self, **fields: Any) -> None:
        self.metrics.update(fields)
        if self.is_main:
            atomic_write_json(self.folder / "metrics.json", self.metrics)

    def log_eval(self, record: dict[str, Any]) -> None:
        self.metrics["history"].append(record)
        headline = self.metrics["metric"]
        best = self.metrics["best"]
        if best is None or record["scores"][headline] > best["scores"][headline]:
            self.metrics["best"] = record
        self.metrics["last"] = record
        if self.is_main:
            # rewritten whole (not appended) so that a resumed run's log has no duplicate lines
            atomic_write_text(self.folder / "train_log.jsonl",
                              "".join(json.dumps(r) + "\n" for r in self.metrics["history"]))
        self.update()


# --- building blocks ------------------------------------------------------------------------------
def build_optimizer(cfg: DictConfig, model: nn.Module, head_names: set[str]) -> torch.optim.Optimizer:
    """AdamW; the head may have its own lr / weight decay; 1-d parameters (biases, scales) never decay."""
    lr, decay = float(cfg.lr), float(cfg.weight_decay)
    head_lr = float(cfg.head_lr) if cfg.head_lr is not None else lr
    head_decay = float(cfg.head_weight_decay) if cfg.head_weight_decay is not None else decay
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group_lr, group_decay = (head_lr, head_decay) if name in head_names else (lr, decay)
        groups.setdefault((group_lr, group_decay if param.ndim > 1 else 0.0), []).append(param)
    param_groups = [{"params": p, "lr": g_lr, "weight_decay": g_wd} for (g_lr, g_wd), p in groups.items()]
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(cfg.betas), eps=float(cfg.eps))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, metric_names: list[str], accelerator: Any) -> dict[str, float]:
    from .metrics import compute_metrics, predictions_from_logits

    model.eval()
    logits, labels = [], []
    for batch in loader:
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        batch_logits, batch_labels = accelerator.gather_for_metrics((out.logits.float(), batch["labels"]))
        logits.append(batch_logits.cpu().numpy())
        labels.append(batch_labels.cpu().numpy())
    model.train()
    return compute_metrics(metric_names, predictions_from_logits(np.concatenate(logits)), np.concatenate(labels))


def score_names(split: str, first: bool, metrics: list[str]) -> list[str]:
    """The first evaluation split's scores keep plain names; others (MNLI mismatched) are prefixed."""
    return metrics if first else [f"{split}/{m}" for m in metrics]


def trainable_summary(counts: dict[str, int]) -> str:
    return (f"trainable parameters: method {counts['trainable']:,} ({counts['per_mille']:.2f} per mille of "
            f"{counts['total']:,}) + classification head {counts['head']:,}")


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Linear warmup then linear decay to 0 over ``total_steps`` optimizer steps; ``optim.warmup_steps`` (when
    set) wins over ``optim.warmup_ratio``, and is capped at the run's length when a user shortens it."""
    from transformers import get_linear_schedule_with_warmup

    warmup_steps = OmegaConf.select(cfg, "warmup_steps", default=None)
    warmup = int(warmup_steps) if warmup_steps is not None else int(float(cfg.warmup_ratio) * total_steps)
    return get_linear_schedule_with_warmup(optimizer, min(warmup, total_steps), total_steps)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG as tensors and plain values, so that a checkpoint loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
            "torch": torch.get_rng_state(), "data_order": generator.get_state()}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    kind, keys, pos, has_gauss, cached = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data_order"])


def read_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint's state if it belongs to this configuration, else None.

    Loaded with ``weights_only=True``: tensors and plain data only, so a crafted file cannot run code. A file that
    cannot be read that way (corrupt, truncated, or holding anything else) is moved aside to ``<name>.corrupt``
    with a warning and the run starts again."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
            raise ValueError("not a checkpoint of this runner")
    except Exception as err:  # noqa: BLE001 - whatever the reason, the file is not a usable checkpoint
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("%s could not be read as a checkpoint (%s); it was moved to %s and the run starts again",
                    path, reason[:200], aside)
        return None
    return state if state["fingerprint"] == fingerprint else None


def check_finite_parameters(model: nn.Module, step: int) -> None:
    """A model with a non-finite trained value is not a result."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise TrainingDiverged(f"the trained parameter {name} holds non-finite values at step {step}; "
                                   "try a lower optim.lr")


@dataclass
class Progress:
    """Where training stands: restored from a checkpoint on resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    train_time: float = 0.0  # seconds spent in training steps (not evaluation)


# --- the recipe ---------------------------------------------------------------------------------
def train(cfg: DictConfig, folder: Path) -> dict[str, Any]:
    """Train one configuration and record it in ``folder``. Returns the final metrics."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .architectures import head_parameter_names
    from .data import build_dataloaders
    from .methods import build_method
    from .metrics import check_metrics
    from .models import build_model, load_tokenizer
    from .params import count_parameters

    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    # step_scheduler_with_optimizer=False: accelerate would otherwise step the schedule once per process for
    # every optimizer step, while total_steps here counts optimizer steps (data-parallel runs would decay the
    # learning rate num_processes times too fast)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=bool(cfg.train.cpu),
                              step_scheduler_with_optimizer=False)
    fingerprint = config_fingerprint(cfg)
    run = Run(folder, cfg, fingerprint, accelerator.is_main_process)
    run.write_config()
    start = time.perf_counter()
    try:
        check_metrics(cfg.task.metrics)
        method = build_method(cfg.method.name, method_options(cfg), cfg.rank, OmegaConf.to_container(cfg.mpc))
        run.update(rank=method.rank)  # rank-free methods are recorded without one
        set_seed(int(cfg.seed))
        tokenizer = load_tokenizer(cfg.model)
        train_loader, eval_loaders = build_dataloaders(cfg, tokenizer)
        model = build_model(cfg.model, int(cfg.task.num_labels), tokenizer)
        total = sum(p.numel() for p in model.parameters())
        method.apply(model)
        counts = count_parameters(model, method, total)
        log.info(trainable_summary(counts))
        run.update(parameters=counts)

        optimizer = build_optimizer(cfg.optim, model, head_parameter_names(model))
        steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes)
        total_steps = int(cfg.train.epochs) * steps_per_epoch
        if cfg.train.max_steps is not None:
            total_steps = min(total_steps, int(cfg.train.max_steps))
        scheduler = build_scheduler(cfg.optim, optimizer, total_steps)
        eval_every = steps_of(cfg.train.eval_steps, total_steps)
        data_order = train_loader.generator
        model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
        eval_loaders = {split: accelerator.prepare(loader) for split, loader in eval_loaders.items()}
        raw_model = accelerator.unwrap_model(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        metric_names = list(cfg.task.metrics)
        progress = Progress()

        checkpoint_path = folder / CHECKPOINT
        state = read_checkpoint(checkpoint_path, fingerprint) if cfg.train.checkpoint else None
        if state is not None:
            method.load_state_dict(raw_model, state["trained"])
            method.load_checkpoint_state(raw_model, state["method"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"], data_order)
            progress = Progress(**state["progress"])
            run.metrics.update(state["metrics"], status="running")
            log.info("resuming from %s after epoch %d (step %d)", checkpoint_path, progress.epoch, progress.step)
        else:
            run.metrics.update(best=None, last=None, history=[])  # starting over: earlier records are superseded

        def evaluate_all(step: int, train_loss: float, regs: dict[str, float]) -> None:
            check_finite_parameters(raw_model, step)
            scores: dict[str, float] = {}
            for i, (split, loader) in enumerate(eval_loaders.items()):
                split_scores = evaluate(model, loader, metric_names, accelerator)
                scores.update(zip(score_names(split, i == 0, metric_names), split_scores.values(), strict=True))
            bad = [name for name, value in scores.items() if not math.isfinite(value)]
            if bad:
                raise TrainingDiverged(f"the evaluation score {bad[0]} is {scores[bad[0]]} at step {step}; the model "
                                       "predicts non-finite values (try a lower optim.lr)")
            record = {"epoch": round(step / steps_per_epoch, 4), "step": step, "train_loss": train_loss,
                      "regularizers": regs, "lr": scheduler.get_last_lr()[0], "scores": scores,
                      "elapsed_s": round(progress.train_time, 2)}
            run.log_eval(record)
            tqdm.write(f"eval epoch {record['epoch']:.2f} step {step}: "
                       + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))

        def save_checkpoint() -> None:
            if not (cfg.train.checkpoint and accelerator.is_main_process):
                return
            state = {"fingerprint": fingerprint, "trained": method.state_dict(raw_model),
                     "method": method.checkpoint_state(raw_model), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": rng_state(data_order),
                     "progress": vars(progress), "metrics": {k: run.metrics[k] for k in ("best", "last", "history")}}
            atomic_write(checkpoint_path, lambda handle: torch.save(state, handle))

        bar = tqdm(total=total_steps, initial=progress.step, desc=f"{cfg.method.name} {cfg.task.name}", unit="step",
                   disable=not (cfg.train.progress and accelerator.is_local_main_process), dynamic_ncols=True)
        def unfinished() -> bool:
            return progress.epoch < int(cfg.train.epochs) and progress.step < total_steps

        model.train()
        while unfinished():
            tick = time.perf_counter()
            loss_sum, reg_sums, n = 0.0, {}, 0
            for batch in train_loader:
                task_loss = model(**batch).loss
                regs = method.regularizers(raw_model)
                loss = task_loss + sum(regs.values()) if regs else task_loss
                where = f"at step {progress.step + 1} (epoch {progress.epoch + 1})"
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"the loss became {loss.item()} {where}; try a lower optim.lr "
                                           f"(now {cfg.optim.lr})")
                accelerator.backward(loss)
                grad_norm = accelerator.clip_grad_norm_(trainable, float(cfg.optim.max_grad_norm or math.inf))
                if grad_norm is not None and not torch.isfinite(grad_norm):
                    raise TrainingDiverged(f"the gradient norm became {float(grad_norm)} {where}; try a lower "
                                           f"optim.lr (now {cfg.optim.lr}) or mixed_precision=no")
                lr = scheduler.get_last_lr()[0]
                if not math.isfinite(lr):
                    raise TrainingDiverged(f"the learning rate became {lr} {where}")
                optimizer.step()
                scheduler.step()
                progress.step += 1
                method.after_optimizer_step(raw_model, progress.step, total_steps)  # gradients still there
                optimizer.zero_grad(set_to_none=True)

                loss_sum, n = loss_sum + task_loss.item(), n + 1
                for name, value in regs.items():
                    reg_sums[name] = reg_sums.get(name, 0.0) + value.item()
                bar.update(1)
                if progress.step % int(cfg.train.log_every) == 0:
                    bar.set_postfix(loss=f"{loss_sum / n:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                at_end = progress.step >= total_steps
                if eval_every and progress.step % eval_every == 0 and not at_end:
                    progress.train_time += time.perf_counter() - tick
                    evaluate_all(progress.step, loss_sum / n, {k: v / n for k, v in reg_sums.items()})
                    tick = time.perf_counter()
                if at_end:
                    break
            progress.train_time += time.perf_counter() - tick
            progress.epoch += 1
            n = max(n, 1)
            evaluate_all(progress.step, loss_sum / n, {k: v / n for k, v in reg_sums.items()})
            if unfinished():
                save_checkpoint()  # not after the last epoch: metrics.json, written next, holds the result
        bar.close()

        if cfg.train.save_trained and accelerator.is_main_process:
            save_tensors(folder / "trained.safetensors", method.state_dict(raw_model),
                         metadata={"method": cfg.method.name, "rank": str(method.rank)})
        run.update(status="completed", steps=progress.step, wall_time_s=round(time.perf_counter() - start, 2),
                   train_time_s=round(progress.train_time, 2),
                   train_steps_per_s=round(progress.step / max(progress.train_time, 1e-9), 4),
                   memory=peak_memory_mb(accelerator.device), method_summary=method.summary(raw_model))
        if accelerator.is_main_process:
            checkpoint_path.unlink(missing_ok=True)  # the run is complete: its result is in metrics.json
        headline = run.metrics["metric"]
        log.info("done: best %s %.4f (epoch %s), last %.4f; results in %s", headline,
                 run.metrics["best"]["scores"][headline], run.metrics["best"]["epoch"],
                 run.metrics["last"]["scores"][headline], folder)
        return run.metrics
    except BaseException as err:  # whatever stops the run, metrics.json says so (Ctrl-C included)
        run.update(status="failed", error=str(err) or repr(err), error_type=type(err).__name__,
                   wall_time_s=round(time.perf_counter() - start, 2))
        raise


def train_or_skip(cfg: DictConfig, folder: Path) -> dict[str, Any]:
    """Train, unless ``folder`` already holds a completed run of this configuration.

    Checks every setting before anything is written, and holds a lock on the folder while it runs: a second
    launch of the same run stops at once with a message instead of writing over the first."""
    from filelock import FileLock, Timeout

    from .runio import ensure_writable_dir
    from .validate import validate_settings

    cfg = validate_settings(cfg)
    ensure_writable_dir(folder)
    if not is_main_process():  # data-parallel: the main process owns the folder, the others follow it
        return completed_metrics(folder, config_fingerprint(cfg)) or train(cfg, folder)
    lock_path = folder.with_name(folder.name + LOCK_SUFFIX)
    try:
        with FileLock(lock_path, timeout=0):
            done = claim_folder(folder, cfg, config_fingerprint(cfg))
            if done is not None:
                log.info("already complete, not run again: %s", folder)
                return done
            return train(cfg, folder)
    except Timeout:
        raise RunLocked(f"another process is running this configuration in {folder} (it holds {lock_path}); this "
                        "launch stops so as not to write over it. Wait for that run to finish and relaunch to pick "
                        "up its result. The lock is released when that process ends, even if it is killed, so a "
                        "lock file left behind by a crash does not block a later launch.") from None


class RunLocked(SubspaceTuningError):
    """Another process is running the same configuration in the same folder."""


def is_main_process() -> bool:
    """Whether this is the main process of a data-parallel launch (torchrun / accelerate set RANK)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def command_line_overrides() -> list[str]:
    """The overrides this run was launched with (none outside Hydra, e.g. in tests and tools)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # HydraConfig was not set: not launched through Hydra
        return []



# --- command line ---------------------------------------------------------------------------------
def _hydra_task(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    try:
        metrics = train_or_skip(cfg, folder)
    except SubspaceTuningError as err:
        print(f"\nerror: {err}\n(run folder: {folder})", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return None  # one bad run of a sweep is recorded as failed; the sweep goes on
        sys.exit(2)
    headline = metrics["metric"]
    print(f"{cfg.task.name} {headline}: best {metrics['best']['scores'][headline]:.4f}, "
          f"last {metrics['last']['scores'][headline]:.4f} -> {folder / 'metrics.json'}")
    return metrics["best"]["scores"][headline]


def main() -> None:
    """Console entry point (``python train.py`` and ``subspace-tuning-train``)."""
    import hydra

    register_resolvers()
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_hydra_task)()


if __name__ == "__main__":
    main()
