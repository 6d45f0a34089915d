"""Run one training stage (pretrain, prune or continue): the same loop for all of them.

Resumable: the loop restores the latest checkpoint of its stage (train state + loader state
+ reference losses + base domain weights) and continues with the identical next batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import numpy as np
from tqdm import tqdm

from jshear import sharding as shd
from jshear.checkpoint import Checkpointer, abstract_like
from jshear.config_check import STREAMS  # noqa: F401 (defined there, re-exported)
from jshear.data import reweight, upsample
from jshear.data.mixture import MixtureLoader, domain_sources
from jshear.data.stats import initial_weights
from jshear.errors import JShearError
from jshear.metrics import attention_flops_per_token, model_flops_per_token
from jshear.model.config import ModelConfig
from jshear.optim import schedule_fn, stage_span
from jshear.model.loss import row_nll
from jshear.model.state_sharding import put_global
from jshear.prune.state import eval_masks, kept_units
from jshear.train.compile import compute_dtype, stage_step
from jshear.train.context import Context, PruneSpec  # noqa: F401  (re-exported)

_log = logging.getLogger(__name__)


class DomainEval:
  """Fixed per-domain validation batches and a jitted per-domain (nll, tokens) reduction:
  the in-loop evals and dynamic batch loading read these rows; reported figures use the
  test rows (`jshear.eval.heldout`)."""

  def __init__(self, ctx: Context, model_cfg: ModelConfig, domains, batch_size: int,
               n_batches: int, compute_dtype=None):
    self.domains = list(domains)
    mesh, P = ctx.mesh, jax.process_count()
    sources = domain_sources(ctx.data_dir, "valid")  # what steers training; never reported
    rows, doms = [], []
    for i, d in enumerate(self.domains):
      src = sources.get(d, [])
      for j in range(min(len(src), batch_size * n_batches)):
        rows.append(np.asarray(src[j]))
        doms.append(i)
    self.counts = {d: int(sum(1 for x in doms if x == i)) for i, d in enumerate(self.domains)}
    self.batches = []
    if rows:
      T = rows[0].shape[-1]
      n = math.ceil(len(rows) / batch_size) * batch_size
      tok = np.zeros((n, T), np.int32)
      seg = np.zeros((n, T), np.int32)
      dom = np.zeros((n,), np.int32)
      for k, (r, d) in enumerate(zip(rows, doms)):
        tok[k], seg[k], dom[k] = r[0], r[1], d
      from jshear.data.shards import positions_from_segments
      pos = positions_from_segments(seg)
      per_host = batch_size // P
      p = jax.process_index()
      for s in range(0, n, batch_size):
        mine = slice(s + p * per_host, s + (p + 1) * per_host)
        self.batches.append(shd.host_local_batch_to_global(
            {"tokens": tok[mine], "segment_ids": seg[mine], "positions": pos[mine],
             "domain": dom[mine]}, mesh))
    K = len(self.domains)

    def eval_fn(params, masks, adapters, batch):
      nll, cnt = row_nll(params, batch, cfg=model_cfg, masks=masks, compute_dtype=compute_dtype,
                         adapters=adapters)
      return (jax.ops.segment_sum(nll, batch["domain"], K),
              jax.ops.segment_sum(cnt, batch["domain"], K))

    self._fn = jax.jit(eval_fn, out_shardings=shd.replicated(mesh))

  def __call__(self, params, masks=None, adapters=None) -> dict[str, float]:
    """`adapters`: a `jshear.model.lora.Adapters` (unmerged LoRA), or None."""
    tot = np.zeros(len(self.domains))
    cnt = np.zeros(len(self.domains))
    for b in self.batches:
      s, c = self._fn(params, masks, adapters, b)
      tot += shd.to_host(s)
      cnt += shd.to_host(c)
    return {d: (float(tot[i] / cnt[i]) if cnt[i] > 0 else float("nan"))
            for i, d in enumerate(self.domains)}


def _initial_weights(block, domains, data_dir: str) -> dict:
  if block.get("domain_weights_from"):  # BiMix's entropy mixture (jshear/data/stats.py)
    w = initial_weights(data_dir, block.domain_weights_from, block.domain_weights_temperature)
    _log.info("initial domain weights from %s: %s", block.domain_weights_from,
              {d: round(x, 4) for d, x in w.items()})
    return {d: w[d] for d in domains}
  w = dict(block.domain_weights)
  if not w:
    return {d: 1.0 / len(domains) for d in domains}
  missing = sorted(set(domains) - set(w))
  unknown = sorted(set(w) - set(domains))
  if unknown:
    raise JShearError(f"domain_weights names domains {unknown} that the prepared data does not "
                      f"have (it has {list(domains)})")
  for d in missing:  # domains the config does not mention get no data
    w[d] = 0.0
  return {d: float(w[d]) for d in domains}


def stage_seed(cfg, stage) -> int:
  """Each stage's own seed (state rng and data stream): continued pretraining must not
  replay the rows the pruning stage trained on (offsets: the stages' declarations)."""
  return stage.seed(cfg)


def _span(ctx: Context, name: str):
  return stage_span(ctx.cfg, name, ctx.prune_trains)


def data_stream(cfg) -> str:
  stream = cfg.data.get("stream", "per_stage")
  if stream not in STREAMS:
    raise JShearError(f"data.stream must be one of {STREAMS}, got {stream!r}")
  return stream


def data_seed(cfg, stage) -> int:
  """The seed of `stage`'s data stream: a later listing of a stage (`Stage.previous`, e.g.
  pretrain after grow) draws its earlier listing's; with data.stream=shared a stage draws
  the stream of the stage it continues (`Stage.stream_from`: continue the pruning stage's);
  else its own."""
  if stage.previous is not None:
    return data_seed(cfg, stage.previous)
  if data_stream(cfg) == "shared" and stage.stream_from is not None:
    return stage.stream_from.seed(cfg)
  return stage.seed(cfg)


def stream_end_path(workdir: str, stage: str = "prune") -> str:
  """Where `drop_checkpoints` keeps a stage's final loader state."""
  return os.path.join(workdir, stage, "stream_end.json")


def _read_stream_end(workdir: str, stage: str) -> dict | None:
  path = stream_end_path(workdir, stage)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _stream_source(ctx: Context, stage):
  """The stage whose stream `stage` picks up where it stopped (None: it starts its own):
  its earlier listing (as Gstack continues the data after growth), or with
  data.stream=shared `stage.stream_from` when that trained (the pruning stage)."""
  if stage.previous is not None:
    return stage.previous
  if data_stream(ctx.cfg) == "shared" and stage.stream_from is not None and ctx.prune_trains:
    return stage.stream_from
  return None


def _shared_stream_start(ctx: Context, stage):
  """The loader state `stage` picks up: where this workdir's `_stream_source` stopped
  (None: the stream's start)."""
  src = _stream_source(ctx, stage)
  if src is None:
    return None
  ck = os.path.join(ctx.workdir, src.name, "checkpoints")
  c = Checkpointer(ck) if os.path.isdir(ck) else None
  try:
    if c is None or c.latest_step() is None:
      kept = _read_stream_end(ctx.workdir, src.name)  # checkpoints gone: drop_checkpoints
      if kept is not None:
        return kept
      _log.warning("%s: no %s checkpoint in %s, so the stage starts the data stream at its "
                   "beginning (rows trained on elsewhere may come again)", stage.name,
                   src.name, ctx.workdir)
      return None
    return c.read_extra()["loader"]
  finally:
    if c is not None:
      c.close()


def checkpointer(ctx: Context, stage) -> Checkpointer:
  block = ctx.cfg[stage.block]
  return Checkpointer(os.path.join(ctx.workdir, stage.name, "checkpoints"), block.keep_last,
                      block.keep_every or None)


def restore_final_state(ctx: Context, stage, model_cfg: ModelConfig,
                        prune: PruneSpec | None, mask_groups=None):
  """The last saved train state of a finished stage (its declaration: `stage`)."""
  plan = stage_step(ctx, stage, model_cfg, prune, mask_groups)
  name = stage.name
  ckpt = checkpointer(ctx, stage)
  try:
    if ckpt.latest_step() is None:
      raise JShearError(
          f"stage {name} is done but {ckpt.directory} holds no checkpoint (deleted, e.g. by "
          f"drop_checkpoints=True before a later stage needed it); run stage {name} again: "
          f"delete {os.path.join(ctx.workdir, name, 'DONE')} or use a new --workdir")
    state, _ = ckpt.restore(abstract_like(plan.abstract, plan.shardings))
  finally:
    ckpt.close()
  return state


def _update_masks(ctx: Context, name: str, schedule, state, step: int, shardings) -> dict:
  """The state with the schedule's masks for `step` (unchanged where they do not change)."""
  new = schedule.masks_at(step, state["params"])
  if new is None:
    return state
  masks, ste = new
  state = dict(state)
  state["masks"] = put_global(masks, shardings["masks"])
  state["mask_ste"] = put_global(np.float32(ste), shardings["mask_ste"])
  kept = {f"prune/kept/{g}": float(np.sum(m)) for g, m in masks.items()}
  ctx.writer.write(name, step, {**kept, "prune/straight_through": float(ste)})
  _log.info("%s: masks at step %d keep %s", name, step,
            {g: int(v) for g, v in kept.items()})
  return state


def _check_streaks(name: str, streaks: list, max_bad: int, step: int) -> None:
  worst = max((int(shd.to_host(s)) for s in streaks), default=0)
  if worst >= max_bad:
    raise JShearError(f"{name}: {worst} non-finite steps in a row by step {step} "
                      f"(max_bad_steps={max_bad}); lower the lr or check data")


def train_stage(ctx: Context, stage, model_cfg: ModelConfig, params_host,
                prune: PruneSpec | None = None, distill=None, reference=None, schedule=None,
                init_log_alpha=None):
  """Trains `params_host` (numpy, or None when a checkpoint exists) for the steps of the
  stage's block. `stage`: its declaration (jshear.train.stages.base.Stage).
  `schedule`: a `jshear.prune.iterative.MaskSchedule` whose masks replace the state's
  before the steps where they change (iterative pruning).
  `reference`: a callable giving per-domain reference losses when the config has none
  (default: the stage's own starting model).
  `distill`: a `jshear.distill.Setup` (teachers run inside the step, sharded like the
  student). Returns (final train state, evaluator)."""
  cfg, mesh, name = ctx.cfg, ctx.mesh, stage.name
  block = cfg[stage.block]
  shd.validate_layout(mesh, block.batch_size, block.grad_accum, model_cfg.num_heads)
  if block.batch_size % jax.process_count():
    raise JShearError(f"{name}.batch_size ({block.batch_size}) must divide by the number of "
                      f"processes ({jax.process_count()})")
  ckpt = checkpointer(ctx, stage)
  resuming = ckpt.latest_step() is not None
  plan = stage_step(ctx, stage, model_cfg, prune,
                    schedule.groups if schedule is not None else None,
                    None if resuming else init_log_alpha,
                    distill.distiller if distill is not None else None)
  shardings = plan.shardings

  sources = domain_sources(ctx.data_dir, "train")
  domains = list(sources)
  loader = MixtureLoader(sources, _initial_weights(block, domains, ctx.data_dir), block.batch_size,
                         seed=data_seed(cfg, stage), process_index=jax.process_index(),
                         process_count=jax.process_count())
  evaluator = DomainEval(ctx, model_cfg, domains, block.batch_size, block.eval_batches,
                         compute_dtype(cfg.model.compute_dtype))
  extra = {}
  if resuming:
    state, extra = ckpt.restore(abstract_like(plan.abstract, shardings))
    loader.set_state(extra["loader"])
    _log.info("%s: resumed at step %d", name, int(shd.to_host(state["step"])))
  else:
    if params_host is None:
      raise JShearError(f"stage {name}: no checkpoint to resume and no initial params")
    params = put_global(jax.tree.map(lambda x: np.asarray(x, cfg.model.param_dtype), params_host),
                        shardings["params"])
    state = jax.jit(plan.make_state, out_shardings=shardings)(params, plan.prune_state)
    carried = _shared_stream_start(ctx, stage)
    if carried is not None:
      loader.continue_stream(carried)
      _log.info("%s: data stream picked up at step %d of %s's", name, int(carried["step"]),
                _stream_source(ctx, stage).name)
  params_host = None
  teachers = ()
  if distill is not None:
    from jshear.distill import put_teachers
    teachers = (put_teachers(distill, mesh, cfg.model.param_dtype)[0],)
  step_fn = plan.step

  masks_for_eval = lambda st: (eval_masks(st["prune"]) if prune else st.get("masks"))
  adapters_for_eval = lambda st: plan.lora.eval_adapters(st) if plan.lora else None
  rule = block.reweight_rule
  ref = dict(extra.get("ref_losses") or block.ref_losses or {})
  if rule != "constant" and not ref:
    # The source model's own per-domain loss as reference (the authors: works about as well).
    ref = reference() if reference else evaluator(state["params"], None)
    _log.info("%s: reference losses from the source model: %s", name, ref)
  base_weights = dict(extra.get("base_weights") or loader.weights)
  lr = schedule_fn(block, block.steps, _span(ctx, name))
  fpt = model_flops_per_token(model_cfg) + attention_flops_per_token(model_cfg, cfg.data.seq_len)

  # Units whose deterministic keep/drop changed since the last log (prune/<group>/flips):
  # whether learned gates are still choosing, or have settled.
  kept_host = lambda: kept_units(jax.tree.map(shd.to_host, state["prune"]))
  kept_before = kept_host() if prune else None
  start = int(shd.to_host(state["step"]))
  bar = tqdm(total=block.steps, initial=start, desc=name, disable=jax.process_index() != 0,
             dynamic_ncols=True, mininterval=2.0)
  t_last, tok_last, streaks = time.time(), 0.0, []
  compile_s = None
  for step in range(start, block.steps):
    want = upsample.upsampled_weights(base_weights, step, block.steps,
                                      block.upsample_last_fraction, dict(block.upsample_factors))
    if any(abs(want[d] - loader.weights[d]) > 1e-12 for d in domains):
      loader.set_weights(want)
    if schedule is not None:
      state = _update_masks(ctx, name, schedule, state, step, shardings)
    batch = loader.next_batch()
    domain_rows = np.bincount(batch.pop("domain"), minlength=len(domains))
    t0 = time.time()
    state, metrics = step_fn(state, shd.host_local_batch_to_global(batch, mesh), *teachers)
    if compile_s is None:
      jax.block_until_ready(metrics["loss"])
      compile_s = time.time() - t0
      t_last, tok_last = time.time(), -float(block.batch_size * cfg.data.seq_len)
    # Non-finite streaks are read back only with the logged metrics (no per-step sync):
    # the abort comes at the latest one log interval after the streak.
    streaks.append(metrics["bad_streak"])
    tok_last += float(block.batch_size * cfg.data.seq_len)
    done = step + 1
    bar.update(1)
    if done % block.log_every == 0 or done == block.steps:
      _check_streaks(name, streaks, block.max_bad_steps, done)
      streaks = []
      m = jax.tree.map(shd.to_host, metrics)
      dt = max(time.time() - t_last, 1e-9)
      tps = tok_last / dt
      rec = {k: v for k, v in m.items()}
      rec.update({"lr": float(lr(step)), "tokens_per_s": tps,
                  "model_tflops_per_s": tps * fpt / 1e12, "compile_s": compile_s})
      rec.update({f"data/weight/{d}": w for d, w in loader.weights.items()})
      rec.update({f"data/rows/{d}": int(n) for d, n in zip(domains, domain_rows)})
      if prune:
        kept_now = kept_host()
        rec.update({f"prune/{g}/flips": int(np.sum(kept_now[g] != kept_before[g]))
                    for g in kept_now})
        kept_before = kept_now
      ctx.writer.write(name, done, rec)
      bar.set_postfix(loss=f"{float(m['lm_loss']):.3f}", tok_s=f"{tps:.0f}",
                      tflops=f"{tps * fpt / 1e12:.3g}")
      t_last, tok_last = time.time(), 0.0
    if block.eval_every and (done % block.eval_every == 0 or done == block.steps):
      losses = evaluator(state["params"], masks_for_eval(state), adapters_for_eval(state))
      rec = {f"eval/{d}/loss": l for d, l in losses.items()}
      if rule != "constant" and (not block.reweight_every or done % block.reweight_every == 0):
        base_weights = reweight.update_weights(rule, base_weights, losses, ref, evaluator.counts,
                                               block.reweight_eta, block.reweight_smoothing)
        want = upsample.upsampled_weights(base_weights, done, block.steps,
                                          block.upsample_last_fraction,
                                          dict(block.upsample_factors))
        loader.set_weights(want)
        rec.update({f"data/weight/{d}": w for d, w in loader.weights.items()})
      ctx.writer.write(name, done, rec)
      t_last = time.time()
    if done % block.ckpt_every == 0 or done == block.steps:
      ckpt.save(done, state, {"loader": loader.get_state(), "ref_losses": ref,
                              "base_weights": base_weights, "stage": name},
                force=done == block.steps)
      t_last = time.time()
  bar.close()
  ckpt.close()
  skipped = int(shd.to_host(state["skipped"]))  # over the whole stage, resumes included
  if block.steps and skipped >= block.steps:
    raise JShearError(f"stage {name}: all {skipped} steps were skipped as non-finite (loss or "
                      f"gradient); nothing was trained")
  return state, evaluator
