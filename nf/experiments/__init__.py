"""Multi-run experiments built on the trainer (`nf.train.trainer.train_and_evaluate`)."""
