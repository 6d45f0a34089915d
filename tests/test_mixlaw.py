"""BiMix's mixing law (jshear.data.mixlaw): the fit recovers a known law, the optimiser's
mixture is the KKT point (and SLSQP's), and bad run sets are refused in one line.

Run dirs are built with the writers the training loop uses (MetricsWriter, the pipeline's
config.json dump), so a change of either format breaks these tests."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import json
import runpy

import numpy as np
import pytest

from jshear.data import mixlaw
from jshear.errors import JShearError

DOMS = ("legal", "code", "misc")
TRUE = {"legal": dict(alpha=0.08, beta=0.45, b=6.0, c=2.1),
        "code": dict(alpha=0.15, beta=0.30, b=4.0, c=1.6),
        "misc": dict(alpha=0.03, beta=0.60, b=9.0, c=2.8)}
MIXES = [(0.6, 0.2, 0.2), (0.2, 0.6, 0.2), (0.2, 0.2, 0.6), (1 / 3, 1 / 3, 1 / 3),
         (0.45, 0.45, 0.1)]
STEPS = [10, 20, 40, 80, 160, 320, 640, 1280]
SIGMA = 0.002  # multiplicative noise of the synthetic losses (0.2%, a few eval batches' worth)


def _loss(d, s, r, rng=None):
  t = TRUE[d]
  r = np.where(np.asarray(r) > 0, r, 0.01)  # a domain not trained on: a high finite loss
  clean = r ** -t["alpha"] * (t["b"] * s ** -t["beta"] + t["c"])
  return clean * (np.exp(SIGMA * rng.standard_normal(np.shape(s))) if rng is not None else 1.0)


# ---- the fit -----------------------------------------------------------------------------

def test_fit_recovers_known_law():
  """Tolerance: the fit's own standard errors (Gauss-Newton covariance): the truth within 4
  of them (a Gaussian misses that by chance with p < 1e-4 per coefficient), and those
  errors small enough (alpha 0.01, beta 0.05) that the bound means something."""
  rng = np.random.default_rng(0)
  for d, t in TRUE.items():
    i = DOMS.index(d)
    s = np.array([st for _ in MIXES for st in STEPS], float)
    r = np.array([m[i] for m in MIXES for _ in STEPS])
    got = mixlaw.fit_domain(s, r, _loss(d, s, r, rng))
    assert got["se"]["alpha"] < 0.01 and got["se"]["beta"] < 0.05
    for k in ("alpha", "beta"):
      assert abs(got[k] - t[k]) < 4 * got["se"][k], (d, k, got[k], t[k], got["se"][k])
    for k in ("b", "c"):
      assert abs(np.log(got[k] / t[k])) < 4 * got["se"][f"log_{k}"], (d, k, got[k], t[k])
    # the law between the fitted points: within 1% of the noise-free truth
    ss, rr = np.meshgrid(np.geomspace(15, 1200, 9), np.linspace(0.15, 0.7, 7))
    np.testing.assert_allclose(mixlaw.predict(got, ss, rr), _loss(d, ss, rr), rtol=0.01)
    assert got["rmse_log"] < 2 * SIGMA and got["mean_rel_err"] < 2 * SIGMA
    exact = mixlaw.fit_domain(s, r, _loss(d, s, r))  # no noise: the coefficients themselves
    for k in ("alpha", "beta", "b", "c"):
      assert abs(exact[k] / t[k] - 1) < 1e-4, (d, k, exact[k], t[k])


def test_fit_minimises_squared_log_error():
  """The fit is least squares on log losses, not on losses: with 3% noise the two optima
  differ, and no other minimiser (BFGS on the log objective, from the truth and from the
  fit) finds a lower sum of squared log errors."""
  from scipy.optimize import minimize
  rng = np.random.default_rng(1)
  s = np.array([st for _ in MIXES for st in STEPS], float)
  r = np.array([m[1] for m in MIXES for _ in STEPS])
  y = _loss("code", s, r) * np.exp(0.03 * rng.standard_normal(s.shape))
  sse = lambda th: float(np.sum((np.log(y) - mixlaw.log_law(th, np.log(s), np.log(r))) ** 2))
  got = mixlaw.fit_domain(s, r, y)
  mine = sse([got["alpha"], got["beta"], np.log(got["b"]), np.log(got["c"])])
  t = TRUE["code"]
  for x0 in ([t["alpha"], t["beta"], np.log(t["b"]), np.log(t["c"])],
             [got["alpha"], got["beta"], np.log(got["b"]), np.log(got["c"])]):
    ref = minimize(sse, x0, method="BFGS", options={"gtol": 1e-12})
    assert mine <= ref.fun * (1 + 1e-9), (mine, ref.fun)
  assert abs(got["rmse_log"] - np.sqrt(mine / len(y))) < 1e-12


# ---- the optimiser -----------------------------------------------------------------------

def _objective(alpha, coef, r):
  with np.errstate(divide="ignore"):
    return float(np.sum(coef * np.asarray(r, float) ** -alpha))


def _check_kkt(alpha, coef, r, m=0.0):
  assert np.all(r >= m - 1e-12) and abs(r.sum() - 1) < 1e-12
  safe = np.where(r > 0, r, 1.0)  # alpha 0 at r 0: a constant term, gradient 0
  grad = np.where(alpha > 0, -alpha * coef * safe ** (-alpha - 1), 0.0)
  free = r > m + 1e-9
  assert free.any()
  g = grad[free]
  np.testing.assert_allclose(g, g.mean(), rtol=1e-7)  # equal on the support
  assert np.all(grad[~free] >= g.mean() - 1e-9 * abs(g.mean()))  # no pull on bound weights


@pytest.mark.parametrize("alpha,coef,m", [
    ([0.08, 0.15, 0.03], [2.4, 1.8, 3.1], 0.0),
    ([0.5, 0.01, 1.2, 0.3], [1.0, 5.0, 0.2, 2.0], 0.0),
    ([0.5, 0.01, 1.2, 0.3], [1.0, 5.0, 0.2, 2.0], 0.1),   # the small one sits at its bound
    ([0.2, 0.0, 0.4], [2.0, 3.0, 1.0], 0.0),              # alpha 0: no weight
    ([0.2, 0.0, 0.4], [2.0, 3.0, 1.0], 0.05),
])
def test_optimum_is_kkt_and_beats_vertices_uniform_slsqp(alpha, coef, m):
  from scipy.optimize import minimize
  alpha, coef = np.array(alpha), np.array(coef)
  K = len(alpha)
  r = mixlaw.optimal_mixture(alpha, coef, m)
  _check_kkt(alpha, coef, r, m)
  best = _objective(alpha, coef, r)
  for v in np.eye(K):
    assert best < _objective(alpha, coef, v)
  assert best <= _objective(alpha, coef, np.full(K, 1 / K)) + 1e-12
  ref = minimize(lambda x: _objective(alpha, coef, x), np.full(K, 1 / K), method="SLSQP",
                 bounds=[(max(m, 1e-9), 1.0)] * K, options={"ftol": 1e-14, "maxiter": 500},
                 constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}])
  assert ref.success
  assert best <= ref.fun + 1e-10
  np.testing.assert_allclose(r, ref.x, atol=2e-3)


def test_optimum_edge_cases():
  np.testing.assert_allclose(mixlaw.optimal_mixture([0, 0, 0], [1, 2, 3]), [1 / 3] * 3)
  np.testing.assert_allclose(mixlaw.optimal_mixture([0.3, 0.1], [1, 1], 0.5), [0.5, 0.5])
  with pytest.raises(JShearError, match="min_weight"):
    mixlaw.optimal_mixture([0.3, 0.1], [1, 1], 0.6)
  one = mixlaw.optimal_mixture([0.3, 0.0, 0.0], [1, 1, 1])
  np.testing.assert_allclose(one, [1, 0, 0])


# ---- run dirs as the training loop leaves them -------------------------------------------

def _data(root, name="data", vocab_hash="h0"):
  """A prepared dir's manifest (what mixlaw reads of it)."""
  from jshear.atomic import write_json
  from jshear.data.prepare import FORMAT
  path = os.path.join(str(root), name)
  write_json(os.path.join(path, "manifest.json"), {
      "format": FORMAT, "seq_len": 32, "config": {}, "domains": {d: {} for d in DOMS},
      "tokenizer": {"name": "tiny", "vocab_size": 256, "vocab_hash": vocab_hash,
                    "bos_id": 2, "eos_id": 3, "pad_id": 0}})
  return path


def _run(root, name, mix, data, steps=STEPS, seed=0, **block):
  """WORKDIR with config.json (as pipeline.run dumps it) and metrics.jsonl (as the loop's
  log and eval records write it), losses from TRUE with noise."""
  from jshear.config_base import base_config
  from jshear.metrics import MetricsWriter
  from jshear.train.stages.common import write_json_atomic
  wd = os.path.join(str(root), name)
  cfg = base_config()
  cfg.stages = "continue"
  cfg.data.path = data
  k = cfg.continued
  k.steps, k.eval_every = max(steps), steps[0]
  k.domain_weights.update({d: w for d, w in zip(DOMS, mix) if w > 0})
  k.update(block)
  write_json_atomic(os.path.join(wd, "config.json"), json.loads(cfg.to_json_best_effort()))
  rng = np.random.default_rng(seed)
  w = np.array(mix, float) / sum(mix)
  out = MetricsWriter(wd, tensorboard=False)
  out.write("prune", 5, {"eval/legal/loss": 9.0})  # another stage: not read
  for s in steps:
    out.write("continue", s, {"lm_loss": 3.0, **{f"data/weight/{d}": x for d, x in zip(DOMS, w)}})
    out.write("continue", s, {f"eval/{d}/loss": float(_loss(d, s, x, rng))
                              for d, x in zip(DOMS, w)})
  out.close()
  return wd


def _runs(root, mixes=MIXES, **kw):
  data = _data(root)
  return [_run(root, f"run{i}", m, data, seed=i, **kw) for i, m in enumerate(mixes)]


def test_cli_fit_then_optimize(tmp_path, capsys):
  from jshear import config_check
  from jshear.config_base import base_config
  from jshear.data.mixture import MixtureLoader
  runs = _runs(tmp_path)
  law_path = str(tmp_path / "law.json")
  assert mixlaw.main(["fit", "--runs", *runs, "--out", law_path]) == 0
  text = capsys.readouterr().out
  assert "leave-one-run-out" in text and all(d in text for d in DOMS)
  law = json.load(open(law_path))
  assert law["format"] == mixlaw.FORMAT and law["stage"] == "continue"
  assert law["tokenizer_vocab_hash"] == "h0" and len(law["runs"]) == len(MIXES)
  for d, t in TRUE.items():
    c = law["domains"][d]
    assert abs(c["alpha"] - t["alpha"]) < 4 * c["se"]["alpha"] + 1e-3
    assert c["loo_mean_rel_err"] < 0.01
  assert law["loo"]["mean_rel_err"] < 0.01

  for ext in ("json", "py"):
    out = str(tmp_path / f"mix.{ext}")
    assert mixlaw.main(["optimize", "--law", law_path, "--steps", "5000", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "uniform" in text and "--config.continued.domain_weights=" in text
    cfg = base_config()
    if ext == "json":
      cfg.continued.domain_weights = json.load(open(out))["domain_weights"]
    else:
      runpy.run_path(out)["apply"](cfg)
    config_check.check(cfg)  # the training config's own checks, and the loader's
    rows = {d: [np.zeros((2, 4), np.int32)] * 2 for d in DOMS}
    w = MixtureLoader(rows, dict(cfg.continued.domain_weights), 4).weights
    assert abs(sum(w.values()) - 1) < 1e-9 and all(x > 0 for x in w.values())
  # the printed flag's value is the mixture
  flag = [ln for ln in text.splitlines() if "--config.continued.domain_weights=" in ln][0]
  shown = json.loads(flag.split("=", 1)[1].strip().strip("'"))
  assert shown.keys() == w.keys() and all(abs(shown[d] - w[d]) < 1e-5 for d in w)


def test_zero_weight_points_dropped(tmp_path, capsys):
  mixes = MIXES + [(0.5, 0.5, 0.0)]
  runs = _runs(tmp_path, mixes)
  out = str(tmp_path / "law.json")
  assert mixlaw.main(["fit", "--runs", *runs, "--out", out]) == 0
  assert "misc: weight 0 in 1 run(s)" in capsys.readouterr().out
  law = json.load(open(out))
  assert law["domains"]["misc"]["points"] == len(MIXES) * len(STEPS)
  assert law["domains"]["misc"]["dropped_runs"] == [runs[-1]]


def test_stage_blocks_match_the_stage_table():
  from jshear.train import stages
  assert mixlaw.STAGE_BLOCKS == {s.name: s.block for s in stages.training_stages()}


def test_upsampled_steps_dropped(tmp_path):
  run = _run(tmp_path, "up", MIXES[0], _data(tmp_path), upsample_last_fraction=0.25,
             upsample_factors={"code": 2.0})
  r = mixlaw.read_run(run)
  assert max(r.losses) == 640 and any("upsampling" in n for n in r.notes)


# ---- refusals ----------------------------------------------------------------------------

def _two_mixtures(root):
  return _runs(root, [MIXES[0], MIXES[1], MIXES[0]])


def _few_steps(root):
  return _runs(root, MIXES[:3]) + [_run(root, "short", MIXES[3], _data(root), steps=[10, 20])]


def _other_data(root):
  return _runs(root, MIXES[:3]) + [_run(root, "other", MIXES[3], _data(root, "data2"))]


def _other_tokenizer(root):
  return _runs(root, MIXES[:3]) + [
      _run(root, "other", MIXES[3], _data(root, "data2", vocab_hash="h1"))]


def _dynamic(root):
  return _runs(root, MIXES[:3]) + [_run(root, "dyn", MIXES[3], _data(root),
                                        reweight_rule="sheared")]


def _never(root):
  return _runs(root, [(0.5, 0.5, 0), (0.2, 0.8, 0), (0.7, 0.3, 0)])


@pytest.mark.parametrize("make,says", [
    (_two_mixtures, "2 distinct mixture(s)"),
    (_few_steps, "2 eval step(s)"),
    (_other_data, "differ in data dir"),
    (_other_tokenizer, "differ in tokenizer vocab_hash: h0 vs h1"),
    (_dynamic, "reweights dynamically"),
    (_never, "['misc'] have weight 0 in every run"),
])
def test_refusals_one_line_exit_2_nothing_written(tmp_path, capsys, make, says):
  runs = make(tmp_path)
  out = tmp_path / "law.json"
  assert mixlaw.main(["fit", "--runs", *runs, "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
  assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".law")]


def test_different_data_names_both_runs(tmp_path, capsys):
  runs = _other_data(tmp_path)
  assert mixlaw.main(["fit", "--runs", *runs, "--out", str(tmp_path / "l.json")]) == 2
  err = capsys.readouterr().err
  assert runs[0] in err and runs[-1] in err and "data2" in err


def test_optimize_refusals(tmp_path, capsys):
  bad = tmp_path / "bad.json"
  bad.write_text("{}")
  assert mixlaw.main(["optimize", "--law", str(bad), "--steps", "10"]) == 2
  assert "mixlaw fit" in capsys.readouterr().err
  assert mixlaw.main(["optimize", "--law", str(bad), "--steps", "10", "--out", "x.yaml"]) == 2
  assert ".json or .py" in capsys.readouterr().err
