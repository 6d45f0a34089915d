"""Sheared-LLaMA 1.3B: LLaMA2-7B -> 24 layers, 16 heads, hidden 2048, intermediate 5504.
Same recipe as sheared_2p7b.py with the 1.3B reference losses."""

from configs import sheared_2p7b


def get_config():
  return sheared_2p7b.get_config(
      target=dict(num_layers=24, num_heads=16, num_kv_heads=16, hidden_size=2048,
                  intermediate_size=5504), ref="1.3B")
