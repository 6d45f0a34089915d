"""Tiny random Hugging Face models built in-process for exactness tests."""

import torch
import transformers


def llama_config(*, kv=2, tied=False, rope_scaling=False, vocab=128, hidden=64, heads=4,
                 layers=2, inter=96, head_dim=16):
  rope = {"rope_type": "default", "rope_theta": 10000.0}
  if rope_scaling:
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
  return transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
      num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
      max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tied,
      rope_parameters=rope, bos_token_id=1, eos_token_id=2)


def cohere_config(*, kv=2, qk_norm=True, vocab=128, hidden=64, heads=4, layers=2, inter=96,
                  logit_scale=0.5):
  return transformers.CohereConfig(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256,
      layer_norm_eps=1e-5, use_qk_norm=qk_norm, logit_scale=logit_scale,
      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
      bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build(config, seed=0):
  """Random model with non-trivial norm weights (ones would hide norm-weight bugs)."""
  torch.manual_seed(seed)
  cls = (transformers.CohereForCausalLM if config.model_type == "cohere"
         else transformers.LlamaForCausalLM)
  model = cls(config).float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return model


def save(model, path):
  model.save_pretrained(path)
  return str(path)


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
