"""EleutherAI lm-evaluation-harness adapter: an `LM` registered as `jshear`.

  python -m jshear.eval lm-eval --model jshear --model_args path=DIR --tasks TASKS [...]
  # or from Python:
  from jshear.eval.lm_eval_adapter import JShearLM, register
  register(); lm_eval.simple_evaluate(model="jshear", model_args="path=DIR", tasks=[...])

The stock `lm_eval` console script never imports jshear (lm-eval 0.4 discovers models only in
its own package), so use the `python -m jshear.eval lm-eval` wrapper, which registers the
model and then runs lm-eval's own CLI with the remaining arguments.

model_args: path (jshear or HF model dir), tokenizer, dtype (float32|bfloat16), max_length,
tokens_per_batch, layout (packed|padded). Requests go through the same batched scorer as
`python -m jshear.eval tasks` (`jshear.eval.scoring`) and the KV-cache generator
(`jshear.eval.generate`).

Importable without lm_eval installed: `JShearLM` then derives from a plain base class and
`register()` raises a JShearError saying what to install.
"""

from __future__ import annotations

from typing import Any, Sequence

from jshear.errors import JShearError

try:  # lm_eval is optional
  from lm_eval.api.model import LM as _LMBase
  HAVE_LM_EVAL = True
except ImportError:  # pragma: no cover - depends on the venv
  HAVE_LM_EVAL = False

  class _LMBase:  # minimal stand-in with the attributes lm-eval's base sets
    def __init__(self):
      self._rank, self._world_size, self.cache_hook = 0, 1, None

    @property
    def rank(self):
      return self._rank

    @property
    def world_size(self):
      return self._world_size


def _args(req) -> tuple:
  return req.args if hasattr(req, "args") else tuple(req)


def _bool(v) -> bool:
  return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


class JShearLM(_LMBase):
  """lm-eval `LM` backed by a jshear model (or any model object with cfg/params/tokenizer)."""

  def __init__(self, path: str | None = None, tokenizer: str | None = None, dtype: str = "float32",
               max_length: int | None = None, tokens_per_batch: int = 2048, layout: str = "packed",
               loaded=None, **kwargs: Any):
    super().__init__()
    from jshear.eval import loader, scoring
    if loaded is None:
      if not path:
        raise JShearError("jshear lm-eval model needs model_args path=DIR")
      loaded = loader.load(path, tokenizer=tokenizer)
    self.loaded = loaded
    self.tokenizer = loaded.tokenizer
    cdt = None
    if str(dtype) in ("bfloat16", "bf16"):
      import jax.numpy as jnp
      cdt = jnp.bfloat16
    self.compute_dtype = cdt
    self.max_length = int(max_length or min(loaded.cfg.max_position_embeddings, 4096))
    self.tokens_per_batch = int(tokens_per_batch)
    self.layout = layout
    self.backend = scoring.JaxBackend(loaded.cfg, loaded.params, compute_dtype=cdt,
                                      max_length=self.max_length)
    self.prefix_token_id = scoring.prefix_token_id(self.tokenizer)

  # ---- lm-eval API --------------------------------------------------------------------
  @property
  def tokenizer_name(self) -> str:
    return getattr(self.tokenizer, "name_or_path", "jshear")

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    from jshear.eval import scoring
    pairs = [tuple(_args(r)[:2]) for r in requests]
    if not pairs:
      return []
    enc = scoring.encode_requests(self.tokenizer, pairs, self.prefix_token_id)
    ll, greedy = scoring.score_requests(self.backend, enc, tokens_per_batch=self.tokens_per_batch,
                                        layout=self.layout, progress=not disable_tqdm,
                                        desc="loglikelihood")
    out = [(float(a), bool(b)) for a, b in zip(ll, greedy)]
    self._cache("loglikelihood", pairs, out)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Whole-string log-likelihood as lm-eval computes it: disjoint windows of max_length
    predicted tokens, the first conditioned on the prefix token (BOS, else EOS)."""
    from jshear.eval import ppl, scoring
    texts = [_args(r)[0] for r in requests]
    if not texts:
      return []
    if self.prefix_token_id is None:
      raise JShearError("loglikelihood_rolling needs a BOS or EOS token in the tokenizer")
    enc, owner = [], []
    for i, text in enumerate(texts):
      ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
      for window, n_scored in ppl.sliding_windows(ids, self.max_length + 1, self.max_length,
                                                  prefix_token=self.prefix_token_id):
        w = window.tolist()
        enc.append((w[:len(w) - n_scored], w[len(w) - n_scored:]))
        owner.append(i)
    ll, _ = scoring.score_requests(self.backend, enc, tokens_per_batch=self.tokens_per_batch,
                                   layout="padded", progress=not disable_tqdm,
                                   desc="loglikelihood_rolling")
    out = [0.0] * len(texts)
    for o, v in zip(owner, ll):
      out[o] += float(v)
    self._cache("loglikelihood_rolling", [(t,) for t in texts], out)
    return out

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    import jax
    from jshear.eval.generate import generate_text
    out: list[str | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
      a = _args(r)
      kw = dict(a[1]) if len(a) > 1 and a[1] else {}
      groups.setdefault(repr(sorted(kw.items(), key=lambda x: x[0])), []).append(i)
    for key, idxs in groups.items():
      kw = dict(_args(requests[idxs[0]])[1] or {}) if len(_args(requests[idxs[0]])) > 1 else {}
      until = kw.pop("until", None) or []
      until = [until] if isinstance(until, str) else list(until)
      eos = getattr(self.tokenizer, "eos_token", None)
      if eos and eos not in until:
        until.append(eos)
      max_new = int(kw.pop("max_gen_toks", 256))
      do_sample = _bool(kw.pop("do_sample", False))
      temperature = float(kw.pop("temperature", 0.0) or 0.0) if do_sample else 0.0
      top_k = int(kw.pop("top_k", 0) or 0)
      top_p = float(kw.pop("top_p", 1.0) or 1.0)
      seed = int(kw.pop("seed", 0) or 0)
      prompts = [_args(requests[i])[0] for i in idxs]
      texts = generate_text(self.loaded, prompts, stop=until, max_new_tokens=max_new,
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            rng=jax.random.key(seed), max_len=self.max_length,
                            compute_dtype=self.compute_dtype)
      for i, t in zip(idxs, texts):
        out[i] = t
    self._cache("generate_until", [tuple(_args(r)[:2]) for r in requests], out)
    return out  # type: ignore[return-value]

  def _cache(self, kind: str, args: Sequence[tuple], results: Sequence) -> None:
    hook = getattr(self, "cache_hook", None)
    if hook is not None and hasattr(hook, "add_partial"):
      for a, r in zip(args, results):
        hook.add_partial(kind, a, r)


def register(name: str = "jshear") -> None:
  """Register `JShearLM` in lm-eval's model registry (idempotent)."""
  if not HAVE_LM_EVAL:
    raise JShearError("lm-eval is not installed: `pip install lm-eval==0.4.13` to use the "
                      "lm-eval-harness adapter")
  import lm_eval.models  # noqa: F401 - registers lm-eval's own models first
  from lm_eval.api.registry import model_registry, register_model
  try:
    if name in model_registry:
      return
  except TypeError:
    pass
  register_model(name)(JShearLM)


if HAVE_LM_EVAL:  # importing this module is enough for `lm_eval.simple_evaluate(model="jshear")`
  try:
    register()
  except Exception:  # pragma: no cover - registry API drift must not break the import
    pass
