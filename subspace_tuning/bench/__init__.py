"""Speed and memory of every method against full fine-tuning, the frozen-backbone floor and Hugging Face PEFT.

    python -m subspace_tuning.bench                                   # roberta-base dims, batch 8, length 128
    python -m subspace_tuning.bench --methods lora,dora --repeats 5 --json bench.json
    python -m subspace_tuning.bench --device cuda --svd-model roberta-large

The model is built from ``conf/model/<name>.yaml`` with random weights (nothing is downloaded). The package, one
module per job (docs/benchmarks.md has the results):

- ``rows``: which rows exist (frozen backbone, full fine-tuning, each method, its PEFT twin) and how each is
  built; the training step (``subspace_tuning.step.training_step``); ``peft_rows``: the PEFT configs.
- ``timing``: after ``--warmup`` untimed steps, interleaved train-step and eval rounds anchored on the frozen row,
  merged against plain inference, paired ratios; ``svd_setup``: ``--svd-model``'s set-up times.
- ``memory``: each row's peak memory in one step; ``report``: the JSON record, the targets, the table;
  ``runner``: the phases in order; ``cli``: the command line.
"""

from .cli import main, parse_args

__all__ = ["main", "parse_args"]
