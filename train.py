"""Entry point: `python train.py model=... task=... method=... rank=... seed=...` (see README.md)."""

if __name__ == "__main__":
    import gc

    gc.disable()  # from the first import on: subspace_tuning.train.main says why, and turns it back on

    from subspace_tuning.train import main

    main()
