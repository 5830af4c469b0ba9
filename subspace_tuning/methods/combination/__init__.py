"""Combination methods: phi(W) = g(f(W)) both reconstructs W's subspaces and extends them."""
