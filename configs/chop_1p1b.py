"""CHOP's 1.1B PaLM-style model: 24 layers, d=2048, 16 heads (see chop_300m.py)."""

from configs import chop_300m


def get_config():
  return chop_300m.get_config(layers=24, d=2048, heads=16, inter=5632)
