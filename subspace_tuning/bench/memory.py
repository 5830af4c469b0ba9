"""Peak memory of one training step, once per row after the timing.

The bytes the row holds before a step (its model's tensors, shared backbone included, optimizer state and any
tensors kept by the method, each storage counted once) plus the highest extra allocation during one step. On CUDA
the extra is ``max_memory_allocated`` minus the allocation at the step's start; on the CPU it is the peak of the
running sum of the CPU allocator's allocations and frees that ``torch.profiler`` (``profile_memory``) records
during the step. Both count tensors (activations kept for backward, gradients, temporaries), not the allocator's
cache or library workspaces.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .rows import Row, train_step
from .timing import synchronize


def children(obj: Any) -> list[Any]:
    """What ``tensor_bytes`` looks into: a tensor's gradient, containers' items, and the attributes of modules and
    of this project's and PEFT's helper objects (e.g. AdaLoRA's importance scores, PEFT's RankAllocator)."""
    if isinstance(obj, torch.Tensor):
        return [obj.grad] if obj.grad is not None else []
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, list | tuple | set):
        return list(obj)
    if isinstance(obj, nn.Module) or type(obj).__module__.startswith(("subspace_tuning", "peft")):
        return list(vars(obj).values())
    return []


def tensor_bytes(*roots: Any) -> int:
    """Bytes of every tensor reachable from ``roots`` (see ``children``), each storage counted once."""
    sizes: dict[int, int] = {}
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            storage = obj.untyped_storage()
            sizes[storage.data_ptr()] = storage.nbytes()
        stack.extend(children(obj))
    return sum(sizes.values())


def cpu_step_peak(step: Callable[[], None]) -> int:
    """Peak of the running sum of CPU allocations minus frees during ``step`` (torch.profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def measure_memory(row: Row, batch: dict[str, Any], device: torch.device) -> None:
    """The row's ``state_bytes`` and one step's ``transient_bytes``. The training step ends with
    zero_grad(set_to_none=True), so the state holds no gradients and the step's gradients count as transient; their
    release at the step's end comes after the peak."""
    gc.collect()
    row.state_bytes = tensor_bytes(row.model, row.optimizer.state, row.method)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train_step(row, batch)
        synchronize(device)
        row.transient_bytes = torch.cuda.max_memory_allocated(device) - before
    else:
        row.transient_bytes = cpu_step_peak(lambda: train_step(row, batch))
