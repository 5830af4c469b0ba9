"""subspace-tuning: every PEFT method of the subspace-tuning paper (arXiv 2407.05417) on GLUE.

Layout mirrors the paper's taxonomy phi(W) = g(f(W)):
``methods.reconstruction`` (f: rescale / reshape W's own subspaces), ``methods.extension``
(g: add a new subspace dW) and ``methods.combination`` (both).
"""

__version__ = "0.1.0"
