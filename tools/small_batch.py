"""Paper Table 2 (NF-ResNet vs its BN twin across batch sizes) on the embedded data.

    python tools/small_batch.py --workdir=runs/small_batch [--batch_sizes=64,8,4] [--seeds=0,1,2]

Same as the `nf-small-batch` console script; see `nf/experiments/small_batch_cli.py` for the flags
and `nf/experiments/small_batch.py` for the rules (same epochs, linear learning rate).
"""

from nf.experiments.small_batch_cli import run

if __name__ == "__main__":
    run()
