"""Extension methods: phi(W) = W + s * dW adds a new (low-rank) subspace beside the frozen weight."""
