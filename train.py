"""Entry point: `python train.py model=... task=... method=... rank=... seed=...` (see README.md)."""

from subspace_tuning.train import main

if __name__ == "__main__":
    main()
