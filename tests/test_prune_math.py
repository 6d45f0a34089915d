"""Hard-concrete gates, targets, expected sizes, Lagrangian and deterministic masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.prune import hard_concrete as hc
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.expected import expected_params, expected_sizes, prunable_params
from jshear.prune.lagrangian import lagrangian, warmup_sparsity
from jshear.prune.state import eval_masks, init_prune_state, sample_masks
from jshear.prune.targets import TargetShape, target_config, validate_target

MHA = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=12, num_layers=4,
                  num_heads=4, num_kv_heads=4, head_dim=4)
GQA = ModelConfig(vocab_size=32, hidden_size=18, intermediate_size=10, num_layers=5,
                  num_heads=9, num_kv_heads=3, head_dim=4)  # SmolLM2-like 9 heads / 3 KV
ALL = ("layer", "head", "kv", "intermediate", "hidden")
# One compile per case instead of many eager op dispatches (keeps the file fast on 2 cores).
_det = jax.jit(lambda la, src, tgt: (deterministic_masks(la, src, tgt, binary=True),
                                     deterministic_masks(la, src, tgt)), static_argnums=(1, 2))
_exp_params = jax.jit(expected_params, static_argnums=0)
_lag_and_grad = jax.jit(jax.value_and_grad(lagrangian, has_aux=True), static_argnums=2)


def _log_alpha(src, groups, seed=0):
  """Random, well-spread logits so selections are non-trivial."""
  from jshear.model.masks import mask_shapes
  shapes = mask_shapes(src)
  rng = np.random.default_rng(seed)
  return {g: jnp.asarray(2.0 * rng.standard_normal(shapes[g]), jnp.float32) for g in groups}


def _la_for_prob(p):
  """log_alpha whose P(z != 0) is p."""
  p = np.asarray(p, np.float64)
  return jnp.asarray(hc.BETA * math.log(-hc.L / hc.R) + np.log(p / (1 - p)), jnp.float32)


# ---- hard concrete --------------------------------------------------------------------
def test_prob_nonzero_matches_empirical_frequency():
  la = jnp.array([-3.0, -1.0, 0.0, 1.5, 4.0])
  z = np.asarray(hc.sample(jnp.broadcast_to(la, (40000, 5)), jax.random.PRNGKey(1)))
  freq = (z > 0).mean(0)
  np.testing.assert_allclose(freq, np.asarray(hc.prob_nonzero(la)), atol=0.01)
  # The closed form written as in the paper.
  ref = 1 - 1 / (1 + np.exp(-(hc.BETA * np.log(0.1 / 1.1) - np.asarray(la))))
  np.testing.assert_allclose(np.asarray(hc.prob_nonzero(la)), ref, rtol=1e-5)
  assert z.min() == 0.0 and z.max() == 1.0


def test_sample_reproducible_and_extremes():
  sample = jax.jit(hc.sample)
  la = jnp.zeros((3, 700))
  a, b = sample(la, jax.random.PRNGKey(5)), sample(la, jax.random.PRNGKey(5))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(sample(la, jax.random.PRNGKey(6))))
  assert a.shape == la.shape
  z = np.asarray(sample(jnp.array([[30.0] * 700, [-30.0] * 700, [0.0] * 700]),
                        jax.random.PRNGKey(0)))
  assert np.all(z[0] == 1.0) and np.all(z[1] == 0.0)


def test_init_and_clamp():
  la = hc.init_log_alpha((1000,), jax.random.PRNGKey(0))
  assert abs(float(jnp.mean(la)) - 5.0) < 0.01 and 0.005 < float(jnp.std(la)) < 0.015
  c = hc.clamp_log_alpha({"a": jnp.array([-9.0, 0.0, 9.0])})["a"]
  np.testing.assert_allclose(np.asarray(c), [math.log(0.01), 0.0, math.log(100)], rtol=1e-6)
  np.testing.assert_allclose(float(hc.deterministic_score(jnp.float32(1.0))),
                             1 / (1 + math.exp(-1.2)), rtol=1e-6)


# ---- targets --------------------------------------------------------------------------
def test_validate_target_accepts_good_shapes():
  validate_target(GQA, TargetShape(3, 6, 2, 12, 8), ("layer", "kv", "intermediate", "hidden"))
  validate_target(GQA, TargetShape(5, 6, 3, 18, 10), ("head",))       # 2 of 3 heads per group
  validate_target(GQA, TargetShape(5, 4, 2, 16, 10), ("head", "kv", "hidden"))
  validate_target(MHA, TargetShape(3, 2, 2, 8, 6), ("head", "intermediate", "layer", "hidden"))
  validate_target(MHA, TargetShape.from_config(MHA), ())
  cfg = target_config(GQA, TargetShape(3, 6, 2, 12, 8))
  assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size,
          cfg.intermediate_size, cfg.head_dim) == (3, 6, 2, 12, 8, 4)


@pytest.mark.parametrize("tgt,groups,words", [
    (TargetShape(5, 9, 3, 20, 10), ALL, ["hidden_size=20", "hidden_size=18"]),
    (TargetShape(6, 9, 3, 18, 10), ALL, ["num_layers=6", "num_layers=5"]),
    (TargetShape(5, 8, 3, 16, 10), ALL, ["num_heads=8", "num_kv_heads=3"]),
    (TargetShape(5, 4, 1, 16, 10), ALL, ["4 query heads per KV head", "3"]),
    (TargetShape(5, 6, 2, 18, 10), ("head", "hidden"), ["num_kv_heads=2", "'kv'"]),
    (TargetShape(5, 6, 3, 18, 10), ("kv",), ["'head'", "num_heads=6"]),
    (TargetShape(5, 9, 3, 9, 10), ("head", "kv"), ["hidden_size=9", "'hidden'"]),
    (TargetShape(4, 9, 3, 18, 10), ("head",), ["num_layers=4", "'layer'"]),
    (TargetShape(5, 9, 3, 18, 8), ("head",), ["intermediate_size=8", "'intermediate'"]),
    (TargetShape(5, 6, 2, 16, 10), ALL, ["hidden_size=16", "num_heads=6", "LlamaConfig"]),
    (TargetShape(5, 9, 3, 18, 10), ("heads",), ["'heads'", "known"]),
    (TargetShape(5, 9, 3, 18, 10), ("mlp",), ["'mlp'", "'layer'"]),
    (TargetShape(5, 0, 3, 18, 10), ALL, ["num_heads", "positive"]),
])
def test_validate_target_errors_name_field_and_values(tgt, groups, words):
  with pytest.raises(JShearError) as e:
    validate_target(GQA, tgt, groups)
  for w in words:
    assert w in str(e.value), (w, str(e.value))


def test_mha_heads_need_head_or_kv():
  with pytest.raises(JShearError, match="num_kv_heads=2"):
    validate_target(MHA, TargetShape(4, 2, 2, 16, 12), ("intermediate",))
  validate_target(MHA, TargetShape(4, 2, 2, 16, 12), ("kv",))


# ---- expected sizes and params --------------------------------------------------------
CASES = [  # (source, target, groups)
    (MHA, TargetShape(3, 2, 2, 8, 6), ("layer", "head", "intermediate", "hidden")),
    (MHA, TargetShape(3, 2, 2, 16, 6), ("layer", "head", "intermediate")),
    (MHA, TargetShape(4, 3, 3, 12, 12), ("kv", "hidden")),
    (GQA, TargetShape(3, 6, 2, 12, 8), ("layer", "kv", "intermediate", "hidden")),
    (GQA, TargetShape(4, 4, 2, 16, 7), ALL),
    (GQA, TargetShape(4, 2, 1, 18, 7), ("layer", "head", "kv", "intermediate")),
    (GQA, TargetShape(4, 6, 3, 18, 7), ("layer", "head", "intermediate")),
]


@pytest.mark.parametrize("src,tgt,groups", CASES)
def test_deterministic_masks_give_exact_target(src, tgt, groups):
  validate_target(src, tgt, groups)
  la = _log_alpha(src, groups)
  binary, soft = _det(la, src, tgt)
  m = {k: np.asarray(v) for k, v in binary.items()}
  # Counts: global for layer / hidden, per layer for the rest.
  if "layer" in m:
    assert m["layer"].sum() == tgt.num_layers
  if "hidden" in m:
    assert m["hidden"].sum() == tgt.hidden_size
  if "intermediate" in m:
    assert np.all(m["intermediate"].sum(1) == tgt.intermediate_size)
  if "kv" in m:
    assert np.all(m["kv"].sum(1) == tgt.num_kv_heads)
  # Effective heads: per layer exactly the target, the same count in every kept group.
  heads = m.get("head", np.ones((src.num_layers, src.num_heads)))
  if "kv" in m:
    heads = heads * np.repeat(m["kv"], src.group_size, axis=1)
  assert np.all(heads.sum(1) == tgt.num_heads)
  per_group = heads.reshape(src.num_layers, src.num_kv_heads, src.group_size).sum(-1)
  assert np.all(np.isin(per_group, [0, tgt.group_size]))
  if "head" in m:  # head alone already has exactly the target
    assert np.all(m["head"].sum(1) == tgt.num_heads)
  # The key property: expected params of a 0/1 target-shaped mask = target's params.
  got = float(_exp_params(src, {k: jnp.asarray(v) for k, v in m.items()}))
  assert got == prunable_params(target_config(src, tgt))
  # Kept entries are the highest-scoring ones; soft masks carry their scores.
  for g in groups:
    score = 1 / (1 + np.exp(-np.asarray(la[g], np.float64) / hc.BETA * 0.8))
    np.testing.assert_allclose(np.asarray(soft[g]), m[g] * score, rtol=1e-6)
    if g in ("layer", "hidden", "intermediate", "kv"):
      lo_kept = np.where(m[g] > 0, np.asarray(la[g]), np.inf).min(-1)
      hi_dropped = np.where(m[g] > 0, -np.inf, np.asarray(la[g])).max(-1)
      assert np.all(lo_kept >= hi_dropped)


def test_ties_at_the_clamp_bound_are_broken_by_what_was_learned():
  # Every logit sits at a bound; the clamp excess (what clamping cut off) orders them, and
  # the order it gives is the reverse of the index order.
  st = init_prune_state(MHA, TargetShape(2, 4, 4, 16, 5), ("layer", "intermediate"),
                        jax.random.PRNGKey(0))
  lo = hc.LOG_ALPHA_MIN
  pushed = {"layer": jnp.full(4, lo) - jnp.array([3.0, 2.0, 1.0, 0.5]),
            "intermediate": jnp.full((4, 12), lo) - jnp.linspace(2.0, 0.1, 12)[None]}
  st = st.clamped(pushed)  # as the train step applies it after an update
  assert np.all(np.asarray(st.log_alpha["layer"]) == np.float32(lo))
  m = eval_masks(st)
  np.testing.assert_array_equal(np.asarray(m["layer"]) > 0, [0, 0, 1, 1])
  np.testing.assert_array_equal(np.asarray(m["intermediate"])[0] > 0, [0] * 7 + [1] * 5)
  # Soft values still come from the clamped logits (what the gates computed with).
  np.testing.assert_allclose(np.asarray(m["layer"])[2:],
                             float(hc.deterministic_score(jnp.float32(lo))), rtol=1e-6)
  # The excess accumulates over updates and moving back inside the bounds keeps it.
  st2 = st.clamped(jax.tree.map(lambda a: a + 0.1, st.log_alpha))
  np.testing.assert_allclose(np.asarray(st2.clamp_excess["layer"]),
                             -np.array([3.0, 2.0, 1.0, 0.5]), rtol=1e-6)


def _actual_params(cfg, m):
  """Prunable params of the structure a 0/1 mask leaves (numpy, element by element)."""
  L, KV, G, hd = cfg.num_layers, cfg.num_kv_heads, cfg.group_size, cfg.head_dim
  d = m["hidden"].sum() if "hidden" in m else cfg.hidden_size
  total = 0
  for l in range(L):
    lay = m["layer"][l] if "layer" in m else 1
    for g in range(KV):
      kv = m["kv"][l, g] if "kv" in m else 1
      heads = [m["head"][l, g * G + j] if "head" in m else 1 for j in range(G)]
      total += lay * kv * (2 * d * hd * sum(heads) + 2 * d * hd * (max(heads) > 0))
    inter = m["intermediate"][l].sum() if "intermediate" in m else cfg.intermediate_size
    total += lay * 3 * d * inter
  return total


@pytest.mark.parametrize("src", [MHA, GQA])
def test_expected_params_is_expectation_over_masks(src):
  rng = np.random.default_rng(0)
  pn = {g: 1 / (1 + np.exp(-(np.asarray(v, np.float64) - hc.BETA * math.log(1 / 11))))
        for g, v in _log_alpha(src, ALL, seed=3).items()}
  p = {g: jnp.asarray(v, jnp.float32) for g, v in pn.items()}
  n = 600
  draws = [_actual_params(src, {g: rng.random(v.shape) < v for g, v in pn.items()})
           for _ in range(n)]
  mc, se = np.mean(draws), np.std(draws) / math.sqrt(n)
  assert abs(float(_exp_params(src, p)) - mc) < 4 * se + 1e-6
  assert float(_exp_params(src, {})) == prunable_params(src)
  sizes = expected_sizes(p)
  assert sizes["hidden"].shape == () and sizes["layer"].shape == (src.num_layers,)
  for g in ("head", "kv", "intermediate"):
    np.testing.assert_allclose(np.asarray(sizes[g]), pn[g].sum(1), rtol=1e-5)


# ---- Lagrangian -----------------------------------------------------------------------
def test_warmup_schedule():
  got = [float(warmup_sparsity(0.6, s, 100)) for s in (0, 25, 100, 400)]
  np.testing.assert_allclose(got, [0.0, 0.15, 0.6, 0.6], rtol=1e-6)
  assert float(warmup_sparsity(0.6, 0, 0)) == pytest.approx(0.6)


def _hand_state(constraint):
  # MHA, 4 layers x 4 heads; target 2 heads (t = 0.5), hidden 8 of 16 (t = 0.5).
  st = init_prune_state(MHA, TargetShape(4, 2, 2, 8, 12), ("head", "hidden"),
                        jax.random.PRNGKey(0), constraint)
  head_p = np.array([[0.5] * 4, [0.9] * 4, [0.2, 0.2, 0.6, 0.6], [0.75] * 4])
  hid_p = np.array([0.8] * 8 + [0.3] * 8)
  la = {"head": _la_for_prob(head_p), "hidden": _la_for_prob(hid_p)}
  return st.replace(log_alpha=la)


def test_lagrangian_layer_mean_hand_computed():
  # The reference form: one scalar pair per group, per-layer terms averaged over layers.
  st = _hand_state("layer_mean")
  assert st.lambda1["head"].shape == () and st.lambda1["hidden"].shape == ()
  st = st.replace(lambda1={"head": jnp.float32(2.0), "hidden": jnp.float32(3.0)},
                  lambda2={"head": jnp.float32(0.5), "hidden": jnp.float32(1.0)})
  # step 50 of 100 warmup: t = 0.25. Head sparsity per layer [0.5, 0.1, 0.6, 0.25], gaps
  # [0.25, -0.15, 0.35, 0]: mean of 2 * gap + 0.5 * gap^2 over the 4 layers.
  gaps = np.array([0.25, -0.15, 0.35, 0.0])
  head = float(np.mean(2 * gaps + 0.5 * gaps ** 2))
  hidden = 3 * 0.2 + 1 * 0.04  # hidden sparsity 0.45, gap 0.2
  (pen, diag), g = _lag_and_grad(st, 50, 100)
  assert float(pen) == pytest.approx(head + hidden, abs=1e-6)
  assert float(g.lambda1["head"]) == pytest.approx(gaps.mean(), abs=1e-6)
  assert float(g.lambda2["head"]) == pytest.approx(np.mean(gaps ** 2), abs=1e-6)
  # The pressure on one layer's gates is 1/L of the summed form's.
  summed = _hand_state("per_layer").replace(
      lambda1={"head": jnp.full(4, 2.0), "hidden": jnp.float32(3.0)},
      lambda2={"head": jnp.full(4, 0.5), "hidden": jnp.float32(1.0)})
  (_, _), gs = _lag_and_grad(summed, 50, 100)
  np.testing.assert_allclose(np.asarray(g.log_alpha["head"]) * 4,
                             np.asarray(gs.log_alpha["head"]), rtol=1e-5)


def test_warmup_starts_from_the_initial_sparsity_of_scored_masks():
  src, tgt = MHA, TargetShape(4, 2, 2, 8, 12)
  la = {"head": jnp.asarray(_la_for_prob(np.full((4, 4), 0.75))),
        "hidden": jnp.asarray(_la_for_prob(np.full(16, 0.5)))}
  st = init_prune_state(src, tgt, ("head", "hidden"), jax.random.PRNGKey(0), log_alpha=la)
  np.testing.assert_allclose(np.asarray(st.start_sparsity["head"]), 0.25, atol=1e-5)
  (_, d0), _ = _lag_and_grad(st, 0, 100)
  (_, d1), _ = _lag_and_grad(st, 100, 100)
  assert float(d0["prune/head/target_sparsity"]) == pytest.approx(0.25, abs=1e-5)
  assert float(d0["prune/hidden/target_sparsity"]) == pytest.approx(0.5, abs=1e-5)
  assert float(d1["prune/head/target_sparsity"]) == pytest.approx(0.5, abs=1e-6)
  # The reference start is the intact model: the warm-up starts at 0.
  plain = init_prune_state(src, tgt, ("head", "hidden"), jax.random.PRNGKey(0))
  assert float(jnp.max(plain.start_sparsity["head"])) == 0.0


def test_lagrangian_per_layer_hand_computed():
  st = _hand_state("per_layer")
  assert st.lambda1["head"].shape == (4,) and st.lambda1["hidden"].shape == ()
  st = st.replace(lambda1={"head": jnp.array([1.0, 2.0, -1.0, 0.5]), "hidden": jnp.float32(3.0)},
                  lambda2={"head": jnp.array([0.5, 0.0, 1.0, 2.0]), "hidden": jnp.float32(1.0)})
  # step 50 of 100 warmup: t = 0.25 for both groups.
  # head sparsity per layer: 1 - [0.5, 0.9, 0.4, 0.75] = [0.5, 0.1, 0.6, 0.25]
  # gaps [0.25, -0.15, 0.35, 0]: 1*.25 + 2*-.15 + -1*.35 + .5*0 + .5*.0625 + 0 + 1*.1225 + 0
  head = 0.25 - 0.30 - 0.35 + 0.0 + 0.5 * 0.0625 + 0.1225
  # hidden sparsity 1 - (6.4 + 2.4)/16 = 0.45, gap 0.2: 3*0.2 + 1*0.04
  hidden = 0.6 + 0.04
  (pen, diag), g = _lag_and_grad(st, 50, 100)
  assert float(diag["prune/head/target_sparsity"]) == pytest.approx(0.25)
  assert float(diag["prune/hidden/expected_sparsity"]) == pytest.approx(0.45, abs=1e-6)
  assert float(diag["prune/head/expected_size"]) == pytest.approx(4 * 2.55, abs=1e-5)
  assert float(diag["prune/head/max_abs_gap"]) == pytest.approx(0.35, abs=1e-5)
  np.testing.assert_allclose(np.asarray(g.lambda1["head"]), [0.25, -0.15, 0.35, 0.0], atol=1e-6)
  np.testing.assert_allclose(np.asarray(g.lambda2["head"]), [0.0625, 0.0225, 0.1225, 0.0],
                             atol=1e-6)
  assert float(g.lambda1["hidden"]) == pytest.approx(0.2, abs=1e-6)
  # Layer 0: d penalty / d s = 1 + 2 * 0.5 * 0.25 > 0, so raising its logits (less sparsity)
  # lowers the penalty.
  ga = np.asarray(g.log_alpha["head"])
  assert np.all(np.isfinite(ga)) and np.all(ga[0] < 0)
  assert g.src is st.src and g.target == st.target  # metadata stays static


def test_lagrangian_count_mode_and_jit():
  st = _hand_state("count")
  assert st.lambda1["head"].shape == ()
  st = st.replace(lambda1={"head": jnp.float32(2.0), "hidden": jnp.float32(0.0)},
                  lambda2={"head": jnp.float32(1.0), "hidden": jnp.float32(0.0)})
  # Total head sparsity 1 - 10.2 / 16 = 0.3625; final target 0.5, step >= warmup.
  gap = 0.3625 - 0.5
  (pen, diag), g = _lag_and_grad(st, jnp.int32(200), 100)
  assert float(pen) == pytest.approx(2 * gap + gap ** 2, abs=1e-5)
  assert float(g.lambda1["head"]) == pytest.approx(gap, abs=1e-6)
  assert float(diag["prune/target_params"]) == prunable_params(
      target_config(MHA, TargetShape(4, 2, 2, 8, 12)))
  (pen0, _), _ = _lag_and_grad(st, jnp.int32(0), 100)  # t = 0 at step 0
  assert float(pen0) == pytest.approx(2 * 0.3625 + 0.3625 ** 2, abs=1e-5)


# ---- state ----------------------------------------------------------------------------
def test_state_init_sample_eval():
  tgt = TargetShape(3, 6, 2, 12, 8)
  st = init_prune_state(GQA, tgt, ("hidden", "kv", "layer", "intermediate"),
                        jax.random.PRNGKey(0))
  assert st.groups == ("layer", "kv", "intermediate", "hidden")  # canonical order
  for g, la in st.log_alpha.items():
    assert float(jnp.max(la)) <= math.log(100) + 1e-6 and float(jnp.min(la)) > 4.5
  assert st.lambda1["kv"].shape == () and st.lambda1["layer"].shape == ()
  base = jax.random.PRNGKey(7)
  sample = jax.jit(sample_masks)
  a, b, c = sample(st, base, 3), sample(st, base, 3), sample(st, base, 4)
  d = sample(st, base, 3, 1)  # the next micro-batch of the same step
  assert all(a[g].shape == st.log_alpha[g].shape for g in a)
  assert all(np.array_equal(np.asarray(a[g]), np.asarray(b[g])) for g in a)
  assert not all(np.array_equal(np.asarray(a[g]), np.asarray(c[g])) for g in a)
  assert not all(np.array_equal(np.asarray(a[g]), np.asarray(d[g])) for g in a)
  em = jax.jit(eval_masks)(st)
  assert float(jnp.sum(em["layer"] > 0)) == 3 and float(jnp.sum(em["hidden"] > 0)) == 12
  assert 0.99 < float(jnp.max(em["layer"])) < 1.0  # soft score sigmoid(4.6 / beta * 0.8)
  with pytest.raises(JShearError, match="constraint"):
    init_prune_state(GQA, tgt, ("kv",), jax.random.PRNGKey(0), "sum")


@pytest.mark.parametrize("constraint", ["layer_mean", "count"])
def test_projection_hits_the_target_size_and_keeps_the_order(constraint):
  from jshear.prune.lagrangian import target_sparsity
  from jshear.prune.projection import project
  from jshear.prune.state import expected_sparsity
  tgt = TargetShape(3, 6, 2, 12, 8)
  groups = ("layer", "kv", "intermediate", "hidden")
  st = init_prune_state(GQA, tgt, groups, jax.random.PRNGKey(0), constraint,
                        bounds=(-10.0, 10.0))
  rng = np.random.default_rng(1)
  st = st.replace(log_alpha={g: jnp.asarray(rng.normal(0, 4, v.shape), jnp.float32)
                             for g, v in st.log_alpha.items()})
  for step in (0, 5, 10):
    want = target_sparsity(st, step, 10)
    out = jax.jit(project)(st, want)
    got = expected_sparsity(out)
    for g in groups:
      np.testing.assert_allclose(np.asarray(got[g]), np.asarray(want[g]), atol=1e-4)
      a, b = np.asarray(st.log_alpha[g]), np.asarray(out.ranking()[g])
      assert np.all(np.asarray(out.log_alpha[g]) >= -10.0)
      assert np.all(np.asarray(out.log_alpha[g]) <= 10.0)
      if a.ndim == 2:  # order inside every row survives the shift (and the clamp)
        assert all(np.array_equal(np.argsort(a[i]), np.argsort(b[i])) for i in range(len(a)))
      else:
        assert np.array_equal(np.argsort(a), np.argsort(b))


def test_importance_init_keeps_the_scored_units_and_orders_the_rest():
  from jshear.prune.mask_init import from_scores
  tgt = TargetShape(3, 6, 2, 12, 8)
  rng = np.random.default_rng(0)
  shapes = {"layer": (5,), "kv": (5, 3), "intermediate": (5, 10), "hidden": (18,)}
  scores = {g: rng.random(s) for g, s in shapes.items()}
  la = from_scores(GQA, tgt, scores, 6.0, (-10.0, 10.0))
  keep = deterministic_masks({g: jnp.asarray(v, jnp.float32) for g, v in scores.items()},
                             GQA, tgt, binary=True)
  for g, s in scores.items():
    a, k = np.asarray(la[g]), np.asarray(keep[g]) > 0
    assert np.all(a[k] == 10.0)
    assert np.all((a[~k] >= -10.0) & (a[~k] <= -4.0))
    rows = (a, s, k) if a.ndim == 2 else (a[None], s[None], k[None])
    for ar, sr, kr in zip(*rows):  # dropped units: higher score, higher start
      d = ~kr
      assert np.all(np.diff(ar[d][np.argsort(-sr[d])]) < 0)
  # The deterministic masks of the start are exactly the importance masks.
  start = deterministic_masks({g: jnp.asarray(v) for g, v in la.items()}, GQA, tgt, binary=True)
  for g in scores:
    np.testing.assert_array_equal(np.asarray(start[g]), np.asarray(keep[g]))


def test_importance_init_band_puts_the_units_nearest_the_cut_in_transition():
  """band: the lowest-scored kept and best dropped units start in (-w, w), ordered by score
  across the cut; the units the scores are sure of start as without a band."""
  from jshear.prune.mask_init import from_scores
  tgt = TargetShape(3, 6, 2, 12, 8)
  rng = np.random.default_rng(1)
  shapes = {"layer": (5,), "kv": (5, 3), "intermediate": (5, 10), "hidden": (18,)}
  scores = {g: rng.random(s) for g, s in shapes.items()}
  plain = from_scores(GQA, tgt, scores, 6.0, (-10.0, 10.0))
  la = from_scores(GQA, tgt, scores, 6.0, (-10.0, 10.0), band=0.2, band_width=3.0)
  keep = deterministic_masks({g: jnp.asarray(v, jnp.float32) for g, v in scores.items()},
                             GQA, tgt, binary=True)
  for g, s in scores.items():
    a, p, k = np.asarray(la[g]), np.asarray(plain[g]), np.asarray(keep[g]) > 0
    rows = (a, p, s, k) if a.ndim == 2 else (a[None], p[None], s[None], k[None])
    for ar, pr, sr, kr in zip(*rows):
      m = min(round(0.2 * len(sr)), kr.sum(), (~kr).sum())
      in_band = np.abs(ar) < 3.0
      assert in_band.sum() == 2 * m, g
      assert (in_band & kr).sum() == m and (in_band & ~kr).sum() == m
      # the band holds the kept units with the lowest scores and the dropped with the best
      if m:
        assert sr[in_band & kr].max() <= np.sort(sr[kr])[m - 1]
        assert sr[in_band & ~kr].min() >= np.sort(sr[~kr])[::-1][m - 1]
        order = np.argsort(-sr[in_band])   # higher score, higher start, across the cut
        assert np.all(np.diff(ar[in_band][order]) < 0)
        assert ar[in_band & kr].min() > 0 > ar[in_band & ~kr].max()
      np.testing.assert_array_equal(ar[~in_band], pr[~in_band])
  # The start's deterministic masks are still the importance masks.
  start = deterministic_masks({g: jnp.asarray(v) for g, v in la.items()}, GQA, tgt, binary=True)
  for g in scores:
    np.testing.assert_array_equal(np.asarray(start[g]), np.asarray(keep[g]))
  # band_groups: only the named groups get a band.
  only = from_scores(GQA, tgt, scores, 6.0, (-10.0, 10.0), band=0.2, band_width=3.0,
                     band_groups=("intermediate",))
  for g in scores:
    want = la[g] if g == "intermediate" else plain[g]
    np.testing.assert_array_equal(np.asarray(only[g]), np.asarray(want))


def test_importance_init_config_errors_name_the_key():
  from jshear.config_base import base_config
  from jshear.prune.mask_init import check_config
  for key, val, pattern in [("mask_init_band", 0.5, "mask_init_band must be in"),
                            ("mask_init_band_width", 20.0, "mask_init_band_width must be in"),
                            ("mask_init_band_groups", "intermediate,heads",
                             r"mask_init_band_groups names \['heads'\]")]:
    p = base_config().prune
    p.learned[key] = val
    with pytest.raises(JShearError, match=pattern):
      check_config(p)
