"""Pruning-induced bias ("Simon Says", arXiv 2106.07849): does pruning hurt some classes
more than others, even when the mean accuracy barely moves?

  python -m jshear.eval bias --source=DIR --pruned=DIR[,DIR...] --tasks=piqa,arc_easy \
      [--limit N] [--out DIR] [--zero_rates=exclude|smooth] [--rule=acc|acc_norm] \
      [--each] [--bootstrap B [--seed S]]

Per class c, one-vs-rest rates: FPR_c = FP/(FP+TN), FNR_c = FN/(FN+TP), for the source and
each pruned model; several pruned models (trials) are averaged rate by rate. Each class is
the point (dFPR_c, dFNR_c), relative changes in percent: dX_c = 100 (X_c,pruned - X_c,src) /
X_c,src. Then

  CEV = mean_c ||p_c - centroid||^2 = Var dFPR + Var dFNR   (population variances, %^2).
        The public code (sklearn's mean_squared_error of the points against the centroid)
        averages over the two coordinates too, so its CEV is half of this one.
  SDE = mean_c |dFPR_c - dFNR_c| / sqrt 2   (each point's distance from the line dFPR = dFNR)
  PIEs  pruning-identified exemplars: documents where every pruned model's prediction differs
        from the source's.

A class whose source FPR or FNR is 0 (or undefined: no negatives or no positives) has no
relative change. `zero_rates="exclude"` (default) leaves it out of CEV/SDE, as the public code
does by dropping its inf/NaN; `"smooth"` gives that class add-alpha counts,
(FP + a) / (FP + TN + 2a) and (FN + a) / (FN + TP + 2a), for the source and every trial alike.
Either way the class is listed with its status; nothing divides by zero.

A prediction is the argmax of the choices' summed log-likelihoods (acc's rule, ties to the
lowest index), or with rule="acc_norm" of log-likelihood per character of the choice. A class
is the gold answer position, so the class set comes from the data (ARC: up to 5). With a
category (CATEGORY_FIELDS) as the class, a model predicts no category: each choice of each
document is one binary decision (picked or not, positive if gold), so FNR_c is category c's
error rate and FPR_c its errors per distractor; the points then lie on dFPR = dFNR (exactly,
when all documents have the same number of choices), SDE is 0 and CEV is twice the variance
of the relative change in per-category error rate.

`--each` compares each pruned model with the source on its own (the source scored once), not
as trials of one pruning. `--bootstrap B` adds standard errors of CEV and SDE from B resamples
of the documents, the same resamples for every model. See docs/bias_metrics.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Sequence

import numpy as np

from jshear.errors import JShearError, check

ZERO_RATES = ("exclude", "smooth")
RULES = ("acc", "acc_norm")
# The document field that names a task's category, for the tasks whose data has one.
CATEGORY_FIELDS = {"hellaswag": "activity_label", "copa": "question"}


# ---- counts and rates ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Counts:
  """One-vs-rest counts of one model, one entry per class (int arrays of shape [C])."""
  classes: tuple
  tp: np.ndarray
  fp: np.ndarray
  fn: np.ndarray
  tn: np.ndarray


def class_set(gold, *preds) -> tuple:
  """The classes that occur in the data: every gold label and every prediction."""
  out = set(np.asarray(gold).tolist())
  for p in preds:
    out |= set(np.asarray(p).tolist())
  return tuple(sorted(out))


def confusion(gold, pred, classes: Sequence) -> np.ndarray:
  """cm[i, j] = documents of gold class i predicted as class j."""
  index = {c: i for i, c in enumerate(classes)}
  gold, pred = np.asarray(gold).tolist(), np.asarray(pred).tolist()
  check(len(gold) == len(pred), f"{len(gold)} gold labels but {len(pred)} predictions")
  missing = (set(gold) | set(pred)) - index.keys()
  check(not missing, f"labels {sorted(missing)} are not in the class set {list(classes)}")
  cm = np.zeros((len(classes), len(classes)), np.int64)
  np.add.at(cm, ([index[g] for g in gold], [index[p] for p in pred]), 1)
  return cm


def from_confusion(cm, classes: Sequence | None = None) -> Counts:
  cm = np.asarray(cm, np.int64)
  check(cm.ndim == 2 and cm.shape[0] == cm.shape[1], f"confusion matrix must be square, got {cm.shape}")
  tp = np.diag(cm).copy()
  fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
  return Counts(tuple(range(len(cm))) if classes is None else tuple(classes),
                tp, fp, fn, cm.sum() - tp - fp - fn)


def group_counts(gold, pred, groups, n_choices, classes: Sequence | None = None) -> Counts:
  """Class = a category of the documents. Each choice is a binary decision (picked or not),
  positive when gold: TP = right documents, FN = FP = wrong ones, TN = unpicked distractors."""
  gold, pred = np.asarray(gold), np.asarray(pred)
  groups, n_choices = np.asarray(groups), np.asarray(n_choices, np.int64)
  classes = class_set(groups) if classes is None else tuple(classes)
  wrong = gold != pred
  tp, fp, tn = (np.zeros(len(classes), np.int64) for _ in range(3))
  for i, c in enumerate(classes):
    sel = groups == c
    tp[i], fp[i] = np.sum(~wrong[sel]), np.sum(wrong[sel])
    tn[i] = np.sum(n_choices[sel] - 1) - fp[i]
  return Counts(classes, tp, fp, fp.copy(), tn)


def _ratio(num, den) -> np.ndarray:
  """num / den, NaN where den is 0 (never a division by zero)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  out = np.full(np.broadcast(num, den).shape, np.nan)
  ok = den > 0
  np.divide(num, den, out=out, where=ok)
  return out


def rates(c: Counts, alpha=0.0) -> tuple[np.ndarray, np.ndarray]:
  """(FPR, FNR) per class, with add-`alpha` smoothing (a scalar or one per class)."""
  a = np.broadcast_to(np.asarray(alpha, np.float64), c.tp.shape)
  return _ratio(c.fp + a, c.fp + c.tn + 2 * a), _ratio(c.fn + a, c.fn + c.tp + 2 * a)


def _zero_reasons(src: Counts) -> list[str | None]:
  """Why each class has no relative change (None: it has one)."""
  fpr, fnr = rates(src)
  out = []
  for i in range(len(src.classes)):
    if src.fp[i] + src.tn[i] == 0:
      out.append("no negatives (FP+TN = 0)")
    elif src.fn[i] + src.tp[i] == 0:
      out.append("no positives (FN+TP = 0)")
    elif fpr[i] == 0 and fnr[i] == 0:
      out.append("source FPR = FNR = 0")
    elif fpr[i] == 0:
      out.append("source FPR = 0")
    elif fnr[i] == 0:
      out.append("source FNR = 0")
    else:
      out.append(None)
  return out


def cev(dfpr, dfnr) -> float | None:
  """Mean squared Euclidean distance of the points to their centroid (None: no points)."""
  p = np.stack([np.asarray(dfpr, np.float64), np.asarray(dfnr, np.float64)], axis=1)
  if not len(p):
    return None
  return float(np.mean(np.sum((p - p.mean(0)) ** 2, axis=1)))


def sde(dfpr, dfnr) -> float | None:
  """Mean distance of the points from the line dFPR = dFNR (None: no points)."""
  d = np.asarray(dfpr, np.float64) - np.asarray(dfnr, np.float64)
  return float(np.mean(np.abs(d)) / math.sqrt(2)) if len(d) else None


def bias_points(src: Counts, pruned: Sequence[Counts], zero_rates: str = "exclude",
                alpha: float = 0.5) -> dict:
  """Per-class points of the pruned models (rates averaged over them) against the source,
  with CEV and SDE over the classes kept; see the module docstring for zero base rates."""
  check(zero_rates in ZERO_RATES, f"zero_rates={zero_rates!r}: expected one of {ZERO_RATES}")
  check(len(pruned) > 0, "bias needs at least one pruned model")
  for p in pruned:
    check(p.classes == src.classes, f"pruned classes {p.classes} differ from the source's {src.classes}")
    same = (np.array_equal(p.tp + p.fn, src.tp + src.fn)
            and np.array_equal(p.tp + p.fp + p.fn + p.tn, src.tp + src.fp + src.fn + src.tn))
    check(same, "a pruned model's class totals differ from the source's: not the same documents")
  reasons = _zero_reasons(src)
  zero = np.array([r is not None for r in reasons], bool)
  smooth = zero_rates == "smooth"
  check(not smooth or alpha > 0, f"zero_rates=smooth needs alpha > 0, got {alpha}")
  a = np.where(zero, alpha, 0.0) if smooth else 0.0
  fpr_s, fnr_s = rates(src, a)
  trials = [rates(p, a) for p in pruned]
  fpr_p = np.mean([t[0] for t in trials], axis=0)
  fnr_p = np.mean([t[1] for t in trials], axis=0)
  keep = np.ones_like(zero) if smooth else ~zero
  dfpr, dfnr = np.full(len(zero), np.nan), np.full(len(zero), np.nan)
  dfpr[keep] = 100 * (fpr_p[keep] - fpr_s[keep]) / fpr_s[keep]
  dfnr[keep] = 100 * (fnr_p[keep] - fnr_s[keep]) / fnr_s[keep]
  status = ["ok" if not z else ("smoothed" if smooth else "excluded") for z in zero]
  return {"classes": list(src.classes), "status": status, "reason": reasons,
          "n_gold": (src.tp + src.fn).tolist(),
          "fpr_source": fpr_s, "fnr_source": fnr_s, "fpr_pruned": fpr_p, "fnr_pruned": fnr_p,
          "fpr_trials": [t[0] for t in trials], "fnr_trials": [t[1] for t in trials],
          "dfpr": dfpr, "dfnr": dfnr, "cev": cev(dfpr[keep], dfnr[keep]),
          "sde": sde(dfpr[keep], dfnr[keep]), "zero_rates": zero_rates,
          "alpha": float(alpha) if smooth else None}


def pies(src_pred, pruned_preds: Sequence) -> np.ndarray:
  """Indices of the documents where every pruned model disagrees with the source."""
  src = np.asarray(src_pred)
  p = np.stack([np.asarray(x) for x in pruned_preds])
  check(p.shape[1:] == src.shape, "pruned predictions must cover the source's documents")
  return np.flatnonzero(np.all(p != src[None], axis=0))


# ---- one task -----------------------------------------------------------------------------

def predict(lls: Sequence[Sequence[float]], choices: Sequence[Sequence[str]],
            rule: str = "acc") -> np.ndarray:
  """The chosen answer per document, by acc's or acc_norm's rule (as `tasks.task_metrics`)."""
  check(rule in RULES, f"rule={rule!r}: expected one of {RULES}")
  out = []
  for l, ch in zip(lls, choices):
    l = np.asarray(l, np.float64)
    if rule == "acc_norm":
      l = l / np.array([float(len(c)) for c in ch])
    out.append(int(np.argmax(l)))
  return np.array(out, np.int64)


def _counter(gold, src_pred, pruned_preds, n_choices, groups):
  """count(pred, docs): the Counts of `pred` on the documents `docs` (indices), over the class
  set of all the documents, so that a resample keeps every class (possibly empty)."""
  gold, n_choices = np.asarray(gold), np.asarray(n_choices)
  if groups is None:
    classes = class_set(gold, src_pred, *pruned_preds)
    return lambda p, d: from_confusion(confusion(gold[d], np.asarray(p)[d], classes), classes)
  groups = np.asarray(groups)
  classes = class_set(groups)
  return lambda p, d: group_counts(gold[d], np.asarray(p)[d], groups[d], n_choices[d], classes)


def bootstrap(gold, src_pred, pruned_preds: Sequence, n_choices, groups=None,
              zero_rates: str = "exclude", alpha: float = 0.5, draws: int = 200,
              seed: int = 0) -> dict:
  """Standard errors of CEV and SDE by resampling documents with replacement: the source and
  every pruned model see the same resample, and the same `seed` gives the same resamples for
  any model on the same documents, so draws of two models can be paired. A draw where no class
  keeps a relative change has no CEV; `usable` counts the others."""
  return _bootstrap(_counter(gold, src_pred, pruned_preds, n_choices, groups), len(gold),
                    src_pred, pruned_preds, zero_rates, alpha, draws, seed)


def _bootstrap(count, n, src_pred, pruned_preds, zero_rates, alpha, draws, seed) -> dict:
  check(draws >= 2, f"bootstrap needs at least 2 draws, got {draws}")
  rng = np.random.default_rng(seed)
  cevs, sdes = np.full(draws, np.nan), np.full(draws, np.nan)
  for b in range(draws):
    d = rng.integers(0, n, n)
    r = bias_points(count(src_pred, d), [count(p, d) for p in pruned_preds], zero_rates, alpha)
    if r["cev"] is not None:
      cevs[b], sdes[b] = r["cev"], r["sde"]
  ok = np.isfinite(cevs)
  se = lambda x: float(np.std(x[ok], ddof=1)) if ok.sum() >= 2 else None
  # CEV divides by small base rates, so its resamples are skewed at a few hundred documents:
  # the 5-95% interval says that where the s.e. alone would not
  mid = lambda x: [float(v) for v in np.percentile(x[ok], [5, 95])] if ok.sum() >= 2 else None
  return {"draws": int(draws), "seed": int(seed), "usable": int(ok.sum()),
          "cev_se": se(cevs), "sde_se": se(sdes), "cev_90": mid(cevs), "sde_90": mid(sdes),
          "cev_draws": cevs, "sde_draws": sdes}


def task_bias(gold, src_pred, pruned_preds: Sequence, n_choices, groups=None,
              zero_rates: str = "exclude", alpha: float = 0.5, draws: int = 0,
              seed: int = 0) -> dict:
  """Everything for one task: accuracies, per-class points, CEV, SDE, PIEs, and with `draws`
  > 0 their bootstrap standard errors. `groups`: a category per document (class = category)
  or None (class = gold answer position)."""
  gold = np.asarray(gold)
  count = _counter(gold, src_pred, pruned_preds, n_choices, groups)
  every = np.arange(len(gold))
  res = bias_points(count(src_pred, every), [count(p, every) for p in pruned_preds],
                    zero_rates, alpha)
  res["bootstrap"] = (_bootstrap(count, len(gold), src_pred, pruned_preds, zero_rates, alpha,
                                 draws, seed) if draws else None)
  idx = pies(src_pred, pruned_preds)
  hist = np.unique(np.asarray(n_choices), return_counts=True)
  res.update(n=int(len(gold)), class_by="answer" if groups is None else "category",
             choice_counts={int(k): int(v) for k, v in zip(*hist)},
             accuracy={"source": float(np.mean(np.asarray(src_pred) == gold)),
                       "pruned": [float(np.mean(np.asarray(p) == gold)) for p in pruned_preds]},
             pies=idx.tolist())
  return res


# ---- models -------------------------------------------------------------------------------

_ID_KEYS = ("vocab_size", "vocab_hash", "bos_id", "eos_id", "model_vocab_size")


def model_identity(path: str, flag: str = "--model") -> dict:
  """What must match across the compared models: the tokenizer (jshear.data.prepare's
  tokenizer_id) and the model's embedding rows."""
  from jshear.data.prepare import tokenizer_id
  from jshear.eval import loader
  from jshear.model_io import load_tokenizer, read_model_config
  check(os.path.isdir(path), f"{flag} {path}: no such directory")
  path = os.path.abspath(path)
  ident = tokenizer_id(load_tokenizer(loader.tokenizer_path(path, loader.model_kind(path))))
  ident["model_vocab_size"] = int(read_model_config(path).vocab_size)
  return ident


def check_same_vocab(source: str, pruned: Sequence[str]) -> None:
  """Refuse a pruned model whose tokenizer or vocabulary is not the source's: the models must
  score the same token sequences."""
  want = model_identity(source, "--source")
  for p in pruned:
    got = model_identity(p, "--pruned")
    for key in _ID_KEYS:
      if want[key] != got[key]:
        raise JShearError(
            f"--pruned {p}: its tokenizer/vocabulary differs from --source {source} "
            f"({key} {got[key]} vs {want[key]}); bias compares the models on the same tokens")


def score_model(path: str, prep, rule: str, *, dtype=None, tokens_per_batch: int = 2048,
                max_length: int | None = None) -> dict[str, np.ndarray]:
  """{task: predicted choice per document} of one model dir."""
  from jshear.eval import loader, scoring
  from jshear.model.config import compute_dtype
  m = loader.load(path)
  max_len = max_length or min(m.cfg.max_position_embeddings, 4096)
  backend = scoring.JaxBackend(m.cfg, m.params, compute_dtype=compute_dtype(dtype),
                               max_length=max_len)
  ll, _ = scoring.score_requests(backend, prep.encoded, tokens_per_batch=tokens_per_batch,
                                 desc=f"bias: {os.path.basename(m.path)}")
  out = {}
  for name in prep.names:
    lls = [ll[a:b] for a, b in prep.spans[name]]
    out[name] = predict(lls, [i.choices for i in prep.insts[name]], rule)
  return out


def _categories(name: str, limit: int | None, root: str) -> list:
  from jshear.eval import tasks
  field = CATEGORY_FIELDS[name]
  docs = tasks.load_docs(tasks.TASKS[name], root)
  return [str(d[field]) for d in (docs if limit is None else docs[:limit])]


def parse_dirs(spec: str) -> list[str]:
  dirs = [s.strip() for s in str(spec).split(",") if s.strip()]
  check(dirs, "--pruned: no model dir given")
  return dirs


def check_tasks(names: Sequence[str], by_category: Sequence[str]) -> None:
  from jshear.eval import tasks
  for n in names:
    check(tasks.TASKS[n].kind == "multiple_choice",
          f"bias: task {n} is not multiple-choice (it has no answer classes)")
  for n in by_category:
    check(n in names, f"--by_category {n}: not among --tasks")
    check(n in CATEGORY_FIELDS, f"--by_category {n}: its data has no category field (tasks "
                                f"with one: {', '.join(CATEGORY_FIELDS)})")


def evaluate(source: str, pruned: Sequence[str], task_names, root, *, limit=None,
             rule: str = "acc", zero_rates: str = "exclude", alpha: float = 0.5,
             by_category: Sequence[str] = (), dtype=None, tokens_per_batch: int = 2048,
             each: bool = False, draws: int = 0, seed: int = 0) -> dict:
  """Score the source and every pruned model on the tasks; the result as `to_markdown` and
  `write_outputs` take it. The pruned models are trials of one pruning (rates averaged), or
  with `each` separate models, each against the source scored once (the result's "runs": one
  ordinary result per model). `draws`: bootstrap resamples for standard errors (0: none).
  `root`: the eval-set dir, or a function giving it (called after the refusals, so bad input
  fails before any fetch)."""
  from jshear.eval import loader, tasks
  from jshear.model_io import load_tokenizer
  names = tasks.parse_task_names(task_names)
  check_tasks(names, by_category)
  check(zero_rates in ZERO_RATES, f"--zero_rates={zero_rates}: expected one of {ZERO_RATES}")
  check(rule in RULES, f"--rule={rule}: expected one of {RULES}")
  check_same_vocab(source, pruned)
  root = root() if callable(root) else root
  src = os.path.abspath(source)
  tok = load_tokenizer(loader.tokenizer_path(src, loader.model_kind(src)))
  prep = tasks.prepare(tok, names, limit, root)
  preds = [score_model(p, prep, rule, dtype=dtype, tokens_per_batch=tokens_per_batch)
           for p in [source, *pruned]]
  groups = {n: _categories(n, limit, root) if n in by_category else None for n in names}

  def result(models: Sequence[int]) -> dict:
    out = {"source": src, "pruned": [os.path.abspath(pruned[m]) for m in models],
           "rule": rule, "zero_rates": zero_rates,
           "alpha": alpha if zero_rates == "smooth" else None, "limit": limit,
           "cev_definition": "mean squared distance to the centroid "
           "(= Var dFPR + Var dFNR; the public code's value is half of it)", "tasks": {}}
    for name in names:
      insts = prep.insts[name]
      out["tasks"][name] = task_bias(
          [i.gold for i in insts], preds[0][name], [preds[1 + m][name] for m in models],
          [len(i.choices) for i in insts], groups[name], zero_rates, alpha, draws, seed)
    return out

  if not each:
    return result(range(len(pruned)))
  runs = [result([m]) for m in range(len(pruned))]
  return {"source": src, "pruned": [r["pruned"][0] for r in runs],
          "labels": labels(pruned), "each": True, "runs": runs, "rule": rule,
          "zero_rates": zero_rates, "alpha": runs[0]["alpha"], "limit": limit}


def paired_difference(res: dict, a: str, b: str) -> dict:
  """{task: {"cev"|"sde"|"pies": (value b - value a, its paired s.e. or None)}} for two
  models of one `--each --bootstrap` result, by label. Both models' draws used the same
  resamples (same seed, same documents), so the s.e. is that of the draw-by-draw difference,
  which cancels the documents' shared difficulty."""
  check(res.get("each"), "paired_difference needs an --each result")
  by = dict(zip(res["labels"], res["runs"]))
  for lab in (a, b):
    check(lab in by, f"no model labelled {lab!r}; labels: {', '.join(res['labels'])}")
  out = {}
  for name, ta in by[a]["tasks"].items():
    tb, row = by[b]["tasks"][name], {}
    for key in ("cev", "sde"):
      va, vb = ta[key], tb[key]
      diff = None if va is None or vb is None else float(vb - va)
      se = None
      if diff is not None and ta.get("bootstrap") and tb.get("bootstrap"):
        da = np.array(ta["bootstrap"][f"{key}_draws"], float)
        db = np.array(tb["bootstrap"][f"{key}_draws"], float)
        ok = np.isfinite(da) & np.isfinite(db)
        se = float(np.std(db[ok] - da[ok], ddof=1)) if ok.sum() >= 2 else None
      row[key] = (diff, se)
    # one model a run, so its PIEs are its disagreements with the source: the s.e. of the
    # difference of two counts is that of a sum of per-document paired differences
    n = ta["n"]
    d = np.zeros(n)
    d[np.asarray(tb["pies"], np.int64)] += 1
    d[np.asarray(ta["pies"], np.int64)] -= 1
    row["pies"] = (int(d.sum()), float(np.sqrt(n) * np.std(d, ddof=1)) if n >= 2 else None)
    out[name] = row
  return out


def labels(dirs: Sequence[str]) -> list[str]:
  """Short names of model dirs: their paths below the dirs' common parent."""
  paths = [os.path.abspath(d) for d in dirs]
  if len(paths) == 1:
    return [os.path.basename(paths[0])]
  top = os.path.commonpath(paths)
  return [os.path.relpath(p, top) if p != top else os.path.basename(p) for p in paths]


# ---- outputs ------------------------------------------------------------------------------

def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def _f(v, fmt=".4f"):
  return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def _zero_rates_text(res: dict) -> str:
  return res["zero_rates"] + (f" (alpha {res['alpha']})" if res["alpha"] is not None else "")


def _not_kept(t: dict) -> str:
  """The classes excluded or smoothed, with their status."""
  return ", ".join(f"{c} ({s})" for c, s in zip(t["classes"], t["status"]) if s != "ok") or "-"


def _pm(t: dict, key: str, fmt: str) -> str:
  """CEV or SDE, with its bootstrap standard error when there is one."""
  b = t.get("bootstrap")
  se = b and b[f"{key}_se"]
  return _f(t[key], fmt) + (f" ± {_f(se, fmt)}" if se is not None and t[key] is not None else "")


def _se_note(res: dict) -> str:
  b = [t.get("bootstrap") for t in res["tasks"].values()] if "tasks" in res else [
      t.get("bootstrap") for r in res["runs"] for t in r["tasks"].values()]
  b = [x for x in b if x]
  if not b:
    return ""
  usable = min(x["usable"] for x in b)
  return (f" ±: bootstrap standard error over {b[0]['draws']} resamples of the documents "
          f"(seed {b[0]['seed']}; the same resamples for every model; fewest usable draws "
          f"{usable}).")


def each_markdown(res: dict) -> str:
  """--each: one summary row per pruned model and task, then each model's own tables."""
  zr = _zero_rates_text(res)
  lines = ["# Pruning-induced bias of each model (Simon Says, arXiv 2106.07849)", "",
           f"Source: `{res['source']}`, scored once; each pruned model against it alone. "
           f"Prediction rule: {res['rule']}. Zero base rates: {zr}. CEV in %^2 (twice the "
           "public code's), SDE in %." + _se_note(res), "",
           "|model|task|n|acc source|acc model|CEV|SDE|PIEs|classes not kept as is|",
           "|---|---|---:|---:|---:|---:|---:|---:|---|"]
  for label, r in zip(res["labels"], res["runs"]):
    for name, t in r["tasks"].items():
      lines.append(f"|{label}|{name}|{t['n']}|{_f(t['accuracy']['source'])}|"
                   f"{_f(t['accuracy']['pruned'][0])}|{_pm(t, 'cev', '.0f')}|"
                   f"{_pm(t, 'sde', '.1f')}|{len(t['pies'])}|{_not_kept(t)}|")
  for label, r in zip(res["labels"], res["runs"]):
    body = to_markdown(r).split("\n")
    lines += ["", f"## {label}", ""] + ["#" + l if l.startswith("#") else l for l in body[2:]]
  return "\n".join(lines).rstrip("\n") + "\n"


def to_markdown(res: dict) -> str:
  if res.get("each"):
    return each_markdown(res)
  rule = {"acc": "argmax of the choices' summed log-likelihoods (acc's rule)",
          "acc_norm": "argmax of log-likelihood per character (acc_norm's rule)"}[res["rule"]]
  zr = _zero_rates_text(res)
  lines = ["# Pruning-induced bias (Simon Says, arXiv 2106.07849)", "",
           f"Source: `{res['source']}`. Pruned ({len(res['pruned'])}; rates averaged): " +
           ", ".join(f"`{p}`" for p in res["pruned"]) + ".", "",
           f"Prediction: {rule}. Zero base rates: {zr}. CEV: mean squared distance of the "
           "class points (dFPR, dFNR) to their centroid, %^2 (the public code's CEV is half "
           "of it). SDE: mean |dFPR - dFNR| / sqrt 2, %. PIEs: documents where every pruned "
           "model disagrees with the source." + _se_note(res), "",
           "|task|classes|n|acc source|acc pruned (mean)|CEV|SDE|PIEs|not kept as is|",
           "|---|---|---:|---:|---:|---:|---:|---:|---|"]
  for name, t in res["tasks"].items():
    lines.append(f"|{name}|{t['class_by']}|{t['n']}|{_f(t['accuracy']['source'])}|"
                 f"{_f(float(np.mean(t['accuracy']['pruned'])))}|{_pm(t, 'cev', '.2f')}|"
                 f"{_pm(t, 'sde', '.2f')}|{len(t['pies'])}|{_not_kept(t)}|")
  for name, t in res["tasks"].items():
    counts = ", ".join(f"{k} choices: {v}" for k, v in t["choice_counts"].items())
    what = "gold answer position" if t["class_by"] == "answer" else "document category"
    lines += ["", f"## {name}", "", f"Class: {what}. Documents: {t['n']} ({counts}).", "",
              "|model|accuracy|", "|---|---:|", f"|source|{_f(t['accuracy']['source'])}|"]
    lines += [f"|pruned {i + 1} `{os.path.basename(p)}`|{_f(a)}|"
              for i, (p, a) in enumerate(zip(res["pruned"], t["accuracy"]["pruned"]))]
    lines += ["", "|class|n gold|FPR src|FNR src|FPR pruned|FNR pruned|dFPR %|dFNR %|status|",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, c in enumerate(t["classes"]):
      st = t["status"][i] + (f": {t['reason'][i]}" if t["reason"][i] else "")
      lines.append(f"|{c}|{t['n_gold'][i]}|{_f(t['fpr_source'][i])}|{_f(t['fnr_source'][i])}|"
                   f"{_f(t['fpr_pruned'][i])}|{_f(t['fnr_pruned'][i])}|{_f(t['dfpr'][i], '.1f')}|"
                   f"{_f(t['dfnr'][i], '.1f')}|{st}|")
  return "\n".join(lines) + "\n"


def _pyplot():
  try:
    import matplotlib
  except ImportError:
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_each(res: dict, path: str) -> bool:
  """--each: CEV and SDE of every model per task, bars with their standard errors."""
  plt = _pyplot()
  if plt is None:
    return False
  names = list(res["runs"][0]["tasks"])
  fig, axes = plt.subplots(len(names), 2, figsize=(10, 0.35 * len(res["runs"]) * len(names) + 2),
                           squeeze=False)
  y = np.arange(len(res["runs"]))
  for row, name in zip(axes, names):
    for ax, key in zip(row, ("cev", "sde")):
      ts = [r["tasks"][name] for r in res["runs"]]
      val = np.array([np.nan if t[key] is None else t[key] for t in ts], float)
      se = np.array([np.nan if not t.get("bootstrap") or t["bootstrap"][f"{key}_se"] is None
                     else t["bootstrap"][f"{key}_se"] for t in ts], float)
      ax.barh(y, np.nan_to_num(val), xerr=np.where(np.isfinite(se), se, 0), color="C0")
      ax.set_yticks(y, res["labels"], fontsize=7)
      ax.invert_yaxis()
      ax.set(title=f"{name}: {key.upper()}", xlabel="%^2" if key == "cev" else "%")
      ax.grid(alpha=0.3, axis="x")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot(res: dict, path: str) -> bool:
  """Scatter of the per-class points, one panel per task (False: matplotlib is missing)."""
  if res.get("each"):
    return plot_each(res, path)
  plt = _pyplot()
  if plt is None:
    return False
  names = list(res["tasks"])
  cols = min(3, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows), squeeze=False)
  for ax in axes.flat[len(names):]:
    ax.set_axis_off()
  for ax, name in zip(axes.flat, names):
    t = res["tasks"][name]
    x, y = np.asarray(t["dfpr"], float), np.asarray(t["dfnr"], float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.any():
      ax.scatter(x[ok], y[ok], s=18)
      for c, a, b in zip(np.asarray(t["classes"], object)[ok], x[ok], y[ok]):
        ax.annotate(str(c), (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
      ax.scatter([x[ok].mean()], [y[ok].mean()], marker="x", color="k", label="centroid")
      lo, hi = min(x[ok].min(), y[ok].min(), 0), max(x[ok].max(), y[ok].max(), 0)
      ax.plot([lo, hi], [lo, hi], ls=":", color="0.5", lw=1, label="dFPR = dFNR")
      ax.legend(fontsize=7)
    else:
      ax.text(0.5, 0.5, "no class kept", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=f"{name}: CEV {_f(t['cev'], '.1f')}, SDE {_f(t['sde'], '.1f')}",
           xlabel="dFPR (%)", ylabel="dFNR (%)")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_outputs(res: dict, out_dir: str, overwrite: bool = False) -> list[str]:
  """bias.md, bias.json and bias.png in `out_dir`, which appears whole or not at all."""
  from jshear.atomic import atomic_dir, write_json
  with atomic_dir(out_dir, overwrite, flag="--overwrite") as tmp:
    with open(os.path.join(tmp, "bias.md"), "w") as f:
      f.write(to_markdown(res))
    write_json(os.path.join(tmp, "bias.json"), _jsonable(res))
    made = ["bias.md", "bias.json"]
    if plot(res, os.path.join(tmp, "bias.png")):
      made.append("bias.png")
    else:
      print("bias: matplotlib is not installed; no bias.png", file=sys.stderr)
  return [os.path.join(out_dir, m) for m in made]


def run(args, eval_root) -> int:
  """The `bias` command: refusals first (nothing is written), then scoring, then outputs.
  `eval_root()` gives the eval-set dir (the CLI's way to fetch it)."""
  import contextlib
  pruned = parse_dirs(args.pruned)
  by_cat = [s.strip() for s in (args.by_category or "").split(",") if s.strip()]
  if args.out and os.path.exists(args.out) and not args.overwrite:
    raise JShearError(f"--out {args.out} already exists (pass --overwrite to replace it)")
  check(args.bootstrap == 0 or args.bootstrap >= 2,
        f"--bootstrap: 0 (none) or at least 2 resamples, got {args.bootstrap}")
  with contextlib.redirect_stdout(sys.stderr):  # stdout holds the table alone
    res = evaluate(args.source, pruned, args.tasks, eval_root, limit=args.limit,
                   rule=args.rule, zero_rates=args.zero_rates, alpha=args.alpha,
                   by_category=by_cat, dtype=args.dtype, tokens_per_batch=args.tokens_per_batch,
                   each=args.each, draws=args.bootstrap, seed=args.seed)
    if args.out:
      for p in write_outputs(res, args.out, args.overwrite):
        print(f"wrote {p}")
  print(to_markdown(res), end="")
  return 0
