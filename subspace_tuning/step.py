"""One optimizer step of any method: the training recipe, the benchmark and the tests all take it from here.

forward (task loss) -> the method's regularisers (MPC, kept apart from the task loss) -> backward ->
gradient clipping -> optimizer step -> learning-rate schedule -> the method's hook (AdaLoRA allocates while
the gradients are still there) -> zero the gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import TrainingDiverged


@dataclass
class StepResult:
    """What one step computed; tensors stay on the device (read them with ``.item()`` when logging)."""

    task_loss: torch.Tensor
    regularizers: dict[str, torch.Tensor]
    grad_norm: torch.Tensor | None


def loss_backward(loss: torch.Tensor) -> None:
    loss.backward()


def training_step(model: nn.Module, method: Any, batch: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                  step: int, total_steps: int, *, raw_model: nn.Module | None = None, scheduler: Any = None,
                  max_grad_norm: float | None = None, backward: Callable[[torch.Tensor], None] = loss_backward,
                  clip_grad_norm: Callable[..., torch.Tensor] = torch.nn.utils.clip_grad_norm_,
                  check_finite: bool = True, trainable: list[torch.Tensor] | None = None) -> StepResult:
    """Optimizer step number ``step`` (counted from 1) of ``total_steps``.

    ``raw_model`` is the unwrapped model the method reads (``model`` may be wrapped for data parallelism);
    ``backward`` and ``clip_grad_norm`` default to torch's and take accelerate's in the recipe (mixed
    precision). ``check_finite`` stops the run at a non-finite loss or gradient norm, saying where. ``trainable``
    (the parameters that train) spares a walk over the whole model every step when the caller has it."""
    raw_model = model if raw_model is None else raw_model
    task_loss = model(**batch).loss
    regularizers = method.regularizers(raw_model)
    loss = task_loss + sum(regularizers.values()) if regularizers else task_loss
    if check_finite and not torch.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss.item()} at step {step}; try a lower optim.lr")
    backward(loss)
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
    return StepResult(task_loss.detach(), {k: v.detach() for k, v in regularizers.items()}, grad_norm)
