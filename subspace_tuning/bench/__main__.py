"""``python -m subspace_tuning.bench``."""

from .cli import main

main()
