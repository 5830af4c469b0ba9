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

import gc
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINT, read_checkpoint, rng_state, set_rng_state, write_checkpoint
from .config import CONF_DIR, method_options, register_resolvers, steps_of
from .errors import ConfigError, SubspaceTuningError, TrainingDiverged
from .resume import claim_folder, completed_metrics, config_fingerprint, data_digest, flatten, read_record, variant
from .runio import (
    atomic_write_json,
    atomic_write_text,
    git_commit,
    library_versions,
    peak_memory_mb,
    save_tensors,
)
from .step import StepResult, apply_step, forward_backward

log = logging.getLogger("subspace_tuning")
LOCK_SUFFIX = ".lock"
TRACKER_DIR = "tracker"  # train.log_with: the trackers that write files write them in <run folder>/tracker/


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

    def log_eval(self, record: dict[str, Any], predictions: dict[str, Any] | None = None) -> None:
        """Record one evaluation. ``predictions`` (``metrics.prediction_summary`` of the headline score's split)
        decides ``record["degenerate"]`` (every dev prediction one class, or constant: issue 17 part 7), kept with
        ``record["predictions"]`` (the majority class and its share, or the predictions' std); ``metrics["degenerate"]``
        says it of the best and the last evaluation, and a degenerate evaluation logs a warning."""
        headline = self.metrics["metric"]
        record["scores"] = {name: float(value) for name, value in record["scores"].items()}  # plain JSON numbers
        if predictions:
            record.update(degenerate=predictions["degenerate"],
                          predictions={k: v for k, v in predictions.items() if k != "degenerate"})
            if predictions["degenerate"]:
                from .metrics import degenerate_text

                log.warning("DEGENERATE at step %s (epoch %s): %s", record["step"], record["epoch"],
                            degenerate_text(predictions))
        self.metrics["history"].append(record)
        best = self.metrics["best"]
        if best is None or record["scores"][headline] > best["scores"][headline]:
            self.metrics["best"] = record
        self.metrics["last"] = record
        self.metrics["degenerate"] = {which: self.metrics[which].get("degenerate") for which in ("best", "last")}
        if self.is_main:
            # rewritten whole (not appended) so that a resumed run's log has no duplicate lines
            atomic_write_text(self.folder / "train_log.jsonl",
                              "".join(json.dumps(r) + "\n" for r in self.metrics["history"]))
        self.update()


# --- building blocks ------------------------------------------------------------------------------
def resolve_mixed_precision(setting: str) -> str:
    """``auto``: bf16 autocast on a GPU that supports it, else full precision; other values as given."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


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
    on_gpu = all(p.is_cuda for group in groups.values() for p in group)
    # the fused CUDA kernel updates every parameter in one launch; elsewhere torch's default (foreach)
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(cfg.betas), eps=float(cfg.eps),
                             fused=True if on_gpu else None)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, metric_names: list[str],
             accelerator: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """The scores of ``loader``'s split, and the summary of its predictions (``metrics.prediction_summary``: whether
    they were degenerate, one class or constant)."""
    from .metrics import compute_metrics, prediction_summary, predictions_from_logits

    model.eval()
    logits, labels = [], []
    for batch in loader:
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        batch_logits, batch_labels = accelerator.gather_for_metrics((out.logits.float(), batch["labels"]))
        logits.append(batch_logits.cpu().numpy())
        labels.append(batch_labels.cpu().numpy())
    model.train()
    all_logits, all_labels = np.concatenate(logits), np.concatenate(labels)
    predictions = predictions_from_logits(all_logits)
    summary = prediction_summary(predictions, all_labels, regression=all_logits.shape[-1] == 1)
    return compute_metrics(metric_names, predictions, all_labels), summary


def degenerate_note(metrics: dict[str, Any]) -> str:
    """' (DEGENERATE best/last: ...)' for a run whose best or last evaluation predicted one class or a constant."""
    which = [name for name, flag in (metrics.get("degenerate") or {}).items() if flag]
    return f" (DEGENERATE {'/'.join(which)}: one class or a constant on dev, not a learned result)" if which else ""


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


def check_finite_parameters(model: nn.Module, step: int) -> None:
    """A model with a non-finite trained value is not a result."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise TrainingDiverged(f"the trained parameter {name} holds non-finite values at step {step}; "
                                   "try a lower optim.lr")


def train_setting(cfg: DictConfig, key: str, default: Any) -> Any:
    """``train.<key>``, or ``default`` for a config written before the setting existed (validate.py: optional)."""
    return OmegaConf.select(cfg, f"train.{key}", default=default)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in backward instead of keeping them (memory for time; the same numbers).

    Non-reentrant (torch.utils.checkpoint with use_reentrant=False): the reentrant variant gives no gradient to
    the parameters inside a layer whose inputs do not require one, which with frozen embeddings (every PEFT method)
    is every layer, unless a hook makes the embeddings' output require one; non-reentrant needs no such hook."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing=true is not possible with {type(model).__name__}: its "
                          "transformers implementation does not support activation checkpointing; run with "
                          "train.gradient_checkpointing=false.")
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers' new name for it
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_unsupported(device: torch.device) -> str | None:
    """Why torch.compile cannot run on ``device`` here (no C++ compiler, an unsupported Python, ...), or None.

    A one-line function is compiled and run: compilation is lazy, so a model would only fail at its first step."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2, device=device))
    except Exception as err:  # noqa: BLE001 - whatever the cause, compiling does not work here
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return None


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(model)`` (train.compile=true), or ``model`` itself, with a warning saying why, where
    torch.compile does not work on this machine: the run is the same computation either way."""
    reason = compile_unsupported(device)
    if reason is not None:
        log.warning("train.compile=true, but torch.compile does not work on this machine (%s); training without it",
                    reason)
        return model
    return torch.compile(model)


@dataclass
class Progress:
    """Where training stands: restored from a checkpoint on resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    train_time: float = 0.0  # seconds spent in training steps (not evaluation)
    eval_time: float = 0.0  # seconds spent evaluating


@dataclass
class Running:
    """Sums over the epoch so far, for the logged averages (device tensors: read once per log or evaluation)."""

    loss: torch.Tensor | float = 0.0
    regularizers: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    finite: torch.Tensor | bool = True  # every loss and gradient norm since the last check was finite

    def add(self, result: StepResult) -> None:
        self.loss = self.loss + result.task_loss.double()
        for name, value in result.regularizers.items():
            self.regularizers[name] = self.regularizers.get(name, 0.0) + value.double()
        self.steps += 1
        total = result.task_loss + sum(result.regularizers.values())
        self.finite = torch.isfinite(total) & self.finite
        if result.grad_norm is not None:
            self.finite = torch.isfinite(result.grad_norm) & self.finite

    def check_finite(self, step: int, since: int) -> None:
        """Raise if a loss or gradient norm of steps ``since``..``step`` was non-finite (one read-back)."""
        if not bool(self.finite):
            raise TrainingDiverged(f"the loss or the gradient norm became non-finite between steps {since} and "
                                   f"{step}; try a lower optim.lr or train.mixed_precision=no")
        self.finite = True

    def means(self) -> tuple[float, dict[str, float]]:
        n = max(self.steps, 1)
        return float(self.loss) / n, {k: float(v) / n for k, v in self.regularizers.items()}


# --- the recipe: set-up, resume, train, evaluate, checkpoint, finish ------------------------------
class Recipe:
    """Fine-tune one configuration into one run folder; ``run()`` goes through the phases in order."""

    def __init__(self, cfg: DictConfig, folder: Path) -> None:
        self.cfg, self.folder = cfg, folder
        self.fingerprint = config_fingerprint(cfg)
        self.progress = Progress()
        self.tracking, self.tracks_ranks, self.stopped = False, True, False

    # --- set-up -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Accelerator, run record, method, data, model, optimizer and schedule."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from .architectures import head_parameter_names
        from .data import build_dataloaders
        from .methods import build_method
        from .metrics import check_metrics
        from .models import build_model, load_tokenizer
        from .params import count_parameters

        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(int(cfg.train.threads))
        # step_scheduler_with_optimizer=False: accelerate would otherwise step the schedule once per process for
        # every optimizer step, while total_steps counts optimizer steps (data-parallel runs would decay the
        # learning rate num_processes times too fast). gradient_accumulation_steps: accelerate's accumulate()
        # ends a group every k micro-batches and at the end of the data (the last, partial group still steps).
        self.accum = int(train_setting(cfg, "grad_accum_steps", 1))
        log_with = train_setting(cfg, "log_with", None)
        trackers = {"log_with": log_with if isinstance(log_with, str) else list(log_with),
                    "project_dir": str(self.folder / TRACKER_DIR)} if log_with else {}
        self.accelerator = Accelerator(mixed_precision=resolve_mixed_precision(str(cfg.train.mixed_precision)),
                                       cpu=bool(cfg.train.cpu), step_scheduler_with_optimizer=False,
                                       gradient_accumulation_steps=self.accum, **trackers)
        if self.accelerator.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: fp32 range, ~10 bits of mantissa
            torch.backends.cudnn.allow_tf32 = True
        # finiteness is checked every step on the CPU (free) and every log_every steps on a GPU, where reading a
        # value back waits for the device
        self.check_every = 1 if self.accelerator.device.type == "cpu" else int(cfg.train.log_every)
        self.run = Run(self.folder, cfg, self.fingerprint, self.accelerator.is_main_process)
        self.run.write_config()
        self.start_trackers()
        check_metrics(cfg.task.metrics)
        self.method = build_method(cfg.method.name, method_options(cfg), cfg.rank,
                                   OmegaConf.to_container(cfg.mpc, resolve=True))
        self.run.update(rank=self.method.rank)  # rank-free methods are recorded without one
        set_seed(int(cfg.seed))
        tokenizer = load_tokenizer(cfg.model)
        train_loader, eval_loaders = build_dataloaders(cfg, tokenizer)
        model = build_model(cfg.model, int(cfg.task.num_labels), tokenizer)
        total = sum(p.numel() for p in model.parameters())
        self.method.apply(model)
        if train_setting(cfg, "gradient_checkpointing", False):
            enable_gradient_checkpointing(model)
        counts = count_parameters(model, self.method, total)
        log.info(trainable_summary(counts))
        self.run.update(parameters=counts)

        model.to(self.accelerator.device)  # before the optimizer, so that it can pick the device's kernel
        optimizer = build_optimizer(cfg.optim, model, head_parameter_names(model))
        # optimizer steps: every grad_accum_steps micro-batches, and one for a last, partial group of an epoch
        self.steps_per_epoch = math.ceil(math.ceil(len(train_loader) / self.accelerator.num_processes) / self.accum)
        self.total_steps = int(cfg.train.epochs) * self.steps_per_epoch
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, int(cfg.train.max_steps))
        scheduler = build_scheduler(cfg.optim, optimizer, self.total_steps)
        self.eval_every = steps_of(cfg.train.eval_steps, self.total_steps)
        self.data_order = train_loader.generator
        self.model, self.optimizer, self.train_loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, train_loader, scheduler)
        self.eval_loaders = {split: self.accelerator.prepare(loader) for split, loader in eval_loaders.items()}
        self.raw_model = self.accelerator.unwrap_model(self.model)
        if train_setting(cfg, "compile", False):
            self.model = compile_model(self.model, self.accelerator.device)  # raw_model stays the plain module
            self.run.update(compiled=self.model is not self.raw_model)  # False where it fell back to eager
        self.checkpoint_path = self.folder / CHECKPOINT

    # --- resume -----------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the epoch checkpoint of this configuration, if there is one."""
        state = read_checkpoint(self.checkpoint_path, self.fingerprint) if self.cfg.train.checkpoint else None
        if state is None:
            self.run.metrics.update(best=None, last=None, history=[])  # starting over: earlier records superseded
            return
        self.method.load_state_dict(self.raw_model, state["trained"])
        self.method.load_checkpoint_state(self.raw_model, state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.data_order)
        self.progress = Progress(**state["progress"])
        self.run.metrics.update(state["metrics"], status="running")
        log.info("resuming from %s after epoch %d (step %d)", self.checkpoint_path, self.progress.epoch,
                 self.progress.step)

    # --- train ------------------------------------------------------------------------------------
    def unfinished(self) -> bool:
        return (self.progress.epoch < int(self.cfg.train.epochs) and self.progress.step < self.total_steps
                and not self.stopped)

    def loss_scale(self, index: int) -> float:
        """What micro-batch ``index`` of an epoch multiplies its loss by, on top of accelerate's 1 / k: 1, except
        in a last group of m < k micro-batches, k / m, so that every optimizer step takes its group's mean."""
        group_start = index - index % self.accum
        return self.accum / min(self.accum, len(self.train_loader) - group_start)

    def train(self) -> None:
        """Epochs of optimizer steps, evaluating every ``eval_every`` steps and at every epoch end.

        An optimizer step is ``train.grad_accum_steps`` micro-batches (accelerate's ``accumulate``); steps, the
        schedule, evaluations, checkpoints, AdaLoRA's allocator and ``train.max_steps`` count optimizer steps."""
        cfg, progress = self.cfg, self.progress
        bar = tqdm(total=self.total_steps, initial=progress.step, desc=f"{cfg.method.name} {cfg.task.name}",
                   unit="step", dynamic_ncols=True,
                   disable=not (cfg.train.progress and self.accelerator.is_local_main_process))
        max_grad_norm = float(cfg.optim.max_grad_norm) if cfg.optim.max_grad_norm else None
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # once, not every step
        log_every = int(cfg.train.log_every)
        self.model.train()
        while self.unfinished():
            tick, running, window, micro = time.perf_counter(), Running(), Running(), []
            for index, batch in enumerate(self.train_loader):
                with self.accelerator.accumulate(self.model):  # no gradient all-reduce before a group's last
                    micro.append(forward_backward(self.model, self.method, batch, progress.step + 1,
                                                  raw_model=self.raw_model, backward=self.accelerator.backward,
                                                  loss_scale=self.loss_scale(index),
                                                  check_finite=self.check_every == 1))
                if not self.accelerator.sync_gradients:
                    continue
                result = apply_step(self.model, self.method, micro, self.optimizer, progress.step + 1,
                                    self.total_steps, raw_model=self.raw_model, scheduler=self.scheduler,
                                    max_grad_norm=max_grad_norm, clip_grad_norm=self.accelerator.clip_grad_norm_,
                                    check_finite=self.check_every == 1, trainable=trainable)
                progress.step, micro = progress.step + 1, []
                running.add(result)
                window.add(result)
                if progress.step % self.check_every == 0 or progress.step >= self.total_steps:
                    running.check_finite(progress.step, progress.step - self.check_every + 1)
                bar.update(1)
                if progress.step % log_every == 0:
                    bar.set_postfix(loss=f"{running.means()[0]:.4f}", lr=f"{self.current_lr():.2e}")
                    self.track_training(window, result)
                    window = Running()
                at_end = progress.step >= self.total_steps
                if self.eval_every and progress.step % self.eval_every == 0 and not at_end:
                    progress.train_time += time.perf_counter() - tick
                    self.evaluate(*running.means())
                    tick = time.perf_counter()
                    if self.patience_exhausted():
                        break
                if at_end:
                    break
            progress.train_time += time.perf_counter() - tick
            if self.stopped:  # early stopping right after an evaluation: nothing new to evaluate
                break
            progress.epoch += 1
            self.evaluate(*running.means())
            if self.patience_exhausted() or not self.unfinished():
                break  # not checkpointed after the last evaluation: metrics.json, written next, holds the result
            self.save_checkpoint()
        bar.close()

    def patience_exhausted(self) -> bool:
        """Early stopping (``train.early_stopping_patience``, off by default: the paper reports the best evaluation
        of the full run): whether the last ``patience`` evaluations all fell short of the best one before them.
        Read from the run's record, so it holds across a resume; the first time it holds, the run says so."""
        patience = train_setting(self.cfg, "early_stopping_patience", None)
        best, history = self.run.metrics["best"], self.run.metrics["history"]
        if self.stopped or patience is None or best is None:
            return self.stopped
        since = sum(1 for record in history if record["step"] > best["step"])
        if since >= int(patience):
            self.stopped = True
            self.run.update(stopped_early={"step": self.progress.step, "epoch": history[-1]["epoch"],
                                           "patience": int(patience), "best_step": best["step"]})
            log.info("early stopping at step %d: %d evaluations without improving on step %d's %s",
                     self.progress.step, since, best["step"], self.run.metrics["metric"])
        return self.stopped

    # --- experiment tracking (train.log_with: accelerate's trackers) ---------------------------------
    def start_trackers(self) -> None:
        """Start the trackers of ``train.log_with`` with the resolved configuration (flat: dotted keys)."""
        self.tracking = bool(self.accelerator.log_with)
        if not self.tracking:
            return
        settings = flatten(OmegaConf.to_container(self.cfg, resolve=True))
        config = {key: str(value) if isinstance(value, list) else value for key, value in settings.items()}
        label = str(self.folder)
        self.accelerator.init_trackers(str(self.cfg.experiment_name), config=config, init_kwargs={
            "wandb": {"name": label, "dir": str(self.folder / TRACKER_DIR)}, "mlflow": {"run_name": label}})

    def track(self, values: dict[str, float]) -> None:
        """Log ``values`` to the trackers at the current optimizer step (the main process only)."""
        if self.tracking:
            self.accelerator.log(values, step=self.progress.step)

    def track_training(self, window: Running, last: StepResult) -> None:
        """Every ``train.log_every`` steps: the mean loss and regularisers since the last log, the learning rate,
        the last step's gradient norm and, for AdaLoRA, the ranks."""
        if not self.tracking:
            return
        loss, regularizers = window.means()
        values = {"train/loss": loss, "train/lr": self.current_lr(),
                  **{f"train/{name}": value for name, value in regularizers.items()}}
        if last.grad_norm is not None:
            values["train/grad_norm"] = float(last.grad_norm)
        self.track({**values, **self.rank_pattern()})

    def rank_pattern(self) -> dict[str, float]:
        """AdaLoRA's rank pattern now, from its summary's ``final_ranks``: the total and every module's rank
        ({} for a method without one, found out once)."""
        ranks = self.method.summary(self.raw_model).get("final_ranks") if self.tracks_ranks else None
        if not isinstance(ranks, dict):
            self.tracks_ranks = False
            return {}
        return {"rank/total": float(sum(ranks.values())), **{f"rank/{name}": float(r) for name, r in ranks.items()}}

    def current_lr(self) -> float:
        lr = self.scheduler.get_last_lr()[0]
        if not math.isfinite(lr):
            raise TrainingDiverged(f"the learning rate became {lr} at step {self.progress.step}")
        return lr

    # --- evaluate ---------------------------------------------------------------------------------
    def evaluate(self, train_loss: float, regularizers: dict[str, float]) -> None:
        """Score every evaluation split and record it (a non-finite model or score fails the run)."""
        step, started = self.progress.step, time.perf_counter()
        check_finite_parameters(self.raw_model, step)
        metric_names = list(self.cfg.task.metrics)
        scores: dict[str, float] = {}
        summaries = []
        for i, (split, loader) in enumerate(self.eval_loaders.items()):
            split_scores, summary = evaluate(self.model, loader, metric_names, self.accelerator)
            scores.update(zip(score_names(split, i == 0, metric_names), split_scores.values(), strict=True))
            summaries.append(summary)
        bad = [name for name, value in scores.items() if not math.isfinite(value)]
        if bad:
            raise TrainingDiverged(f"the evaluation score {bad[0]} is {scores[bad[0]]} at step {step}; the model "
                                   "predicts non-finite values (try a lower optim.lr)")
        record = {"epoch": round(step / self.steps_per_epoch, 4), "step": step, "train_loss": train_loss,
                  "regularizers": regularizers, "lr": self.current_lr(), "scores": scores,
                  "elapsed_s": round(self.progress.train_time, 2)}
        self.progress.eval_time += time.perf_counter() - started
        self.run.log_eval(record, predictions=summaries[0])  # the headline's split
        self.track({f"eval/{name}": float(value) for name, value in scores.items()})
        tqdm.write(f"eval epoch {record['epoch']:.2f} step {step}: "
                   + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    # --- checkpoint -------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if not (self.cfg.train.checkpoint and self.accelerator.is_main_process):
            return
        run = self.run
        write_checkpoint(self.checkpoint_path, {
            "fingerprint": self.fingerprint, "trained": self.method.state_dict(self.raw_model),
            "method": self.method.checkpoint_state(self.raw_model), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": rng_state(self.data_order),
            "progress": vars(self.progress), "metrics": {k: run.metrics[k] for k in ("best", "last", "history")}})

    # --- finish -----------------------------------------------------------------------------------
    def finish(self, wall_time_s: float) -> dict[str, Any]:
        """Save the trained parameters, mark the run completed and drop the checkpoint."""
        progress, run, main = self.progress, self.run, self.accelerator.is_main_process
        if self.cfg.train.save_trained and main:
            save_tensors(self.folder / "trained.safetensors", self.method.state_dict(self.raw_model),
                         metadata={"method": self.cfg.method.name, "rank": str(self.method.rank)})
        run.update(status="completed", steps=progress.step, wall_time_s=round(wall_time_s, 2),
                   setup_time_s=round(self.setup_time, 2), train_time_s=round(progress.train_time, 2),
                   eval_time_s=round(progress.eval_time, 2),
                   train_steps_per_s=round(progress.step / max(progress.train_time, 1e-9), 4),
                   memory=peak_memory_mb(self.accelerator.device), method_summary=self.method.summary(self.raw_model))
        if main:
            self.checkpoint_path.unlink(missing_ok=True)  # the run is complete: its result is in metrics.json
        headline = run.metrics["metric"]
        total_rank = self.rank_pattern().get("rank/total") if self.tracking else None
        self.track({f"final/best_{headline}": float(run.metrics["best"]["scores"][headline]),
                    f"final/last_{headline}": float(run.metrics["last"]["scores"][headline]),
                    "final/best_step": float(run.metrics["best"]["step"]),
                    "final/train_steps_per_s": float(run.metrics["train_steps_per_s"]),
                    **({"final/total_rank": total_rank} if total_rank is not None else {})})
        log.info("done: best %s %.4f (epoch %s), last %.4f%s; results in %s", headline,
                 run.metrics["best"]["scores"][headline], run.metrics["best"]["epoch"],
                 run.metrics["last"]["scores"][headline], degenerate_note(run.metrics), self.folder)
        return run.metrics

    # --- all phases, with the failure record ------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            with collector_paused():
                self.setup()
                self.resume()
            # model, data and optimizer ready (this launch's; imports before it are the process's)
            self.setup_time = time.perf_counter() - start
            self.train()
            return self.finish(time.perf_counter() - start)
        except BaseException as err:  # whatever stops the run, metrics.json says so (Ctrl-C included)
            if hasattr(self, "run"):
                self.run.update(status="failed", error=str(err) or repr(err), error_type=type(err).__name__,
                                wall_time_s=round(time.perf_counter() - start, 2))
            raise
        finally:
            gc.unfreeze()  # what this run set up can be collected once it is gone (a sweep's next run)
            if self.tracking:
                self.accelerator.end_training()  # flushes and closes every tracker


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a run sets up, then every object alive (the imported modules,
    the model, the data) frozen out of its passes while the run trains (``gc.freeze``, Python's gc module docs).

    Why: torch, transformers and datasets leave millions of long-lived objects, and every full pass of the
    collector walks all of them (0.1-0.2 s each on a 2-core CPU, about eight in a short run, mostly while importing
    and reading a task's TSV). Set-up creates few reference cycles, and those are collected after the run
    (``gc.unfreeze`` in ``run_all``). docs/benchmarks.md measures the effect."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def train(cfg: DictConfig, folder: Path) -> dict[str, Any]:
    """Train one configuration and record it in ``folder``. Returns the final metrics."""
    return Recipe(cfg, folder).run_all()


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
    finally:
        gc.enable()  # main() paused it until a run's set-up; a run skipped or refused before that turns it on
    headline = metrics["metric"]
    print(f"{cfg.task.name} {headline}: best {metrics['best']['scores'][headline]:.4f}, "
          f"last {metrics['last']['scores'][headline]:.4f}{degenerate_note(metrics)} -> {folder / 'metrics.json'}")
    return metrics["best"]["scores"][headline]


def main() -> None:
    """Console entry point (``python train.py`` and ``subspace-tuning-train``)."""
    import hydra

    gc.disable()  # the start-up's imports and composition too, like a run's set-up (collector_paused)
    try:
        register_resolvers()
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_hydra_task)()
    finally:
        gc.freeze()  # the interpreter's last collection at exit need not walk every module's objects (~0.5 s)


if __name__ == "__main__":
    main()
