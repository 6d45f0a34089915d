"""Prune a Qwen-family source (Qwen2/2.5 with q/k/v biases, Qwen3 with q/k norms) to a
smaller model that still exports as Qwen2ForCausalLM / Qwen3ForCausalLM. The source is not
bundled: give its Hugging Face directory on the command line.

The default target fits Qwen2.5-0.5B (24 layers, 14 heads / 2 KV heads, hidden 896,
intermediate 4864, head_dim 64): 16 layers, 12 heads / 2 KV heads (`head` keeps 6 of each
group's 7 query heads), hidden 768, intermediate 2816.

  python -m jshear.train --config=configs/prune_qwen.py --workdir=runs/qwen25 \
      --config.model.source=/models/Qwen2.5-0.5B

Qwen3-0.6B (28 layers, 16 heads / 8 KV heads, hidden 1024, intermediate 3072, head_dim 128):
drop two KV groups instead of query heads inside groups:

  python -m jshear.train --config=configs/prune_qwen.py --workdir=runs/qwen3 \
      --config.model.source=/models/Qwen3-0.6B --config.prune.groups=layer,kv,intermediate,hidden \
      --config.prune.target.num_layers=20 --config.prune.target.num_heads=12 \
      --config.prune.target.num_kv_heads=6 --config.prune.target.hidden_size=768 \
      --config.prune.target.intermediate_size=2048

Other choosers work the same way (`--config=configs/prune_qwen.py:M` with M one of dimchop,
importance, layerchop, magnitude: prune.method=M without the learned recipe). Budgets are
the demo's (tens of steps on the local corpus, tokenized with the source's own tokenizer):
enough to show every stage, not to recover quality.
"""

from configs import demo


def get_config(method: str = "learned"):
  c = demo.get_config(method)
  c.model.source = ""  # required: the Qwen model's HF directory (see above)
  c.model.source_shape = "qwen2.5-0.5b"  # what `python -m jshear.train.plan` assumes until then
  p = c.prune
  p.groups = "layer,head,intermediate,hidden"
  p.target.update(num_layers=16, num_heads=12, num_kv_heads=2, hidden_size=768,
                  intermediate_size=2816)
  return c
