"""nf: Normalizer-Free networks in Flax NNX."""

__version__ = "0.1.0"
