"""One optimizer step of any method: the training recipe, the benchmark and the tests all take it from here.

An optimizer step is one or more micro-batches (gradient accumulation, ``train.grad_accum_steps``):
``forward_backward`` for each (task loss, the method's regularisers kept apart from it, backward), then
``apply_step`` once: gradient clipping -> optimizer step -> learning-rate schedule -> the method's hook (AdaLoRA
allocates while the gradients are still there) -> zero the gradients. ``training_step`` is the two together; the
recipe calls them apart because accelerate decides, micro-batch by micro-batch, where an accumulation group ends.

Accumulation: each micro-batch's loss is scaled by 1 / (the micro-batches in its group), so the accumulated
gradient is the mean over the group, as one batch of their union would give (exactly, for equal micro-batches).
The regularisers depend on the parameters only, which do not change within a group: they are added to every
micro-batch's loss and scaled with it, so they enter the gradient once per optimizer step at full weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import TrainingDiverged

Batch = Mapping[str, torch.Tensor]


@dataclass
class StepResult:
    """What one step computed; tensors stay on the device (read them with ``.item()`` when logging)."""

    task_loss: torch.Tensor
    regularizers: dict[str, torch.Tensor]
    grad_norm: torch.Tensor | None


def loss_backward(loss: torch.Tensor) -> None:
    loss.backward()


def forward_backward(model: nn.Module, method: Any, batch: Batch, step: int, *, raw_model: nn.Module | None = None,
                     backward: Callable[[torch.Tensor], None] = loss_backward, loss_scale: float = 1.0,
                     check_finite: bool = True) -> StepResult:
    """Forward and backward of one micro-batch of optimizer step ``step``; the gradients add up until
    ``apply_step``. The loss is multiplied by ``loss_scale`` before ``backward`` (the values returned are not)."""
    raw_model = model if raw_model is None else raw_model
    task_loss = model(**batch).loss
    regularizers = method.regularizers(raw_model)
    loss = task_loss + sum(regularizers.values()) if regularizers else task_loss
    if check_finite and not torch.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss.item()} at step {step}; try a lower optim.lr")
    backward(loss * loss_scale if loss_scale != 1.0 else loss)
    return StepResult(task_loss.detach(), {k: v.detach() for k, v in regularizers.items()}, None)


def apply_step(model: nn.Module, method: Any, micro: Sequence[StepResult], optimizer: torch.optim.Optimizer,
               step: int, total_steps: int, *, raw_model: nn.Module | None = None, scheduler: Any = None,
               max_grad_norm: float | None = None,
               clip_grad_norm: Callable[..., torch.Tensor] = torch.nn.utils.clip_grad_norm_,
               check_finite: bool = True, trainable: list[torch.Tensor] | None = None) -> StepResult:
    """Optimizer step number ``step`` (counted from 1) of ``total_steps`` from the accumulated gradients of the
    micro-batches ``micro``; returns their mean losses and the gradient norm. The one place a step is taken."""
    raw_model = model if raw_model is None else raw_model
    grad_norm = None
    if max_grad_norm is not None or check_finite:
        if trainable is None:
            trainable = [p for p in model.parameters() if p.requires_grad]
        grad_norm = clip_grad_norm(trainable, float(max_grad_norm) if max_grad_norm else math.inf)
        if check_finite and grad_norm is not None and not torch.isfinite(grad_norm):
            raise TrainingDiverged(f"the gradient norm became {float(grad_norm)} at step {step}; try a lower "
                                   "optim.lr or train.mixed_precision=no")
    try:
        optimizer.step()
    except RuntimeError as err:  # e.g. an lr of 1e38 overflows inside AdamW's update
        if "overflow" not in str(err):
            raise
        raise TrainingDiverged(f"the optimizer step {step} overflowed ({err}); the learning rate is far too large "
                               "(lower optim.lr)") from None
    if scheduler is not None:
        scheduler.step()
    method.after_optimizer_step(raw_model, step, total_steps)  # gradients still there
    optimizer.zero_grad(set_to_none=True)
    if len(micro) == 1:
        return StepResult(micro[0].task_loss, micro[0].regularizers, grad_norm)
    n = len(micro)
    return StepResult(sum(m.task_loss for m in micro) / n,
                      {k: sum(m.regularizers[k] for m in micro) / n for k in micro[0].regularizers}, grad_norm)


def training_step(model: nn.Module, method: Any, batch: Batch | Sequence[Batch], optimizer: torch.optim.Optimizer,
                  step: int, total_steps: int, *, raw_model: nn.Module | None = None, scheduler: Any = None,
                  max_grad_norm: float | None = None, backward: Callable[[torch.Tensor], None] = loss_backward,
                  clip_grad_norm: Callable[..., torch.Tensor] = torch.nn.utils.clip_grad_norm_,
                  check_finite: bool = True, trainable: list[torch.Tensor] | None = None) -> StepResult:
    """Optimizer step number ``step`` (counted from 1) of ``total_steps`` on ``batch``: one batch, or a list of
    micro-batches whose gradients are accumulated (each loss scaled by 1 / their number).

    ``raw_model`` is the unwrapped model the method reads (``model`` may be wrapped for data parallelism);
    ``backward`` and ``clip_grad_norm`` default to torch's and take accelerate's in the recipe (mixed
    precision). ``check_finite`` stops the run at a non-finite loss or gradient norm, saying where. ``trainable``
    (the parameters that train) spares a walk over the whole model every step when the caller has it."""
    batches = [batch] if isinstance(batch, Mapping) else list(batch)
    micro = [forward_backward(model, method, b, step, raw_model=raw_model, backward=backward,
                              loss_scale=1.0 / len(batches), check_finite=check_finite) for b in batches]
    return apply_step(model, method, micro, optimizer, step, total_steps, raw_model=raw_model, scheduler=scheduler,
                      max_grad_norm=max_grad_norm, clip_grad_norm=clip_grad_norm, check_finite=check_finite,
                      trainable=trainable)
