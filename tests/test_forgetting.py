"""The learning-vs-forgetting report's delta rank: the fewest singular directions holding a
fraction of the weight change's energy (the end-to-end report: tests/test_lora_pipeline.py)."""

import numpy as np

from jshear.eval.forgetting import energy_rank


def test_energy_rank_counts_the_directions_holding_90_percent():
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.standard_normal((20, 20)))
  v, _ = np.linalg.qr(rng.standard_normal((12, 12)))
  s = np.array([3.0, 2.0, 1.0] + [0.1] * 9)   # energies 9, 4, 1, 9 x 0.01: 13/14.09 > 0.9
  d = (u[:, :12] * s) @ v.T
  assert energy_rank(d) == 2 and energy_rank(d, 0.99) == 3 and energy_rank(d, 1.0) == 12
  assert energy_rank(np.zeros((5, 4))) == 0
