"""A small reference model for perplexity-based data selection (Ankner et al. 2024: a 125M
reference model's perplexities select the data of a 3B model), trained from scratch with the
`pretrain` stage; docs/data_selection.md walks through the whole recipe.

The split of the data is a view (jshear/data/view.py): `select --band=random` divides every
domain's training rows at random into the reference model's part and the rest (both keep the
source's held-out rows), the reference trains on its part, and scores only the rest, rows it
never saw (as Ankner et al. do: their reference trains on a subset and scores the rest):

  python -m jshear.data select --data=PREPARED --band=random --rate=0.5 --seed=0 \\
      --out=runs/sel/ref_rows --rest=runs/sel/rest_rows
  python -m jshear.train --config=configs/reference_125m.py --workdir=runs/sel/ref \\
      --config.data.path=runs/sel/ref_rows
  python -m jshear.data score --model=runs/sel/ref/pretrained --data=runs/sel/rest_rows \\
      --out=runs/sel/scores
  python -m jshear.data select --scores=runs/sel/scores --band=high --rate=0.5 --out=runs/sel/kept

Without data.path it trains on all training rows of the local corpus (data.corpus='local',
as the demo prepares it at seq_len 256), which then scores rows it trained on.

The model is the 125M shape (12 layers, hidden 768, 12 heads, intermediate 2048, tied
embeddings, about 123M parameters) with SmolLM2's tokenizer, which the data must share with
the model being trained on the selection (the SmolLM2 dir is fetched by `python -m
jshear.assets` or any demo run). The budget is CPU-sized (20 steps of 8 x 256 tokens,
minutes on 2 cores): it makes the machinery run, not a useful reference; raise
pretrain.steps and batch_size by orders of magnitude for one. `configs/reference_125m.py:tiny` is a 2-layer shape for smoke tests.
"""

from jshear.cache import cache_root
from jshear.config_base import base_config

SHAPES = {
    "125m": dict(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12,
                 num_kv_heads=12, head_dim=64),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=4, head_dim=16),
}


def get_config(shape: str = "125m"):
  c = base_config()
  c.stages = "pretrain"
  c.model.update(family="llama", vocab_size=49152, tie_embeddings=True, rope_theta=10000.0,
                 qk_norm=False, **SHAPES[shape])
  c.model.tokenizer = str(cache_root() / "models" / "smollm2-135m")  # the SmolLM2 asset
  c.model.scan_layers = False   # a Python loop over layers: faster on CPU
  c.data.corpus = "local"       # used when data.path is empty
  c.data.seq_len = 256

  t = c.pretrain
  t.steps, t.batch_size, t.lr, t.warmup_steps = (20, 8, 1e-3, 2) if shape == "125m" else (2, 8, 1e-3, 1)
  t.schedule, t.weight_decay = "cosine", 0.1
  t.log_every, t.eval_every, t.eval_batches, t.ckpt_every = 5, 0, 1, 10
  t.reweight_rule = "constant"  # the reference sees the domains as they come
  return c
