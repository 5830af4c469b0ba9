"""Reconstruction methods: phi(W) = f(W) rescales or reshapes the frozen weight's own subspaces."""
