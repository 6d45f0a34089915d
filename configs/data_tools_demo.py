"""Continued pretraining of SmolLM2-135M (unpruned) on the local corpus with one fixed
mixture: the run the data tools compare (uniform, entropy, fitted mixing law, perplexity
bands), each at the same token budget, scored on the test rows.

  python -m jshear.train --config=configs/data_tools_demo.py --workdir=runs/mix_uniform
  python -m jshear.train --config=configs/data_tools_demo.py --workdir=runs/mix_entropy \
      --config.continued.domain_weights_from=entropy
  python -m jshear.train --config=configs/data_tools_demo.py --workdir=runs/mix_law \
      --config.continued.domain_weights='{"arxiv": 0.1, ...}'   # from `mixlaw optimize`
  python -m jshear.train --config=configs/data_tools_demo.py --workdir=runs/sel_medium \
      --config.data.path=VIEW_DIR                               # from `jshear.data select`

82k tokens a run (80 steps x 4 rows x 256 tokens), a constant mixture (no dynamic batch
loading, so the mixture under test is the one trained on), an in-loop validation eval every
10 steps (what `mixlaw fit` reads), the final eval on 64 test rows a domain.
"""

from jshear.config_base import base_config


def get_config():
  c = base_config()
  c.stages = "continue"
  c.model.source = "smollm2"
  c.data.corpus = "local"
  c.data.seq_len = 256
  k = c.continued
  k.steps, k.batch_size, k.lr, k.warmup_steps = 80, 4, 1e-4, 8
  k.log_every, k.eval_every, k.eval_batches, k.ckpt_every = 5, 10, 2, 40
  k.reweight_rule = "constant"
  c.drop_checkpoints = True
  return c
