"""The parameter table: trainable parameters of every registered method and rank, on the meta device.

    python -m subspace_tuning.params model=roberta-base            # a text table
    python -m subspace_tuning.params model=roberta-large format=json

No weights are materialised and nothing is downloaded: the model is built from the dimensions in
``conf/model/<name>.yaml``. "trainable" is the method's own parameters (the classification head is
always trained and not counted, as in the paper); full fine-tuning counts everything. "per_mille" is
trainable / all parameters of the plain ForSequenceClassification model (the paper's %Params column).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from torch import nn

RANKS = (2, 4, 8, 16)


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
    import torch
    from transformers import AutoModelForSequenceClassification

    from .config import method_defaults, model_yaml
    from .methods import REGISTRY, build_method, load_all
    from .models import architecture_config

    config = architecture_config(model_yaml(model_name))
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


def main(argv: list[str] | None = None) -> None:
    from .errors import SubspaceTuningError

    args = dict(arg.split("=", 1) for arg in (sys.argv[1:] if argv is None else argv) if "=" in arg)
    unknown = set(args) - {"model", "format"}
    if unknown or args.get("format", "table") not in ("table", "json"):
        sys.exit("usage: python -m subspace_tuning.params model=<name> [format=table|json]")
    try:
        rows = table_rows(args.get("model", "roberta-base"))
    except SubspaceTuningError as err:
        sys.exit(f"error: {err}")
    print(json.dumps(rows, indent=1) if args.get("format") == "json" else format_table(rows))


if __name__ == "__main__":
    main()
