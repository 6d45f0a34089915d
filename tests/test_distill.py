"""Distillation: the KD term is the KL by hand, it has no gradient when the student is the
teacher, teachers are checked and sampled reproducibly, and the continue stage runs with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_world
from jshear.config_base import reset_unread_blocks
from jshear import distill
from jshear.errors import JShearError
from jshear.metrics import read_metrics
from jshear.model.config import ModelConfig
from jshear.model.params import param_shapes
from jshear.model.transformer import forward
from jshear.model.loss import token_targets
from jshear.train.pipeline import run


def tiny(seed=0, **kw):
  base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
              num_kv_heads=2, head_dim=8)
  base.update(kw)
  cfg = ModelConfig(**base)
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map_with_path(
      lambda p, s: (1.0 + 0.2 * rng.standard_normal(s) if "norm" in jax.tree_util.keystr(p)
                    else 0.3 * rng.standard_normal(s)).astype(np.float32),
      param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
  return cfg, params


SEG = np.array([[1] * 6 + [2] * 4, [1] * 8 + [0] * 2])
TOK = np.random.default_rng(3).integers(0, 64, SEG.shape).astype(np.int32)
MB = {"tokens": TOK, "segment_ids": SEG,
      "positions": np.array([list(range(6)) + list(range(4)), list(range(8)) + [0, 0]])}


def _fwd(cfg, hidden=False):
  return jax.jit(lambda p: forward(p, TOK, cfg=cfg, positions=MB["positions"], segment_ids=SEG,
                                   return_hidden=hidden))


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl_by_hand(s, t, T):
  """Mean over predicted tokens of T^2 KL(softmax(t/T) || softmax(s/T)), plain numpy."""
  _, w = token_targets(MB)
  w = np.asarray(w, np.float64)
  assert not w[:, -1].any()  # the last position predicts nothing
  w = w[:, :-1]
  lt, ls = _log_softmax(t[:, :-1] / T), _log_softmax(s[:, :-1] / T)
  kl = (np.exp(lt) * (lt - ls)).sum(-1)
  return T * T * (kl * w).sum() / w.sum()


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_kd_loss_equals_kl_by_hand(T):
  scfg, sparams = tiny(0)
  tcfg, tparams = tiny(1, num_layers=4, hidden_size=48, num_heads=6, num_kv_heads=3)
  s_logits = _fwd(scfg)(sparams)
  t_logits = _fwd(tcfg)(tparams)
  d = distill.Distiller(scfg, [distill.TeacherSpec(tcfg)], weight=0.7, temperature=T)
  _, w = token_targets(MB)
  loss, m = jax.jit(lambda s, t: d.loss([t], MB, s, None, jnp.int32(0), jnp.sum(w)))(
      s_logits, tparams)
  want = _kl_by_hand(np.asarray(s_logits, np.float64), np.asarray(t_logits, np.float64), T)
  np.testing.assert_allclose(float(m["distill/kd"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(loss), 0.7 * want, rtol=1e-5)


def test_kd_gradient_is_zero_when_teacher_is_student():
  cfg, params = tiny(0)
  d = distill.Distiller(cfg, [distill.TeacherSpec(cfg)], weight=1.0, temperature=1.0)
  _, w = token_targets(MB)

  @jax.jit
  def kd(p, teacher):
    logits = forward(p, TOK, cfg=cfg, positions=MB["positions"], segment_ids=SEG)
    return d.loss([teacher], MB, logits, None, jnp.int32(0), jnp.sum(w))[0]

  loss, g = jax.value_and_grad(kd)(params, params)
  assert abs(float(loss)) < 1e-6
  assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g)) < 1e-6
  # ...and a different teacher does pull on the student.
  g2 = jax.grad(kd)(params, tiny(5)[1])
  assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g2)) > 1e-3


def test_teacher_with_other_vocab_is_a_clear_error():
  scfg, _ = tiny(0)
  tcfg, _ = tiny(1, vocab_size=80)
  with pytest.raises(JShearError, match=r"vocab_size=80 .* student has vocab_size=64"):
    distill.teacher_spec(scfg, tcfg, [], name="big")
  with pytest.raises(JShearError, match="vocab_size=80"):
    distill.Distiller(scfg, [distill.TeacherSpec(tcfg)])


def test_hidden_matching_by_hand_with_channel_projection():
  scfg, sparams = tiny(0)                          # hidden 32, 3 layers
  tcfg, tparams = tiny(1, hidden_size=48, num_layers=5)
  kept_hidden = np.sort(np.random.default_rng(0).choice(48, 32, replace=False))
  kept_layers = np.array([0, 2, 4])
  pairs = distill.parse_hidden_layers("1,2:3", scfg.num_layers)
  spec = distill.teacher_spec(scfg, tcfg, pairs, kept_layers=kept_layers, kept_hidden=kept_hidden)
  assert spec.layers == (2, 3) and spec.channels == tuple(kept_hidden)
  d = distill.Distiller(scfg, [spec], weight=0.0, hidden_layers=[1, 2], hidden_weight=2.0)
  s_logits, s_h = _fwd(scfg, True)(sparams)
  _, t_h = _fwd(tcfg, True)(tparams)
  loss, m = jax.jit(lambda t: d.loss([t], MB, s_logits, s_h, jnp.int32(0), jnp.float32(13.0)))(
      tparams)
  s, t = np.asarray(s_h, np.float64)[[1, 2]], np.asarray(t_h, np.float64)[[2, 3]][..., kept_hidden]
  rel = ((s - t) ** 2).sum(-1) / (t ** 2).sum(-1)
  want = (rel.mean(0) * (SEG != 0)).sum() / 13.0
  np.testing.assert_allclose(float(m["distill/hidden"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(loss), 2.0 * want, rtol=1e-5)


def test_hidden_matching_refuses_unrelated_sizes():
  scfg, _ = tiny(0)
  tcfg, _ = tiny(1, hidden_size=48)
  with pytest.raises(JShearError, match="equal hidden sizes or a student pruned"):
    distill.teacher_spec(scfg, tcfg, distill.parse_hidden_layers("1", 3))
  with pytest.raises(JShearError, match="out of range"):
    distill.parse_hidden_layers("3", 3)
  # Proportional mapping when the student was not pruned from the teacher.
  spec = distill.teacher_spec(scfg, tiny(1, num_layers=6)[0], distill.parse_hidden_layers("0,2", 3))
  assert spec.layers == (1, 5)


def test_teacher_sampling_is_seeded_and_first_fraction_stops():
  cfg, _ = tiny(0)
  specs = [distill.TeacherSpec(cfg)] * 3
  a = distill.Distiller(cfg, specs, seed=7, stop_step=distill.stop_step(0.25, 20))
  b = distill.Distiller(cfg, specs, seed=7)
  picks = [int(a.teacher_index(jnp.int32(s))) for s in range(30)]
  assert picks == [int(b.teacher_index(jnp.int32(s))) for s in range(30)]
  assert set(picks) == {0, 1, 2}
  assert [bool(a.active(jnp.int32(s))) for s in (0, 4, 5, 19)] == [True, True, False, False]
  with pytest.raises(JShearError, match="first_fraction"):
    distill.stop_step(0.0, 20)


# ---- the continue stage of a run ------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def test_continue_stage_distills_from_the_source(world, tmp_path_factory):
  cfg = tiny_world.config(world)
  cfg.stages, cfg.prune.method, cfg.final_eval = "prune,finalize,continue", "random", False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  k = cfg.continued
  k.steps, k.eval_every, k.ckpt_every, k.reweight_rule = 4, 0, 4, "constant"
  k.grad_accum, k.batch_size = 2, 16
  # Two teachers (the source twice: each gets the pruning's layer/channel projection), drawn
  # per step inside the jitted step; hidden states matched at student layers 0 and 2.
  cfg.distill.update(enable=True, teachers="source,source", temperature=2.0, first_fraction=0.5,
                     hidden_layers="0,2", hidden_weight=0.1, lm_weight=0.5)
  workdir = str(tmp_path_factory.mktemp("kd"))
  run(cfg, workdir)
  recs = [r for r in read_metrics(workdir) if r["stage"] == "continue" and "lm_loss" in r]
  assert [r["distill/active"] for r in recs] == [1, 1, 0, 0]
  assert recs[0]["distill/kd"] > 0 and recs[0]["distill/hidden"] > 0
  assert recs[-1]["distill/kd"] == 0
  assert all(r["distill/teacher"] in (0, 1) for r in recs)


def test_bad_distill_config_fails_before_any_stage(world, tmp_path):
  import hf_tiny
  other = str(tmp_path / "other_vocab")
  hf_tiny.build(hf_tiny.llama_config(vocab=300, layers=1)).save_pretrained(other)
  for change, pattern in [
      (dict(teachers=other), r"vocab_size=300 but the student has vocab_size=256"),
      (dict(hidden_layers="3"), r"student layer 3 is out of range \(student has 3 layers\)"),
      (dict(first_fraction=1.5), "first_fraction"),
      (dict(teachers=str(tmp_path / "missing")), "is not a directory")]:
    cfg = tiny_world.config(world)
    cfg.distill.update(enable=True, **change)
    workdir = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
    with pytest.raises(JShearError, match=pattern):
      run(cfg, str(workdir))
    assert not (workdir / "prune").exists()


def test_lora_trains_under_the_distilling_loss():
  """The continue stage's distilling loss passes the LoRA adapters to the student forward:
  one distilled step moves B and leaves the weights bitwise unchanged."""
  from jshear.config_base import train_block
  from jshear.optim import build_optimizer
  from jshear.train.adapters import LoraAddon
  from jshear.train.step import build_step, init_state, lm_kd_loss, step_addons, step_groups
  cfg, params = tiny(0)
  addon = LoraAddon(2, 4.0, ("q", "v", "down"))
  groups = step_groups(step_addons(lora=addon))
  opt = build_optimizer(train_block(steps=10, warmup_steps=0, lr=3e-2, schedule="constant"),
                        10, groups)
  d = distill.Distiller(cfg, [distill.TeacherSpec(cfg)], weight=1.0, temperature=2.0)
  step = jax.jit(build_step(opt, lm_kd_loss(cfg, d), groups=groups, addons=(addon,)))
  state = init_state(params, opt, 0, groups=groups,
                     extra={"lora": addon.init(cfg, jax.random.key(1), jnp.float32)})
  new, m = step(state, MB, [tiny(5)[1]])
  assert np.isfinite(float(m["distill/kd"])) and float(m["distill/kd"]) > 0
  assert all(float(jnp.abs(v["b"]).max()) > 0 for v in new["lora"].values())
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
