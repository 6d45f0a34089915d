"""BiMix's mixing law, fitted on short runs, and the mixture it calls best (docs/mixlaw.md).

  python -m jshear.data mixlaw fit --runs RUN [RUN ...] --out LAW.json [--stage continue]
  python -m jshear.data mixlaw optimize --law LAW.json --steps N [--out MIX.json|MIX.py]

Per domain i, at training step s with the domain's share r_i of the mixture:

  L_i(s, r_i) = r_i^-alpha_i * (b_i * s^-beta_i + c_i)      b_i, c_i > 0; alpha_i, beta_i >= 0

BiMix writes A_i / r_i^alpha_i * (B_i / s^beta_i + C_i); only A*B and A*C are identifiable,
so A is absorbed (b = A*B, c = A*C). Each domain is fitted alone, by least squares on log
losses (a loss of 2 and one of 4 count alike), positivity by parametrisation (log b, log c)
and bounds (alpha, beta). The runs are jshear workdirs (config.json + metrics.jsonl), each
one fixed mixture: its stage's initial domain weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass, field

import numpy as np

from jshear.atomic import atomic_write, write_json
from jshear.errors import JShearError, check
from jshear.metrics import read_metrics

FORMAT = "jshear.mixlaw.v1"
LAW = "L_i(s, r_i) = r_i^-alpha_i * (b_i * s^-beta_i + c_i)"
# Training stages and their config blocks (jshear/train/stages/*.py STAGE declarations; a
# test keeps the two equal; jshear.data may not import jshear.train).
STAGE_BLOCKS = {"pretrain": "pretrain", "prune": "prune", "continue": "continued"}
MIN_MIXTURES = 3
MIN_STEPS = 3
EXPONENT_MAX = 5.0   # alpha, beta in [0, 5]: beyond that a term is a step function
LOG_COEF_BOUND = 60.0  # |log b|, |log c|: keeps the solver off exp overflow
_BETA_STARTS = (0.05, 0.15, 0.3, 0.5, 0.8, 1.2, 2.0)


# ---- the law -----------------------------------------------------------------------------

def log_law(theta, log_s, log_r):
  """log L for theta = (alpha, beta, log b, log c)."""
  alpha, beta, lb, lc = theta
  return -alpha * log_r + np.logaddexp(lb - beta * log_s, lc)


def predict(coef: dict, s, r):
  """L(s, r) of one domain's fitted coefficients (dict with alpha, beta, b, c)."""
  s, r = np.asarray(s, float), np.asarray(r, float)
  return r ** -coef["alpha"] * (coef["b"] * s ** -coef["beta"] + coef["c"])


def _residuals(theta, log_s, log_r, log_y):
  return log_y - log_law(theta, log_s, log_r)


def _jacobian(theta, log_s, log_r, log_y):
  _, beta, lb, lc = theta
  u = lb - beta * log_s
  w = 1.0 / (1.0 + np.exp(np.clip(lc - u, -700, 700)))  # the b term's share of b s^-beta + c
  return -np.stack([-log_r, -log_s * w, w, 1.0 - w], axis=1)


def _starts(log_s, log_r, log_y) -> list:
  """Starting points: alpha from a regression of log L on log r (with a quadratic in log s
  for the step), then for each beta of a grid the best b, c >= 0 (NNLS); the best few."""
  from scipy.optimize import nnls
  X = np.stack([-log_r, np.ones_like(log_s), log_s, log_s ** 2], axis=1)
  alpha = float(np.clip(np.linalg.lstsq(X, log_y, rcond=None)[0][0], 0.0, EXPONENT_MAX))
  y = np.exp(log_y + alpha * log_r)  # b s^-beta + c
  scored = []
  for beta in _BETA_STARTS:
    A = np.stack([np.exp(-beta * log_s), np.ones_like(log_s)], axis=1)
    bc, _ = nnls(A, y)
    floor = 1e-6 * float(np.mean(y))
    lb, lc = (math.log(max(v, floor)) for v in bc)
    theta = np.array([alpha, beta, lb, lc])
    scored.append((float(np.sum(_residuals(theta, log_s, log_r, log_y) ** 2)), theta))
  scored.sort(key=lambda t: t[0])
  return [t for _, t in scored[:3]]


def fit_domain(s, r, loss) -> dict:
  """Coefficients, their standard errors, and the fit's errors on its own points."""
  from scipy.optimize import least_squares
  s, r, loss = (np.asarray(x, float) for x in (s, r, loss))
  check(all(np.all(np.isfinite(x) & (x > 0)) for x in (s, r, loss)),
        "fit_domain: steps, weights and losses must be finite and > 0")
  log_s, log_r, log_y = np.log(s), np.log(r), np.log(loss)
  lo = [0.0, 0.0, -LOG_COEF_BOUND, -LOG_COEF_BOUND]
  hi = [EXPONENT_MAX, EXPONENT_MAX, LOG_COEF_BOUND, LOG_COEF_BOUND]
  best = None
  for x0 in _starts(log_s, log_r, log_y):
    x0 = np.clip(x0, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
    res = least_squares(_residuals, x0, jac=_jacobian, bounds=(lo, hi), method="trf",
                        x_scale="jac", ftol=1e-14, xtol=1e-14, gtol=1e-14, max_nfev=5000,
                        args=(log_s, log_r, log_y))
    if best is None or res.cost < best.cost:
      best = res
  alpha, beta, lb, lc = (float(v) for v in best.x)
  resid = best.fun
  dof = max(len(resid) - 4, 1)
  cov = np.linalg.pinv(best.jac.T @ best.jac) * float(resid @ resid) / dof
  se = np.sqrt(np.maximum(np.diag(cov), 0.0))
  coef = {"alpha": alpha, "beta": beta, "b": math.exp(lb), "c": math.exp(lc)}
  rel = np.abs(predict(coef, s, r) / loss - 1.0)
  at_bound = [n for n, v, a, z in zip(("alpha", "beta", "log_b", "log_c"), best.x, lo, hi)
              if abs(v - a) < 1e-6 or abs(v - z) < 1e-6]
  return {**coef,
          "se": {"alpha": float(se[0]), "beta": float(se[1]), "log_b": float(se[2]),
                 "log_c": float(se[3])},
          "at_bound": at_bound, "points": int(len(loss)),
          "rmse_log": float(np.sqrt(np.mean(resid ** 2))), "mean_rel_err": float(np.mean(rel))}


# ---- the runs ----------------------------------------------------------------------------

@dataclass
class Run:
  """One workdir's stage: its fixed mixture and per-domain eval losses by step."""
  path: str
  data_dir: str
  vocab_hash: str
  batch_size: int
  weights: dict                      # {domain: r}, sums to 1, every prepared domain
  losses: dict                       # {step: {domain: loss}}
  notes: list = field(default_factory=list)


def _load_config(path: str) -> dict:
  cpath = os.path.join(path, "config.json")
  check(os.path.isfile(cpath), f"run {path}: no config.json (not a jshear workdir)")
  try:
    with open(cpath) as f:
      return json.load(f)
  except json.JSONDecodeError as err:
    raise JShearError(f"run {path}: config.json is not JSON ({err})") from None


def _config_weights(path: str, block: dict, domains: list, where: str) -> dict:
  """The loader's starting weights (as jshear.train.loop._initial_weights, normalised as
  MixtureLoader does): empty -> uniform; domains not named get 0."""
  w = dict(block.get("domain_weights") or {})
  if not w:
    return {d: 1.0 / len(domains) for d in domains}
  unknown = sorted(set(w) - set(domains))
  check(not unknown, f"run {path}: {where}.domain_weights names {unknown}, which its data "
                     f"dir does not have ({domains})")
  v = np.array([float(w.get(d, 0.0)) for d in domains])
  check(np.all(np.isfinite(v)) and np.all(v >= 0) and v.sum() > 0,
        f"run {path}: {where}.domain_weights {w} is not a mixture")
  return {d: float(x) for d, x in zip(domains, v / v.sum())}


def _logged_weights(path: str, recs: list, domains: list, last: float) -> dict | None:
  """The data/weight/<domain> the loop logged up to step `last`; refuses if they vary."""
  seen = None
  for r in recs:
    if r["step"] > last or not any(k.startswith("data/weight/") for k in r):
      continue
    w = {d: float(r.get(f"data/weight/{d}", 0.0)) for d in domains}
    if seen is None:
      seen = (r["step"], w)
    elif any(abs(w[d] - seen[1][d]) > 1e-6 for d in domains):
      raise JShearError(f"run {path}: the logged mixture changed between steps {seen[0]} and "
                        f"{r['step']} ({seen[1]} -> {w}); the law needs one fixed mixture")
  return None if seen is None else seen[1]


def _upsampling_start(block: dict) -> float:
  """First step whose batch is upsampled (inf: none); evals after it saw another mixture."""
  from jshear.data.upsample import upsampling_starts
  frac = float(block.get("upsample_last_fraction") or 0.0)
  factors = dict(block.get("upsample_factors") or {})
  if frac <= 0 or all(float(f) == 1.0 for f in factors.values()):
    return math.inf
  return upsampling_starts(int(block["steps"]), frac)


def read_run(path: str, stage: str = "continue", min_step: int = 1,
             data_dir: str | None = None) -> Run:
  """A workdir's stage as a Run. data_dir: for a run whose config has no data.path
  (data.corpus=local): the prepared dir it trained on."""
  from jshear.data.prepare import load_manifest
  path = os.path.abspath(path)
  check(os.path.isdir(path), f"run {path}: not a directory")
  cfg = _load_config(path)
  where = STAGE_BLOCKS[stage]
  block = cfg.get(where)
  check(isinstance(block, dict), f"run {path}: config.json has no {where} block")
  rule = block.get("reweight_rule", "constant")
  check(rule == "constant",
        f"run {path}: stage {stage} reweights dynamically ({where}.reweight_rule={rule}), so "
        f"it trained on no one mixture; fit on runs with reweight_rule=constant")
  dpath = (cfg.get("data") or {}).get("path") or data_dir
  check(bool(dpath), f"run {path}: its config has no data.path (data.corpus="
                     f"{(cfg.get('data') or {}).get('corpus')!r}); pass --data DIR, the "
                     f"prepared dir it trained on")
  dpath = os.path.realpath(dpath)
  manifest = load_manifest(dpath)
  domains = list(manifest["domains"])
  notes = []
  last = _upsampling_start(block)
  if last < math.inf:
    notes.append(f"run {path}: eval steps after {last} dropped (domain upsampling from then)")
  every = read_metrics(path)
  recs = [r for r in every if r["stage"] == stage]
  logged = _logged_weights(path, recs, domains, last)
  if block.get("domain_weights_from"):
    check(logged is not None, f"run {path}: {where}.domain_weights_from="
                              f"{block['domain_weights_from']!r} and no data/weight records "
                              f"in metrics.jsonl, so its mixture is unknown")
    weights = logged
  else:
    weights = _config_weights(path, block, domains, where)
    if logged is not None and any(abs(logged[d] - weights[d]) > 1e-6 for d in domains):
      raise JShearError(f"run {path}: metrics.jsonl logs the mixture {logged}, its config "
                        f"says {weights}")
  losses = {}
  for r in recs:  # a resumed run may log a step twice: the last record counts
    if min_step <= r["step"] <= last:
      got = {d: r[f"eval/{d}/loss"] for d in domains
             if isinstance(r.get(f"eval/{d}/loss"), (int, float))
             and math.isfinite(r[f"eval/{d}/loss"]) and r[f"eval/{d}/loss"] > 0}
      if got:
        losses.setdefault(int(r["step"]), {}).update(got)
  stages = sorted({r["stage"] for r in every})
  check(len(losses) >= MIN_STEPS,
        f"run {path}: {len(losses)} eval step(s) of stage {stage} at step >= {min_step}"
        + (f" and <= {last}" if last < math.inf else "")
        + f" (need {MIN_STEPS}; metrics.jsonl has stages {stages})")
  return Run(path, dpath, manifest["tokenizer"].get("vocab_hash", ""),
             int(block.get("batch_size", 0)), weights, dict(sorted(losses.items())), notes)


def _check_same(runs: list) -> None:
  """Refuses runs that did not train on the same data at the same batch size."""
  first = runs[0]
  for run in runs[1:]:
    for what, a, b in (("tokenizer vocab_hash", first.vocab_hash, run.vocab_hash),
                       ("data dir", first.data_dir, run.data_dir),
                       ("batch size (a step is a token count only at one)", first.batch_size,
                        run.batch_size)):
      check(a == b, f"runs {first.path} and {run.path} differ in {what}: {a} vs {b}")
  seen = set()
  for run in runs:
    check(run.path not in seen, f"run {run.path} given twice")
    seen.add(run.path)


def _mixture_key(w: dict) -> tuple:
  return tuple(round(v, 9) for v in w.values())


def _points(runs: list, domain: str, skip: int | None = None):
  """(s, r, loss, run index) of a domain over runs where it has weight (minus run `skip`)."""
  out = [(s, run.weights[domain], ls[domain], j) for j, run in enumerate(runs) if j != skip
         and run.weights[domain] > 0 for s, ls in run.losses.items() if domain in ls]
  return tuple(np.array(c, float) for c in zip(*out)) if out else (np.zeros(0),) * 4


def _fittable(r) -> bool:
  return len(r) > 4 and len({round(x, 9) for x in r}) >= 2


def _check_domains(runs: list, domains: list) -> list:
  notes = []
  never = [d for d in domains if all(run.weights[d] == 0 for run in runs)]
  check(not never, f"domain(s) {never} have weight 0 in every run, so the law (which "
                   f"diverges at r=0) cannot be fitted for them; give them weight in some runs")
  for d in domains:
    s, r, _, _ = _points(runs, d)
    check(len(s) > 0, f"domain {d} has no finite eval loss in any run")
    check(_fittable(r), f"domain {d}: weights {sorted({round(x, 6) for x in r})} over "
                        f"{len(s)} points; its exponent alpha needs at least 2 distinct weights"
                        f" and 5 points")
    zero = [run.path for run in runs if run.weights[d] == 0]
    if zero:
      notes.append(f"domain {d}: weight 0 in {len(zero)} run(s), their points dropped: {zero}")
  return notes


def leave_one_run_out(runs: list, domains: list) -> dict:
  """Refit without each run, predict its points: mean relative error per domain, per run,
  and over every held-out point."""
  per_dom = {d: [] for d in domains}
  per_run = {run.path: [] for run in runs}
  skipped = []
  for j, run in enumerate(runs):
    for d in domains:
      if run.weights[d] == 0 or not any(d in ls for ls in run.losses.values()):
        continue
      s, r, y, _ = _points(runs, d, skip=j)
      if not _fittable(r):
        skipped.append(f"{d} without {run.path}")
        continue
      coef = fit_domain(s, r, y)
      steps = [st for st, ls in run.losses.items() if d in ls]
      obs = np.array([run.losses[st][d] for st in steps])
      err = np.abs(predict(coef, steps, run.weights[d]) / obs - 1.0)
      per_dom[d].extend(err.tolist())
      per_run[run.path].extend(err.tolist())
  mean = lambda v: float(np.mean(v)) if v else None
  every = [e for v in per_dom.values() for e in v]
  return {"mean_rel_err": mean(every), "per_domain": {d: mean(v) for d, v in per_dom.items()},
          "per_run": {p: mean(v) for p, v in per_run.items()}, "not_refitted": skipped}


def fit_runs(runs: list) -> dict:
  """The law (LAW.json's content) of runs already read."""
  _check_same(runs)
  mixtures = {_mixture_key(run.weights) for run in runs}
  check(len(mixtures) >= MIN_MIXTURES,
        f"{len(mixtures)} distinct mixture(s) in {len(runs)} run(s); the law needs at least "
        f"{MIN_MIXTURES} (vary the stage's domain_weights between runs)")
  domains = list(runs[0].weights)
  notes = [n for run in runs for n in run.notes] + _check_domains(runs, domains)
  coefs = {d: fit_domain(*_points(runs, d)[:3]) for d in domains}
  loo = leave_one_run_out(runs, domains)
  for d in domains:
    coefs[d]["loo_mean_rel_err"] = loo["per_domain"][d]
    coefs[d]["dropped_runs"] = [run.path for run in runs if run.weights[d] == 0]
  return {"format": FORMAT, "law": LAW, "domains": coefs, "loo": loo,
          "data_dir": runs[0].data_dir, "tokenizer_vocab_hash": runs[0].vocab_hash,
          "batch_size": runs[0].batch_size,
          "runs": [{"path": run.path, "weights": run.weights, "steps": list(run.losses)}
                   for run in runs],
          "max_step": max(max(run.losses) for run in runs), "notes": notes}


# ---- the best mixture --------------------------------------------------------------------

def optimal_mixture(alpha, coef, min_weight: float = 0.0) -> np.ndarray:
  """argmin over the simplex (every r_i >= min_weight) of sum_i coef_i * r_i^-alpha_i.

  Convex (each term is, for alpha_i >= 0, coef_i > 0), so the KKT conditions are the
  answer: r_i(mu) = max(m, (alpha_i coef_i / mu)^(1 / (alpha_i + 1))), with the one mu
  where the weights sum to 1 (sum decreasing in mu; Brent's method on log mu). A domain
  with alpha_i = 0 gains nothing from weight and gets m; if every alpha_i is 0, every
  mixture is optimal and the uniform one is returned."""
  from scipy.optimize import brentq
  alpha, coef = np.asarray(alpha, float), np.asarray(coef, float)
  K, m = len(alpha), float(min_weight)
  check(K > 0 and np.all(alpha >= 0) and np.all(coef > 0), "optimal_mixture: needs alpha >= 0, "
                                                           "coef > 0")
  check(0 <= m and K * m <= 1 + 1e-12, f"--min_weight={m}: must be in [0, 1/{K}]")
  active = alpha > 0
  if not active.any() or K * m >= 1 - 1e-12:
    return np.full(K, 1.0 / K)
  a, p = alpha[active] * coef[active], 1.0 / (alpha[active] + 1.0)

  def weights(log_mu):
    r = np.full(K, m)
    r[active] = np.maximum(m, np.exp(p * (np.log(a) - log_mu)))
    return r

  lo = float(np.log(a).min())                         # some r_i >= 1: the sum is >= 1
  hi = float(np.max(np.log(a) + (alpha[active] + 1) * math.log(K)))  # all r_i <= 1/K
  if abs(weights(lo).sum() - 1) < 1e-15:
    return weights(lo)
  log_mu = brentq(lambda x: weights(x).sum() - 1.0, lo, hi + 1e-9, xtol=1e-15, rtol=1e-15,
                  maxiter=500)
  r = weights(log_mu)
  return r / r.sum()


def domain_losses(law: dict, steps: int, r) -> dict:
  return {d: float(predict(c, steps, x)) for (d, c), x in zip(law["domains"].items(), r)}


def load_law(path: str) -> dict:
  check(os.path.isfile(path), f"--law {path}: no such file")
  try:
    with open(path) as f:
      law = json.load(f)
  except json.JSONDecodeError as err:
    raise JShearError(f"--law {path}: not JSON ({err})") from None
  check(isinstance(law, dict) and law.get("format") == FORMAT,
        f"--law {path}: expected a '{FORMAT}' file from `mixlaw fit`")
  return law


def _fragment_py(weights: dict, block: str, about: str) -> str:
  body = ",\n".join(f"  {d!r}: {w!r}" for d, w in weights.items())
  return (f'"""{about}\n\nIn a config file\'s get_config(): `from configs import NAME; '
          f'NAME.apply(c)` (this file\nsaved as configs/NAME.py), or '
          f'`c.{block}.domain_weights = NAME.DOMAIN_WEIGHTS`."""\n\n'
          f"DOMAIN_WEIGHTS = {{\n{body},\n}}\n\n\n"
          f'def apply(config, block="{block}"):\n'
          f'  """config[block].domain_weights = this mixture; returns config."""\n'
          f"  config[block].domain_weights = dict(DOMAIN_WEIGHTS)\n"
          f"  return config\n")


def _write_mixture(out: str, weights: dict, block: str, meta: dict) -> None:
  if out.endswith(".json"):
    write_json(out, {"domain_weights": weights, "mixlaw": meta})
  else:
    about = (f"Domain weights from `python -m jshear.data mixlaw optimize`\n\nlaw "
             f"{meta['law']}, step {meta['steps']}: predicted summed loss "
             f"{meta['predicted_sum']:.4f} (uniform: {meta['uniform_sum']:.4f}).")
    with atomic_write(out) as f:
      f.write(_fragment_py(weights, block, about))


# ---- the command line --------------------------------------------------------------------

def _fmt(x, spec=".4f") -> str:
  return "-" if x is None else format(x, spec)


def _print_fit(law: dict, out: str) -> None:
  print(f"{LAW}   (A absorbed: b = A*B, c = A*C)")
  print(f"{'domain':<16}{'alpha':>8}{'beta':>8}{'b':>11}{'c':>9}{'points':>8}"
        f"{'rmse log':>10}{'rel err':>9}{'LOO err':>9}")
  for d, c in law["domains"].items():
    flag = f"  at bound: {','.join(c['at_bound'])}" if c["at_bound"] else ""
    print(f"{d:<16}{c['alpha']:>8.4f}{c['beta']:>8.4f}{c['b']:>11.4g}{c['c']:>9.4f}"
          f"{c['points']:>8}{c['rmse_log']:>10.5f}{c['mean_rel_err']:>9.4f}"
          f"{_fmt(c['loo_mean_rel_err']):>9}{flag}")
  print(f"leave-one-run-out mean relative error: {_fmt(law['loo']['mean_rel_err'])} "
        f"({len(law['runs'])} runs)")
  for n in law["notes"]:
    print(f"note: {n}")
  print(f"wrote {out}")


def _print_mixture(law, steps, names, r, uni, block, weights) -> None:
  lr, lu = domain_losses(law, steps, r), domain_losses(law, steps, uni)
  print(f"mixture at step {steps} under {LAW}")
  print(f"{'domain':<16}{'alpha':>8}{'weight':>9}{'loss':>9}{'uniform':>9}{'loss':>9}")
  for i, d in enumerate(names):
    print(f"{d:<16}{law['domains'][d]['alpha']:>8.4f}{r[i]:>9.4f}{lr[d]:>9.4f}"
          f"{uni[i]:>9.4f}{lu[d]:>9.4f}")
  print(f"{'sum':<16}{'':>8}{r.sum():>9.4f}{sum(lr.values()):>9.4f}{uni.sum():>9.4f}"
        f"{sum(lu.values()):>9.4f}")
  if steps > law.get("max_step", steps):
    print(f"note: step {steps} is beyond the fitted runs' last eval step {law['max_step']} "
          f"(an extrapolation)")
  short = {d: float(f"{w:.6g}") for d, w in weights.items()}
  print("as a flag (python -m jshear.train ...; the loader renormalises):")
  print(f"  --config.{block}.domain_weights={shlex.quote(json.dumps(short))}")


def _fit(args) -> int:
  check(args.out.endswith(".json"), f"--out {args.out}: expected a .json path")
  check(args.min_step >= 1, f"--min_step={args.min_step}: must be >= 1 (steps start at 1)")
  runs = [read_run(p, args.stage, args.min_step, args.data) for p in args.runs]
  law = fit_runs(runs)
  law.update(stage=args.stage, block=STAGE_BLOCKS[args.stage], min_step=args.min_step)
  write_json(args.out, law)
  _print_fit(law, args.out)
  return 0


def _optimize(args) -> int:
  check(args.steps >= 1, f"--steps={args.steps}: must be >= 1")
  check(args.out is None or args.out.endswith((".json", ".py")),
        f"--out {args.out}: expected a .json or .py path")
  law = load_law(args.law)
  names = list(law["domains"])
  co = [law["domains"][d] for d in names]
  alpha = np.array([c["alpha"] for c in co])
  coef = np.array([c["b"] * args.steps ** -c["beta"] + c["c"] for c in co])
  r = optimal_mixture(alpha, coef, args.min_weight)
  uni = np.full(len(names), 1.0 / len(names))
  weights = {d: float(x) for d, x in zip(names, r)}
  block = law.get("block", "continued")
  if args.out:
    meta = {"law": os.path.abspath(args.law), "steps": args.steps,
            "min_weight": args.min_weight, "predicted": domain_losses(law, args.steps, r),
            "predicted_sum": float(sum(domain_losses(law, args.steps, r).values())),
            "uniform_sum": float(sum(domain_losses(law, args.steps, uni).values()))}
    _write_mixture(args.out, weights, block, meta)
  _print_mixture(law, args.steps, names, r, uni, block, weights)
  if args.out:
    print(f"wrote {args.out}")
  return 0


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m jshear.data mixlaw",
                               description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  f = sub.add_parser("fit", help="fit the law on runs' per-domain eval losses")
  f.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR",
                 help="jshear workdirs, one fixed mixture each (at least 3 distinct)")
  f.add_argument("--out", required=True, help="LAW.json to write")
  f.add_argument("--stage", default="continue", choices=list(STAGE_BLOCKS),
                 help="the stage whose evals are fitted (default: continue)")
  f.add_argument("--min_step", type=int, default=1,
                 help="use eval steps >= K only (e.g. past warm-up; default 1: all)")
  f.add_argument("--data", default=None,
                 help="prepared dir of runs whose config has no data.path (data.corpus=local)")
  o = sub.add_parser("optimize", help="the mixture minimising the summed predicted loss")
  o.add_argument("--law", required=True, help="LAW.json from `mixlaw fit`")
  o.add_argument("--steps", type=int, required=True, help="the training step N to optimise for")
  o.add_argument("--out", default=None, help="MIX.json ({'domain_weights': ...}) or MIX.py")
  o.add_argument("--min_weight", type=float, default=0.0,
                 help="lower bound on every domain's weight (default 0)")
  return ap


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # -h, or a usage error (argparse has printed it)
    return int(e.code or 0)
  try:
    return _fit(args) if args.cmd == "fit" else _optimize(args)
  except JShearError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
