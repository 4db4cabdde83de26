"""Training: the loop, optimizer recipe, checkpoints, metrics and sharding."""
