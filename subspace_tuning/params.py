"""The parameter table: trainable parameters of every registered method and rank, on the meta device.

    python -m subspace_tuning.params --model roberta-base            # a text table
    python -m subspace_tuning.params --model roberta-large --format json

Options: ``--model NAME``, a model of ``conf/model/`` named without ``.yaml`` (default roberta-base);
``--format table|json`` (default table).

No weights are materialised and nothing is downloaded: the model is built from the dimensions in
``conf/model/<name>.yaml``. "trainable" is the method's own parameters (the classification head is
always trained and not counted, as in the paper); full fine-tuning counts everything. "per_mille" is
trainable / all parameters of the plain ForSequenceClassification model (the paper's %Params column).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from .cli import ArgumentParser, fail, named_model_yaml
from .errors import SubspaceTuningError

if TYPE_CHECKING:
    from torch import nn

RANKS = (2, 4, 8, 16)
FORMATS = ("table", "json")


def count_parameters(model: nn.Module, method: Any, total: int) -> dict[str, int | float]:
    """Trainable parameters of an adapted ``model``; ``total`` counts the model before adaptation."""
    from .architectures import head_parameter_names

    head_names = head_parameter_names(model)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    head = sum(v for n, v in trainable.items() if n in head_names)
    own = sum(trainable.values()) if method.family == "reference" else sum(trainable.values()) - head
    return {"trainable": own, "head": head, "total": total, "per_mille": 1000 * own / total}


def table_rows(model_name: str, methods: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per registered method (or each of ``methods``) and rank (one row for rank-free methods)."""
    model_config = named_model_yaml(model_name)  # before the heavy imports: a wrong name is answered at once

    import torch
    from transformers import AutoModelForSequenceClassification

    from .methods import REGISTRY, build_method, load_all
    from .methods.defaults import method_defaults
    from .models import architecture_config

    config = architecture_config(model_config)
    load_all()
    rows = []
    for name, cls in REGISTRY.items():
        if methods is not None and name not in methods:
            continue
        options = method_defaults(name)
        for rank in RANKS if cls.uses_rank else (None,):
            with torch.device("meta"):
                model = AutoModelForSequenceClassification.from_config(config)
            total = sum(p.numel() for p in model.parameters())
            method = build_method(name, options, rank)
            method.apply(model)
            counts = count_parameters(model, method, total)
            rows.append({"method": name, "rank": rank, "trainable": counts["trainable"], "total": total,
                         "per_mille": round(counts["per_mille"], 4)})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<16} {'rank':>5} {'trainable':>13} {'total':>13} {'per mille':>10}"]
    for row in rows:
        rank = "-" if row["rank"] is None else row["rank"]
        lines.append(f"{row['method']:<16} {rank:>5} {row['trainable']:>13,} {row['total']:>13,} "
                     f"{row['per_mille']:>10.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("python -m subspace_tuning.params", __doc__)
    parser.add_argument("--model", default="roberta-base", metavar="NAME",
                        help="a model of conf/model/, by its file name without .yaml (default roberta-base)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="a text table (default) or JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a command-line mistake exits 2, an unknown model 1, each with one paragraph."""
    args = parse_args(argv)
    try:
        rows = table_rows(args.model)
    except SubspaceTuningError as err:
        fail(err, 1)
    print(json.dumps(rows, indent=1) if args.format == "json" else format_table(rows))


if __name__ == "__main__":
    main()
