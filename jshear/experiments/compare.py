"""Compare ways to shrink a model: every method prunes the same source to the same target on
the same data, then gets the same continued-pretraining budget.

  python -m jshear.experiments.compare --config=configs/compare_demo.py --workdir=DIR [--config.KEY=VALUE]

The config is a normal run config plus `compare.methods`, a comma-separated list of
`prune.method` values; `layerchop:<layout>` picks a LayerCHOP layout (e.g.
"layerchop:input,layerchop:both"). Each method is its own resumable pipeline run in
DIR/<method> (the name with ':' as '-'); a finished one is reused, not rerun.
`compare.recovery` (default "full") lists how each method recovers after pruning: `full`
(continued pretraining of every weight), or `+`-joined parts: `blockwise` (the blockwise
stage between finalize and continue; at equal tokens its block-training rows come out of
the continued steps), `distill` (logit distillation from the source, the distill block)
and `lora:RANK` (LoRA adapters on the frozen pruned model, continued.lora.*, merged at the
end). "full,blockwise,distill,blockwise+distill" is the four-way recovery; each variant's
rows live in DIR/<method><suffix>, e.g. DIR/importance-blockwise-distill (scratch pretrains,
so it has only its full row). Then:

  DIR/compare.json  per method: params, target shape, per-domain held-out loss of the final
                    model and its mean, zero-shot accuracy on `compare.zeroshot_tasks` (the
                    first `compare.zeroshot_limit` documents of each; "" skips it) and its
                    bias against the source's predictions (CEV, SDE, PIEs: jshear.eval.bias),
                    wall time, tokens spent (prune / continue); the source model's for reference
  DIR/compare.md    the same as a table
  DIR/compare.png   mean and per-domain loss per method (skipped, with a log line, when
                    matplotlib is not installed)

Budgets: `continued` is one block for all methods, so continued-pretraining tokens are equal.
The methods that train while pruning (learned, dimchop, gradual layerchop) also spend
`prune.steps` of training; the one-shot methods spend only forward passes (importance:
calibration rows). Both are reported.
"""

from __future__ import annotations

import json
import logging
import os
import time
import typing

import ml_collections as mlc

from jshear.atomic import write_json
from jshear.errors import JShearError

_log = logging.getLogger(__name__)
DEFAULT_METHODS = "learned,importance,layerchop,magnitude,random"


def parse_methods(text: str) -> list[tuple[str, str, str | None]]:
  """"learned,layerchop:input" -> [(run name, prune.method, layerchop layout or None)]."""
  from jshear.prune.layerchop import LAYOUTS
  from jshear.train.pipeline import PRUNE_METHODS
  out, seen = [], set()
  for item in (s.strip() for s in str(text).split(",")):
    if not item:
      continue
    method, _, layout = item.partition(":")
    if method not in PRUNE_METHODS + ("scratch",):
      raise JShearError(f"compare.methods: unknown method {method!r} (known: {list(PRUNE_METHODS)})")
    if layout and method != "layerchop":  # noqa: SIM102
      raise JShearError(f"compare.methods: {item!r}: only layerchop takes a ':layout'")
    if layout and layout not in LAYOUTS:
      raise JShearError(f"compare.methods: {item!r}: unknown layout (known: {list(LAYOUTS)})")
    name = item.replace(":", "-")
    if name in seen:
      raise JShearError(f"compare.methods lists {item!r} twice")
    seen.add(name)
    out.append((name, method, layout or None))
  if not out:
    raise JShearError("compare.methods is empty")
  return out


class Recovery(typing.NamedTuple):
  """One way to recover after pruning: a row suffix and what it turns on."""
  suffix: str = ""          # the run name's suffix ("" for full continued pretraining)
  lora_rank: int = 0        # > 0: LoRA adapters on the frozen pruned model
  blockwise: bool = False   # the blockwise stage between finalize and continue
  distill: bool = False     # logit distillation from the source in the continue stage


FULL = Recovery()


def parse_recovery(text: str) -> list[Recovery]:
  """"full,blockwise,distill,blockwise+distill,lora:8": one Recovery per item. An item is
  `full`, or `+`-joined parts among `blockwise`, `distill` and `lora:RANK`; its suffix
  names the parts in that order ("-blockwise-distill", "-lora8")."""
  out, seen = [], set()
  for item in (s.strip() for s in str(text).split(",")):
    if not item:
      continue
    parts = {}
    for part in (item.split("+") if item != "full" else []):
      kind, _, rank = part.partition(":")
      if part in ("blockwise", "distill") and part not in parts:
        parts[part] = True
      elif kind == "lora" and rank.isdigit() and int(rank) > 0 and "lora" not in parts:
        parts["lora"] = int(rank)
      else:
        raise JShearError(f"compare.recovery: unknown variant {item!r} (known: full, or "
                          "+-joined blockwise, distill, lora:RANK with RANK >= 1, each once)")
    names = [n for n in ("blockwise", "distill") if n in parts]
    names += [f"lora{parts['lora']}"] if "lora" in parts else []
    r = Recovery("".join(f"-{n}" for n in names), parts.get("lora", 0),
                 "blockwise" in parts, "distill" in parts)
    if r in seen:
      raise JShearError(f"compare.recovery lists {item!r} twice")
    seen.add(r)
    out.append(r)
  if not out:
    raise JShearError("compare.recovery is empty")
  return out


def runs(cfg) -> list[tuple[str, str, str | None, Recovery]]:
  """(run name, prune.method, layout, recovery) of every row: compare.methods times
  compare.recovery (scratch: its full row only)."""
  methods = parse_methods(cfg.compare.methods if "compare" in cfg else DEFAULT_METHODS)
  recovery = parse_recovery(cfg.compare.get("recovery", "full") if "compare" in cfg else "full")
  return [(name + r.suffix, method, layout, r) for name, method, layout in methods
          for r in recovery if not (method == "scratch" and r != FULL)]


def method_config(cfg, method: str, layout: str | None, recovery: Recovery = FULL):
  """The run config of one method: the shared config with its prune.method (and layout),
  the method blocks it does not read (prune.learned, .layerchop, .dimchop, .calib) at their
  defaults, recovering as `recovery` says: LoRA (continued.lora.rank), the blockwise stage
  after finalize, distillation (distill.enable), or plain continued pretraining.

  With compare.equal_tokens, a method that does not train while pruning gets the pruning
  stage's tokens as extra continued-pretraining steps, and a blockwise row gives up
  continued steps holding its block-training rows, so every row trains on the same total.
  `scratch` trains the target shape from random initialisation on that total."""
  from jshear.train.pipeline import trains_in_prune
  from jshear.config_base import reset_unread_blocks
  c = mlc.ConfigDict(cfg.to_dict())
  extra = mlc.ConfigDict(c.compare.to_dict()) if "compare" in c else mlc.ConfigDict()
  if "compare" in c:
    del c["compare"]
  # Each final model (and the source, once) is scored by `heldout` here, per row and cached;
  # the run's own final eval would score the source again in every row.
  c.final_eval = False
  if method == "scratch":
    return _scratch_config(c, extra)
  c.continued.lora.rank = int(recovery.lora_rank)
  if recovery.distill:
    c.distill.enable = True
  if recovery.blockwise:
    from jshear.train.pipeline import parse_stages
    stages = parse_stages(c.stages)
    if "finalize" not in stages or "continue" not in stages:
      raise JShearError(f"compare.recovery 'blockwise' needs stages with finalize and "
                        f"continue, got stages={c.stages!r}")
    stages.insert(stages.index("finalize") + 1, "blockwise")
    c.stages = ",".join(stages)
  c.prune.method = method
  if layout:
    c.prune.layerchop.layout = layout
  # The shared config carries every method's knobs; each run keeps only its method's.
  reset_unread_blocks(c)
  if extra.get("equal_tokens", False) and not trains_in_prune(c):
    k = c.continued
    k.steps = int(k.steps) + _extra_steps(c.prune, k)
  if extra.get("equal_tokens", False) and recovery.blockwise:
    k = c.continued
    k.steps = int(k.steps) - _extra_steps(c.blockwise, k)
    if k.steps < 1:
      raise JShearError(f"compare.recovery 'blockwise': blockwise.steps x batch_size "
                        f"({c.blockwise.steps} x {c.blockwise.batch_size} rows) leaves no "
                        f"continued steps at equal tokens")
  return c


def _extra_steps(prune, cont) -> int:
  """Continued steps holding as many tokens as the pruning stage's (same seq_len)."""
  return int(round(int(prune.steps) * int(prune.batch_size) / int(cont.batch_size)))


def _scratch_config(c, extra):
  """The target shape from random init, pretrained on the pruning + continued tokens."""
  from jshear.prune.targets import TargetShape, target_config
  from jshear.model_io import read_model_config
  from jshear.train.stages.common import resolve_source
  tok = c.init_from or resolve_source(c.model.source)
  src = read_model_config(tok)
  t = c.prune.target
  tgt = target_config(src, TargetShape(t.num_layers, t.num_heads, t.num_kv_heads or
                                       src.num_kv_heads, t.hidden_size, t.intermediate_size))
  for k in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
            "num_kv_heads", "head_dim", "family", "qk_norm", "tie_embeddings", "rope_theta"):
    c.model[k] = getattr(tgt, k)
  from jshear.model_io import tokenizer_dir
  c.model.tokenizer = tokenizer_dir(tok) or tok
  c.stages = "pretrain,export" if "export" in c.stages else "pretrain"
  c.pretrain = mlc.ConfigDict(c.continued.to_dict())
  c.pretrain.steps = int(c.continued.steps) + _extra_steps(c.prune, c.continued)
  c.pretrain.lr = float(extra.get("scratch_lr", c.continued.lr))
  c.pretrain.reweight_rule = "constant"
  c.pretrain.lora.rank = 0  # from random weights every weight trains
  return c


def _stages_done(cfg, workdir: str) -> bool:
  from jshear.train.pipeline import parse_stages
  return all(os.path.exists(os.path.join(workdir, s, "DONE")) for s in parse_stages(cfg.stages))


def _tokens(block, seq_len: int) -> int:
  return int(block.steps) * int(block.batch_size) * int(seq_len)


def run_one(cfg, workdir: str) -> dict:
  """Runs (or reuses) one method's pipeline; returns its summary with `wall_s` (the
  seconds all invocations of this run spent, summed over resumptions)."""
  from jshear.train.pipeline import run
  summary_path = os.path.join(workdir, "summary.json")
  time_path = os.path.join(workdir, "compare_time.json")
  spent = 0.0
  if os.path.exists(time_path):
    with open(time_path) as f:
      spent = float(json.load(f)["wall_s"])
  if _stages_done(cfg, workdir) and os.path.exists(summary_path) and os.path.exists(time_path):
    _log.info("compare: %s is finished; reusing its summary", workdir)
    with open(summary_path) as f:
      summary = json.load(f)
  else:
    t0 = time.time()
    summary = run(cfg, workdir)
    spent += time.time() - t0
    os.makedirs(workdir, exist_ok=True)
    with open(time_path, "w") as f:
      json.dump({"wall_s": spent}, f)
  summary["wall_s"] = spent
  return summary


def zero_shot(model_dir: str, cache_path: str, task_names: str, limit: int) -> dict:
  """{task: its primary accuracy (`tasks.PRIMARY_METRIC`), "mean": ...} of a model dir, cached
  in `cache_path` for the same tasks and limit, with each document's prediction by that
  metric's rule (for `zero_shot_bias`)."""
  key = {"tasks": task_names, "limit": int(limit), "model": os.path.abspath(model_dir),
         "preds": 1}
  if os.path.exists(cache_path):
    with open(cache_path) as f:
      old = json.load(f)
    if old.get("key") == key:
      return old["acc"]
  from jshear import assets
  from jshear.eval import loader, scoring, tasks
  names = tasks.parse_task_names(task_names)
  m = loader.load(model_dir)
  prep = tasks.prepare(m.tokenizer, names, int(limit) or None, assets.eval_sets_dir())
  backend = scoring.JaxBackend(m.cfg, m.params, max_length=min(m.cfg.max_position_embeddings,
                                                                 2048))
  metrics, lls = tasks.score_prepared_lls(backend, prep, progress=False)
  acc = {n: float(metrics[n][tasks.PRIMARY_METRIC.get(n, "acc")]) for n in names}
  acc["mean"] = sum(acc.values()) / len(names)
  from jshear.eval.bias import predict
  docs = {n: {"gold": [i.gold for i in prep.insts[n]],
              "n_choices": [len(i.choices) for i in prep.insts[n]],
              "pred": predict(lls[n], [i.choices for i in prep.insts[n]],
                              tasks.PRIMARY_METRIC.get(n, "acc")).tolist()}
          for n in names if tasks.TASKS[n].kind == "multiple_choice"}
  import jax
  if jax.process_index() == 0:
    write_json(cache_path, {"key": key, "acc": acc, "docs": docs})
  return acc


def zero_shot_bias(cache_path: str, source_cache_path: str) -> dict | None:
  """{task: {"cev", "sde", "pies"}} of a method's cached zero-shot predictions against the
  source's (jshear.eval.bias: one trial, zero base rates excluded); None when either cache
  has no predictions."""
  from jshear.eval.bias import task_bias
  caches = []
  for path in (cache_path, source_cache_path):
    if not os.path.exists(path):
      return None
    with open(path) as f:
      caches.append(json.load(f).get("docs"))
  mine, src = caches
  if not mine or not src:
    return None
  out = {}
  for task, s in src.items():
    if task in mine and mine[task]["gold"] == s["gold"]:
      t = task_bias(s["gold"], s["pred"], [mine[task]["pred"]], s["n_choices"])
      out[task] = {"cev": t["cev"], "sde": t["sde"], "pies": len(t["pies"])}
  return out


def heldout(cfg, model_dir: str, cache_path: str, rows: int, split: str = "test") -> dict:
  """Held-out loss with its standard error (`jshear.eval.heldout`) of a model dir on the
  prepared data's `split` (the test rows), cached under a key naming the model, the data
  (its manifest's hash) and the split, so a re-prepared split never pairs stale rows."""
  import jax

  from jshear import sharding as shd
  from jshear.data.prepare import manifest_hash
  from jshear.eval.heldout import heldout_losses
  from jshear.train.pipeline import resolve_data
  from jshear.model_io import is_jshear_dir, tokenizer_dir
  from jshear.train.stages.common import load_any
  data_dir = resolve_data(cfg, tokenizer_dir(model_dir) or model_dir)
  data_hash = manifest_hash(data_dir)
  key = {"model": os.path.abspath(model_dir), "rows": rows, "per_row": True,
         "mtime": os.path.getmtime(os.path.join(
             model_dir, "model_config.json" if is_jshear_dir(model_dir) else "config.json")),
         "data": data_hash, "split": split}
  if os.path.exists(cache_path):
    with open(cache_path) as f:
      old = json.load(f)
    if old.get("key") == key:
      return old["heldout"]
  m = load_any(model_dir, cfg)
  mesh = shd.make_mesh(dict(cfg.mesh.ici), dict(cfg.mesh.dcn))
  with jax.set_mesh(mesh):
    res = heldout_losses(data_dir, mesh, m.cfg, m.params, None, rows, split=split)
  if jax.process_index() == 0:
    write_json(cache_path, {"key": key, "heldout": res})
  return res


def _baseline_dir(paired_with: str, workdir: str, names) -> str | None:
  """compare.paired_with as an earlier run's method dir (None when it names a method of
  this comparison); refused before any method runs when it is neither."""
  if not paired_with or paired_with in names:
    return None
  path = paired_with if os.path.isabs(paired_with) else os.path.join(workdir, paired_with)
  try:
    final_model_dir(path)
  except JShearError as e:
    raise JShearError(f"compare.paired_with={paired_with!r} is neither a method of "
                      f"compare.methods ({sorted(names)}) nor a finished method dir: {e}")
  return path


def _mean(losses: dict) -> float | None:
  vals = [v for v in losses.values() if v == v]  # drop NaN (a domain without eval rows)
  return sum(vals) / len(vals) if vals else None


def collect(cfg, methods, summaries: dict, configs: dict) -> dict:
  from jshear.train.pipeline import parse_stages, trains_in_prune
  stages = parse_stages(cfg.stages)
  seq = cfg.data.seq_len
  out = {"target": dict(cfg.prune.target), "methods": {}, "source": None,
         "continue_tokens": _tokens(cfg.continued, seq) if "continue" in stages else 0}
  for name, method, layout in methods:
    s = summaries[name]
    ev = s.get("eval") or {}
    final = ev.get("final") or {}
    if out["source"] is None and ev.get("source"):
      out["source"] = {"params": s.get("source_params"), "eval": ev["source"],
                       "mean_loss": _mean(ev["source"])}
    fc = s.get("final_config") or {}
    mine = parse_stages(configs[name].stages)
    prune_tokens = (_tokens(cfg.prune, seq)
                    if "prune" in mine and trains_in_prune(configs[name]) else 0)
    block = configs[name].pretrain if "pretrain" in mine else configs[name].continued
    cont_tokens = _tokens(block, seq) if ("continue" in mine or "pretrain" in mine) else 0
    lc = configs[name].continued.get("lora")
    parts = (["blockwise"] if "blockwise" in mine else []) + (
        ["distill"] if "continue" in mine and configs[name].distill.get("enable") else []) + (
        [f"lora:{lc.rank}"] if lc and lc.rank and "continue" in mine else [])
    block_tokens = _tokens(configs[name].blockwise, seq) if "blockwise" in mine else 0
    out["methods"][name] = {
        "method": method, "layout": layout if method == "layerchop" else None,
        "recovery": "+".join(parts) or "full",
        "params": s.get("final_params"),
        "shape": {k: fc.get(k) for k in ("num_layers", "num_heads", "num_kv_heads",
                                         "hidden_size", "intermediate_size")},
        "eval": final, "mean_loss": _mean(final), "wall_s": s.get("wall_s"),
        "prune_tokens": prune_tokens,
        "blockwise_tokens": block_tokens,   # block-training rows (all blocks see each)
        "continue_tokens": cont_tokens,
        "total_tokens": prune_tokens + block_tokens + cont_tokens,
        "heldout": s.get("heldout"),
        "tokens_per_s": s.get("tokens_per_s"), "hf_dir": s.get("hf_dir"),
        "workdir": s.get("workdir"), "zero_shot": s.get("zero_shot")}
  return out


def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def _heldout_cell(h) -> str:
  return "-" if not h else f"{h['mean']:.3f} ± {h['se']:.3f}"


def _diff_cell(p) -> str:
  return "-" if not p else f"{p['mean']:+.3f} ± {p['se']:.3f}"


def to_markdown(res: dict) -> str:
  rows = list(res["methods"].items())
  domains = sorted({d for _, r in rows for d in r["eval"]} |
                   set((res.get("source") or {}).get("eval") or {}))
  t = res["target"]
  zs = sorted({k for _, r in rows for k in (r.get("zero_shot") or {}) if k != "mean"})
  zcols = [f"{k} acc" for k in zs] + (["mean acc"] if zs else [])
  zkeys = zs + (["mean"] if zs else [])
  zcell = lambda z: "".join(f" {_fmt((z or {}).get(k), '.3f')} |" for k in zkeys)
  bs = sorted({k for _, r in rows for k in (r.get("bias") or {})})
  zcols += [f"{k} CEV / SDE" for k in bs]
  bcell = lambda b: "".join(" " + " / ".join(_fmt(((b or {}).get(k) or {}).get(m), f)
                                             for m, f in (("cev", ".1f"), ("sde", ".2f"))) + " |"
                            for k in bs)
  base = res.get("paired_with")
  dcol = [f"vs {base} ± paired s.e."] if base else []
  dcell = lambda r: f" {_diff_cell(r.get('paired'))} |" if base else ""
  lines = ["# Pruning methods compared", "",
           f"Target: {t.get('num_layers')} layers, {t.get('num_heads')} heads / "
           f"{t.get('num_kv_heads')} KV heads, hidden {t.get('hidden_size')}, intermediate "
           f"{t.get('intermediate_size')}. Continued pretraining: {res['continue_tokens']:,} "
           "tokens per method.", "",
           "| method | params | " + " | ".join(f"{d} loss" for d in domains) +
           " | mean loss | held-out ± s.e. |" + "".join(f" {c} |" for c in dcol + zcols) +
           " prune tokens | total tokens | wall s |",
           "|---|---:|" + "---:|" * (len(domains) + len(dcol) + len(zcols)) +
           "---:|---:|---:|---:|---:|"]
  src = res.get("source")
  if src:
    lines.append(f"| source | {_fmt(src['params'], ',')} | " +
                 " | ".join(_fmt(src["eval"].get(d), ".3f") for d in domains) +
                 f" | {_fmt(src['mean_loss'], '.3f')} | - |" + (" - |" if base else "") +
                 zcell(src.get("zero_shot")) + " - |" * len(bs) +
                 " - | - | - |")
  for name, r in sorted(rows, key=lambda kv: (kv[1]["mean_loss"] is None,
                                              kv[1]["mean_loss"] or 0.0)):
    lines.append(f"| {name} | {_fmt(r['params'], ',')} | " +
                 " | ".join(_fmt(r["eval"].get(d), ".3f") for d in domains) +
                 f" | {_fmt(r['mean_loss'], '.3f')} | {_heldout_cell(r.get('heldout'))} |" +
                 dcell(r) + zcell(r.get("zero_shot")) + bcell(r.get("bias")) +
                 f" {r['prune_tokens']:,} | {r.get('total_tokens', 0):,} | "
                 f"{_fmt(r['wall_s'], '.0f')} |")
  lines += ["", "Loss: mean next-token loss on each domain's held-out rows (nats). Rows "
            "sorted by mean loss. Held-out ± s.e.: the mean over domains of up to "
            "compare.heldout_rows rows each, with its standard error over rows."]
  if base:
    lines += [f"vs {base}: the held-out difference from {base} on the same rows (negative: "
              "better), with the standard error of the row-wise paired difference."]
  if zs:
    lines += [f"Zero-shot: accuracy on the first {res.get('zeroshot_limit') or 'all'} documents "
              "of each task (acc_norm for piqa, hellaswag, openbookqa, arc_challenge; acc "
              "elsewhere)."]
  if bs:
    lines += ["CEV / SDE: pruning-induced bias against the source on the same documents, "
              "classes = gold answer positions, predictions by the accuracy's rule "
              "(docs/bias_metrics.md; CEV in %^2 is twice the public code's)."]
  lines.append("")
  return "\n".join(lines)


def plot(res: dict, path: str) -> bool:
  """Bar plot of per-domain and mean held-out loss per method; False without matplotlib."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    _log.warning("matplotlib is not installed: skipping %s (pip install matplotlib)", path)
    return False
  names = list(res["methods"])
  domains = sorted({d for r in res["methods"].values() for d in r["eval"]})
  series = domains + ["mean"]
  fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names) * len(series) / 3), 4))
  width = 0.8 / len(series)
  for j, d in enumerate(series):
    vals = [(res["methods"][n]["mean_loss"] if d == "mean" else res["methods"][n]["eval"].get(d))
            for n in names]
    vals = [float("nan") if v is None else v for v in vals]
    ax.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(names))], vals, width,
           label=d)
  src = (res.get("source") or {}).get("mean_loss")
  if src is not None:
    ax.axhline(src, color="k", linestyle="--", linewidth=1, label="source mean")
  ax.set_xticks(range(len(names)), names)
  ax.set_ylabel("held-out loss (nats)")
  ax.set_title("Same target, same continued-pretraining tokens")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def _domain_losses(h: dict) -> dict:
  return {d: v["loss"] for d, v in h["domains"].items()}


def _source_heldout(cfg, configs, summaries, workdir: str, rows: int) -> dict | None:
  """The source model's row, scored once for the whole comparison (cached in
  DIR/source_heldout.json); None when no method starts from a source (all from scratch)."""
  from jshear.train.pipeline import parse_stages
  from jshear.train.stages.common import resolve_source
  pruned = [n for n, c in configs.items() if "pretrain" not in parse_stages(c.stages)]
  if not pruned:
    return None
  src_dir = cfg.init_from or resolve_source(cfg.model.source)
  h = heldout(configs[pruned[0]], src_dir, os.path.join(workdir, "source_heldout.json"), rows)
  ev = _domain_losses(h)
  return {"params": summaries[pruned[0]].get("source_params"), "eval": ev,
          "mean_loss": _mean(ev), "heldout": h}


def final_model_dir(workdir: str) -> str:
  """The last model a run wrote: the output of the last stage in its config.json's stages
  that left one (pretrained_2 after pretrain,grow,pretrain), else the first of the usual
  output dirs present."""
  from jshear.model_io import is_jshear_dir
  names = []
  cfg_path = os.path.join(workdir, "config.json")
  if os.path.exists(cfg_path):
    from jshear.train import stages as stage_table
    with open(cfg_path) as f:
      run_cfg = json.load(f)
    listed = [s.strip() for s in str(run_cfg.get("stages", "")).split(",") if s.strip()]
    try:
      names = [s.output for s in reversed(stage_table.occurrences(listed, run_cfg)) if s.output]
    except (JShearError, KeyError, TypeError):
      names = []   # an older or foreign stage list: fall back to the usual names
  for name in names + ["continued", "stitched", "pruned", "pretrained"]:
    if is_jshear_dir(os.path.join(workdir, name)):
      return os.path.join(workdir, name)
  raise JShearError(f"{workdir} has no finished model to evaluate")


def _source_config(cfg):
  """The source model's config (no weights), or None when the run pretrains from scratch."""
  from jshear.train.pipeline import parse_stages
  from jshear.model_io import read_model_config
  from jshear.train.stages.common import resolve_source
  if "pretrain" in parse_stages(cfg.stages):
    return None
  return read_model_config(cfg.init_from or resolve_source(cfg.model.source))


def _validate(configs: dict) -> None:
  from jshear import config_check
  from jshear.train.pipeline import parse_stages, prune_spec
  for c in configs.values():
    config_check.check(c)  # a bad value in a later method fails before the first runs
  pruning = [c for c in configs.values() if "pretrain" not in parse_stages(c.stages)]
  src = _source_config(pruning[0]) if pruning else None
  for c in pruning:
    stages = parse_stages(c.stages)
    if src is not None and ("prune" in stages or "finalize" in stages):
      prune_spec(c, src)
  _check_fair(configs)


def _check_fair(configs: dict) -> None:
  """Every method trains under the same data policy: one reweighting rule for every
  training step (a pruning stage that reweights while the one-shot methods' equivalent
  steps do not would steer one row only), and, when some methods train while pruning and
  others do not, one shared stream (data.stream=shared), so equal tokens are the same rows
  in the same order."""
  from jshear.train.pipeline import parse_stages, trains_in_prune
  problems = set()
  trained = {}
  for name, c in configs.items():
    if "pretrain" in parse_stages(c.stages):
      continue
    trained[name] = trains_in_prune(c)
    if trained[name] and c.prune.reweight_rule != c.continued.reweight_rule:
      problems.add(f"prune.reweight_rule={c.prune.reweight_rule!r} differs from "
                   f"continued.reweight_rule={c.continued.reweight_rule!r}, so the methods "
                   f"that train while pruning ({name}, ...) are reweighted on steps the "
                   f"others spend at continued's rule; set them equal")
  if len(set(trained.values())) > 1:
    stream = {c.data.get("stream", "per_stage") for n, c in configs.items() if n in trained}
    if stream != {"shared"}:
      problems.add("some methods train while pruning and others do not: set "
                   "data.stream=shared so that every method trains on the same rows in the "
                   "same order")
  if problems:
    raise JShearError("compare: unequal training conditions: " + "; ".join(sorted(problems)))


def compare(cfg, workdir: str) -> dict:
  """Runs every method of `cfg.compare.methods` and writes compare.{json,md,png}."""
  workdir = os.path.abspath(workdir)
  rows = runs(cfg)
  methods = [(name, m, layout) for name, m, layout, _ in rows]
  configs = {name: method_config(cfg, m, layout, r) for name, m, layout, r in rows}
  _validate(configs)  # every method's config, before spending time on the first
  summaries = {}
  tasks_spec, limit = "", 0
  if "compare" in cfg:
    tasks_spec = cfg.compare.get("zeroshot_tasks", "")
    limit = int(cfg.compare.get("zeroshot_limit", 0))
  if tasks_spec:
    from jshear.eval import tasks as eval_tasks
    eval_tasks.parse_task_names(tasks_spec)  # bad names fail before any run
  rows = int(cfg.compare.get("heldout_rows", 64)) if "compare" in cfg else 64
  paired_with = cfg.compare.get("paired_with", "") if "compare" in cfg else ""
  base_dir = _baseline_dir(paired_with, workdir, configs)
  for name, _, _ in methods:
    _log.info("compare: running %s", name)
    summaries[name] = run_one(configs[name], os.path.join(workdir, name))
    summaries[name]["heldout"] = heldout(configs[name], final_model_dir(
        os.path.join(workdir, name)), os.path.join(workdir, name, "heldout.json"), rows)
    summaries[name]["eval"] = {"final": _domain_losses(summaries[name]["heldout"])}
    if tasks_spec:
      final = summaries[name].get("hf_dir") or final_model_dir(summaries[name]["workdir"])
      summaries[name]["zero_shot"] = zero_shot(
          final, os.path.join(workdir, name, "zeroshot.json"), tasks_spec, limit)
  source_row = _source_heldout(cfg, configs, summaries, workdir, rows)
  res = collect(cfg, methods, summaries, configs)
  if source_row is not None:
    res["source"] = source_row
  res["zeroshot_limit"] = limit
  if paired_with:
    from jshear.eval.heldout import paired_difference
    if base_dir is None:
      label, base = paired_with, summaries[paired_with]["heldout"]
    else:  # an earlier run's model, scored here on the same rows (cached in its dir)
      label = os.path.relpath(base_dir, workdir)
      base = heldout(cfg, final_model_dir(base_dir), os.path.join(base_dir, "heldout.json"),
                     rows)
    res["paired_with"] = label
    for name, r in res["methods"].items():
      if r["heldout"] is not None and (base_dir is not None or name != paired_with):
        r["paired"] = paired_difference(r["heldout"], base)
  if tasks_spec and res["source"] is not None:
    from jshear.train.stages.common import resolve_source
    src_dir = cfg.init_from or resolve_source(cfg.model.source)
    res["source"]["zero_shot"] = zero_shot(src_dir, os.path.join(workdir, "source_zeroshot.json"),
                                           tasks_spec, limit)
    for name, r in res["methods"].items():
      r["bias"] = zero_shot_bias(os.path.join(workdir, name, "zeroshot.json"),
                                 os.path.join(workdir, "source_zeroshot.json"))
  import jax
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "compare.json"), "w") as f:
      json.dump(res, f, indent=2)
    with open(os.path.join(workdir, "compare.md"), "w") as f:
      f.write(to_markdown(res))
    res["plot"] = plot(res, os.path.join(workdir, "compare.png"))
  return res


# ---- CLI ------------------------------------------------------------------------------

def main(argv):
  del argv
  from jshear.cli import run_in_workdir
  print(to_markdown(run_in_workdir(compare, _CONFIG.value, _WORKDIR.value)))
  return 0


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Compare config (configs/*.py).",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all methods' runs.")
  flags.mark_flag_as_required("config")
  from jshear.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
