"""The seams new stages build on: the planner compiles the program the loop trains, and a
stage defined only here runs through the pipeline from one row in the stage table."""

import hashlib
import os
import time

import jax
import numpy as np
import pytest

import tiny_world
from jshear import sharding as shd
from jshear.config_base import train_block
from jshear.model_io import load_model
from jshear.train import loop, plan, stages
from jshear.train.pipeline import run
from jshear.train.stages.base import Stage
from jshear.train.stages.common import Model, gather_params, save_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def _demo_on_tiny_world(world):
  """configs/demo.py with every step option it sets (importance init with a band,
  straight-through gates, projection, mask lr, bounds, distillation for half the continue
  stage, dynamic batch loading), on the tiny world's model and data."""
  cfg = plan.load_config(os.path.join(REPO, "configs", "demo.py"))
  cfg.model.source, cfg.data.corpus = world["hf"], ""
  cfg.data.path, cfg.data.seq_len = world["data"], tiny_world.SEQ
  cfg.prune.target.update(num_layers=3, num_heads=2, num_kv_heads=1, hidden_size=32,
                          intermediate_size=48)
  for block in (cfg.prune, cfg.continued):
    block.steps, block.batch_size, block.warmup_steps = 2, 8, 1
    block.log_every, block.eval_every, block.ckpt_every, block.reweight_every = 1, 2, 2, 2
  cfg.stages = "prune,finalize,continue"
  return cfg


def _fingerprint(lowered) -> str:
  return hashlib.sha1(lowered.as_text().encode()).hexdigest()


def test_the_planner_compiles_the_step_the_loop_trains(world, tmp_path, monkeypatch):
  cfg = _demo_on_tiny_world(world)
  assert cfg.distill.enable and cfg.prune.learned.gate_forward == "deterministic"
  built = {}

  def spy(ctx, stage, *args, **kwargs):
    built[stage.name] = out = real(ctx, stage, *args, **kwargs)
    return out

  real = loop.stage_step
  monkeypatch.setattr(loop, "stage_step", spy)
  run(cfg, str(tmp_path / "run"))
  assert set(built) == {"prune", "continue"}
  mesh = shd.make_mesh(dict(cfg.mesh.ici), dict(cfg.mesh.dcn))
  for name, block in (("prune", cfg.prune), ("continue", cfg.continued)):
    planned, _, _ = plan.stage_plan(cfg, name, plan.source_config(cfg, name), mesh)
    with jax.set_mesh(mesh):
      want = _fingerprint(built[name].lower(block.batch_size, tiny_world.SEQ))
      got = _fingerprint(planned.lower(block.batch_size, tiny_world.SEQ))
    assert got == want, f"stage {name}: the planner's program differs from the loop's"
  assert built["continue"].teacher_shardings is not None
  # The memory figure counts the resident teacher (the source: more bytes than the student).
  out = plan.plan(cfg, "continue", plan.source_config(cfg, "continue"), mesh, 80.0)
  gib = out["per_device_gib"]
  assert gib["teachers"] > gib["params"] > 0
  assert abs(gib["total"] - sum(v for k, v in gib.items() if k != "total")) < 1e-9


# ---- a stage that exists only in this file -------------------------------------------

def _toy_run(ctx, model):
  state, _ = loop.train_stage(ctx, TOY, model.cfg, model.params)
  save_dir(os.path.join(ctx.workdir, TOY.output), model, state["params"], model.origin)
  return Model(model.cfg, gather_params(state["params"]), model.tokenizer, model.origin)


def _toy_block():
  return train_block(steps=4, batch_size=8, warmup_steps=1, lr=1e-3, log_every=1,
                     eval_every=0, ckpt_every=2)


TOY = Stage("toy", _toy_run, block="toy", defaults=_toy_block, trains=lambda cfg: True,
            seed_offset=9, output="toy")


@pytest.fixture
def toy_table(monkeypatch):
  monkeypatch.setattr(stages, "STAGES", stages.STAGES + (TOY,))


def _toy_config(world):
  cfg = tiny_world.config(world)
  cfg.stages = "toy"
  return cfg


def _count_batches(monkeypatch, fail_at=None):
  calls = []
  real = loop.MixtureLoader.next_batch

  def counted(self):
    calls.append(1)
    if fail_at is not None and len(calls) == fail_at:
      raise KeyboardInterrupt("interrupted by the test")
    return real(self)

  monkeypatch.setattr(loop.MixtureLoader, "next_batch", counted)
  return calls


def test_a_stage_from_one_table_row_runs_resumes_and_is_skipped(world, tmp_path, toy_table,
                                                                monkeypatch):
  # Straight through, for reference.
  calls = _count_batches(monkeypatch)
  ref = run(_toy_config(world), str(tmp_path / "straight"))
  assert len(calls) == 4 and ref["stages"] == ["toy"]
  ref_params = jax.tree.leaves(jax.device_get(load_model(str(tmp_path / "straight" / "toy"))[1]))
  # Interrupted in step 4 (index 3), after the step-2 checkpoint.
  wd = tmp_path / "interrupted"
  calls = _count_batches(monkeypatch, fail_at=4)
  with pytest.raises(KeyboardInterrupt):
    run(_toy_config(world), str(wd))
  assert not (wd / "toy" / "DONE").exists()
  deadline = time.time() + 60  # the async save of step 2 lands in the background
  while not (wd / "toy" / "checkpoints" / "2").is_dir() and time.time() < deadline:
    time.sleep(0.5)
  calls = _count_batches(monkeypatch)
  run(_toy_config(world), str(wd))
  assert len(calls) == 2, "the rerun should resume at step 2, not start again"
  assert (wd / "toy" / "DONE").exists()
  got = jax.tree.leaves(jax.device_get(load_model(str(wd / "toy"))[1]))
  for a, b in zip(ref_params, got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Done: skipped, no batch drawn.
  calls = _count_batches(monkeypatch)
  run(_toy_config(world), str(wd))
  assert calls == []


def test_stage_declarations_are_consistent():
  table = stages.table()
  assert list(table) == ["pretrain", "prune", "finalize", "continue", "export", "grow",
                         "blockwise"]
  for s in table.values():
    if s.trains is not None:
      assert s.block and s.seed_offset, s.name
    if s.stream_from is not None:
      assert s.stream_from.name in table and s.stream_from.trains is not None
    for r in s.reads_checkpoints:
      assert table[r].trains is not None
