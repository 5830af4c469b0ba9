"""Speed and memory of every method against full fine-tuning, the frozen backbone and Hugging Face PEFT.

A thin entry point; the benchmark itself is the package ``subspace_tuning/bench/`` (``python -m
subspace_tuning.bench``) and takes the same options, e.g.
``python scripts/bench_methods.py --methods lora,dora --json bench.json``.
"""

from __future__ import annotations

from subspace_tuning.bench import main

if __name__ == "__main__":
    main()
