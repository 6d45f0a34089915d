"""Compare ways to shrink a model: every method prunes the same source to the same target on
the same data, then gets the same continued-pretraining budget.

  python -m jshear.compare --config=configs/compare_demo.py --workdir=DIR [--config.KEY=VALUE]

The config is a normal run config plus `compare.methods`, a comma-separated list of
`prune.method` values; `layerchop:<layout>` picks a LayerCHOP layout (e.g.
"layerchop:input,layerchop:both"). Each method is its own resumable pipeline run in
DIR/<method> (the name with ':' as '-'); a finished one is reused, not rerun. Then:

  DIR/compare.json  per method: params, target shape, per-domain held-out loss of the final
                    model and its mean, zero-shot accuracy on `compare.zeroshot_tasks` (the
                    first `compare.zeroshot_limit` documents of each; "" skips it), wall
                    time, tokens spent (prune / continue); the source model's for reference
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

import ml_collections as mlc

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
    if method not in PRUNE_METHODS:
      raise JShearError(f"compare.methods: unknown method {method!r} (known: {list(PRUNE_METHODS)})")
    if layout and method != "layerchop":
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


def method_config(cfg, method: str, layout: str | None):
  """The run config of one method: the shared config with its prune.method (and layout)."""
  c = mlc.ConfigDict(cfg.to_dict())
  if "compare" in c:
    del c["compare"]
  c.prune.method = method
  if layout:
    c.prune.layerchop_layout = layout
  c.final_eval = True  # the comparison needs every final model's held-out loss
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
  in `cache_path` for the same tasks and limit."""
  key = {"tasks": task_names, "limit": int(limit), "model": os.path.abspath(model_dir)}
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
  metrics = tasks.score_prepared(backend, prep, progress=False)
  acc = {n: float(metrics[n][tasks.PRIMARY_METRIC.get(n, "acc")]) for n in names}
  acc["mean"] = sum(acc.values()) / len(names)
  import jax
  if jax.process_index() == 0:
    with open(cache_path + ".tmp", "w") as f:
      json.dump({"key": key, "acc": acc}, f, indent=2)
    os.replace(cache_path + ".tmp", cache_path)
  return acc


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
    prune_tokens = (_tokens(cfg.prune, seq)
                    if trains_in_prune(configs[name]) and "prune" in stages else 0)
    out["methods"][name] = {
        "method": method, "layout": layout if method == "layerchop" else None,
        "params": s.get("final_params"),
        "shape": {k: fc.get(k) for k in ("num_layers", "num_heads", "num_kv_heads",
                                         "hidden_size", "intermediate_size")},
        "eval": final, "mean_loss": _mean(final), "wall_s": s.get("wall_s"),
        "prune_tokens": prune_tokens,
        "continue_tokens": out["continue_tokens"],
        "tokens_per_s": s.get("tokens_per_s"), "hf_dir": s.get("hf_dir"),
        "workdir": s.get("workdir"), "zero_shot": s.get("zero_shot")}
  return out


def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def to_markdown(res: dict) -> str:
  rows = list(res["methods"].items())
  domains = sorted({d for _, r in rows for d in r["eval"]} |
                   set((res.get("source") or {}).get("eval") or {}))
  t = res["target"]
  zs = sorted({k for _, r in rows for k in (r.get("zero_shot") or {}) if k != "mean"})
  zcols = [f"{k} acc" for k in zs] + (["mean acc"] if zs else [])
  zkeys = zs + (["mean"] if zs else [])
  zcell = lambda z: "".join(f" {_fmt((z or {}).get(k), '.3f')} |" for k in zkeys)
  lines = ["# Pruning methods compared", "",
           f"Target: {t.get('num_layers')} layers, {t.get('num_heads')} heads / "
           f"{t.get('num_kv_heads')} KV heads, hidden {t.get('hidden_size')}, intermediate "
           f"{t.get('intermediate_size')}. Continued pretraining: {res['continue_tokens']:,} "
           "tokens per method.", "",
           "| method | params | " + " | ".join(f"{d} loss" for d in domains) +
           " | mean loss |" + "".join(f" {c} |" for c in zcols) + " prune tokens | wall s |",
           "|---|---:|" + "---:|" * (len(domains) + len(zcols)) + "---:|---:|---:|"]
  src = res.get("source")
  if src:
    lines.append(f"| source | {_fmt(src['params'], ',')} | " +
                 " | ".join(_fmt(src["eval"].get(d), ".3f") for d in domains) +
                 f" | {_fmt(src['mean_loss'], '.3f')} |" + zcell(src.get("zero_shot")) + " - | - |")
  for name, r in sorted(rows, key=lambda kv: (kv[1]["mean_loss"] is None,
                                              kv[1]["mean_loss"] or 0.0)):
    lines.append(f"| {name} | {_fmt(r['params'], ',')} | " +
                 " | ".join(_fmt(r["eval"].get(d), ".3f") for d in domains) +
                 f" | {_fmt(r['mean_loss'], '.3f')} |" + zcell(r.get("zero_shot")) +
                 f" {r['prune_tokens']:,} | {_fmt(r['wall_s'], '.0f')} |")
  lines += ["", "Loss: mean next-token loss on each domain's held-out rows (nats). Rows "
            "sorted by mean loss."]
  if zs:
    lines += [f"Zero-shot: accuracy on the first {res.get('zeroshot_limit') or 'all'} documents "
              "of each task (acc_norm for piqa, hellaswag, openbookqa, arc_challenge; acc "
              "elsewhere)."]
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


def _final_model_dir(workdir: str) -> str:
  """The last model a run wrote (for runs without an export stage)."""
  for name in ("continued", "pruned", "pretrained"):
    if os.path.exists(os.path.join(workdir, name, "model_config.json")):
      return os.path.join(workdir, name)
  raise JShearError(f"{workdir} has no finished model to evaluate")


def _source_config(cfg):
  """The source model's config (no weights), or None when the run pretrains from scratch."""
  from jshear.train.pipeline import parse_stages
  from jshear.train.stages.common import model_config as _model_config, resolve_source
  if "pretrain" in parse_stages(cfg.stages):
    return None
  return _model_config(cfg.init_from or resolve_source(cfg.model.source))


def _validate(configs: dict) -> None:
  from jshear.train.pipeline import parse_stages, prune_spec
  src = _source_config(next(iter(configs.values())))
  for c in configs.values():
    stages = parse_stages(c.stages)
    if src is not None and ("prune" in stages or "finalize" in stages):
      prune_spec(c, src)


def compare(cfg, workdir: str) -> dict:
  """Runs every method of `cfg.compare.methods` and writes compare.{json,md,png}."""
  workdir = os.path.abspath(workdir)
  methods = parse_methods(cfg.compare.methods if "compare" in cfg else DEFAULT_METHODS)
  configs = {name: method_config(cfg, m, layout) for name, m, layout in methods}
  _validate(configs)  # every method's config, before spending time on the first
  summaries = {}
  tasks_spec, limit = "", 0
  if "compare" in cfg:
    tasks_spec = cfg.compare.get("zeroshot_tasks", "")
    limit = int(cfg.compare.get("zeroshot_limit", 0))
  if tasks_spec:
    from jshear.eval import tasks as eval_tasks
    eval_tasks.parse_task_names(tasks_spec)  # bad names fail before any run
  for name, _, _ in methods:
    _log.info("compare: running %s", name)
    summaries[name] = run_one(configs[name], os.path.join(workdir, name))
    if tasks_spec:
      final = summaries[name].get("hf_dir") or _final_model_dir(summaries[name]["workdir"])
      summaries[name]["zero_shot"] = zero_shot(
          final, os.path.join(workdir, name, "zeroshot.json"), tasks_spec, limit)
  res = collect(cfg, methods, summaries, configs)
  res["zeroshot_limit"] = limit
  if tasks_spec and res["source"] is not None:
    from jshear.train.stages.common import resolve_source
    src_dir = cfg.init_from or resolve_source(cfg.model.source)
    res["source"]["zero_shot"] = zero_shot(src_dir, os.path.join(workdir, "source_zeroshot.json"),
                                           tasks_spec, limit)
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
