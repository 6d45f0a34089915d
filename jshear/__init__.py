"""jshear: targeted structured pruning and continued pretraining of LLaMA-family models in JAX."""

__version__ = "0.1.0"
