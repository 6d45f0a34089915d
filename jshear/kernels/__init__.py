"""Attention kernels behind `jshear.model.attention.attention`.

flash_attention   Pallas flash attention (forward + Pallas backward) for GPUs (Triton
                  lowering); runs in interpret mode on CPU for tests.
splash_attention  TPU splash attention wrapped to the same signature.
"""

from jshear.kernels.flash_attention import BlockSizes, flash_attention, interpret_default
from jshear.kernels.splash import splash_attention

__all__ = ["BlockSizes", "flash_attention", "interpret_default", "splash_attention"]
