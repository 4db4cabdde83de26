"""Tasks: what a model predicts, its loss and metrics. Tasks know nothing of sharding or checkpoints."""
