"""Console scripts (pyproject [project.scripts]): nf-eval, nf-predict, nf-export, nf-spp,
nf-model-stats, nf-make-arrayrecord. Each module's `run()` is the entry point."""
