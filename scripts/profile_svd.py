"""Where the SVD set-up of SAM-PARSER / SVDiff / Spectral Adapter spends its time, per target shape.

    python scripts/profile_svd.py                        # roberta-large: 24 layers x 6 targets
    python scripts/profile_svd.py --model roberta-base --threads 1

For each distinct target shape (out x in) of the model, one batched call over a few random matrices of that
shape, per matrix: LAPACK's gesdd on W as it is and through W^T, ``batched_svds`` (what the methods run), and
``eigh`` of the Gram matrix (a lower bound of any dense full-spectrum method, not used: it squares the
condition number); then the whole model's estimate, and reading the same factors back from the SVD cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from subspace_tuning.architectures import find_targets
from subspace_tuning.cli import ArgumentParser, fail, named_model_yaml, positive_int
from subspace_tuning.config import model_yaml
from subspace_tuning.errors import SubspaceTuningError
from subspace_tuning.methods.reconstruction.spectral import batched_svds
from subspace_tuning.models import architecture_config
from subspace_tuning.runio import load_tensors, save_tensors


def target_shapes(model: str) -> Counter[tuple[int, int]]:
    """(out, in) -> count over the model's linear targets (on the meta device: nothing is allocated)."""
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        meta = AutoModelForSequenceClassification.from_config(architecture_config(model_yaml(model), 2))
    return Counter(tuple(meta.get_submodule(t.name).weight.shape) for t in find_targets(meta))


def seconds_per_matrix(fn: Callable[[torch.Tensor], object], stack: torch.Tensor) -> float:
    fn(stack[:1])  # warm-up: LAPACK workspaces, thread pool
    start = time.perf_counter()
    fn(stack)
    return (time.perf_counter() - start) / stack.shape[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser("python scripts/profile_svd.py", __doc__)
    parser.add_argument("--model", default="roberta-large", metavar="NAME",
                        help="a model of conf/model/, by name (random weights; default roberta-large)")
    parser.add_argument("--batch", type=positive_int, default=4, help="matrices timed per shape (default 4)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        named_model_yaml(args.model)  # models come from conf/model/ only
    except SubspaceTuningError as err:
        fail(err, 1)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    methods = {
        "gesdd W": lambda w: torch.linalg.svd(w, full_matrices=False),
        "gesdd W^T": lambda w: torch.linalg.svd(w.mT, full_matrices=False),
        "thin_svds": lambda w: batched_svds(list(w)),  # what the methods run: the faster of the two
        "eigh Gram": lambda w: torch.linalg.eigh(w.mT @ w if w.shape[-2] >= w.shape[-1] else w @ w.mT),
    }
    shapes = target_shapes(args.model)
    print(f"{args.model}: {sum(shapes.values())} targets, {torch.get_num_threads()} threads, float32")
    print(f"{'shape (out x in)':<18} {'count':>5} " + " ".join(f"{name + ' s':>12}" for name in methods)
          + f" {'cache read s':>12}")
    totals = Counter()
    with tempfile.TemporaryDirectory() as folder:
        for (out_features, in_features), count in shapes.items():
            stack = torch.randn(args.batch, out_features, in_features) / out_features**0.5
            times = {name: seconds_per_matrix(fn, stack) for name, fn in methods.items()}
            u, s, vh = torch.linalg.svd(stack[0], full_matrices=False)
            path = Path(folder) / "factors.safetensors"
            save_tensors(path, {"U": u, "S": s, "Vh": vh})
            start = time.perf_counter()
            load_tensors(path)
            times["cache read"] = time.perf_counter() - start
            for name, seconds in times.items():
                totals[name] += seconds * count
            print(f"{out_features:>6} x {in_features:<9} {count:>5} "
                  + " ".join(f"{times[name]:>12.3f}" for name in methods) + f" {times['cache read']:>12.3f}")
    print("whole model (s): " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in totals.items()))


if __name__ == "__main__":
    main()
