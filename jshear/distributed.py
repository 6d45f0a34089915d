"""Multi-host start-up on JAX's own runtime: `jax.distributed.initialize`, topology log,
and barriers that time out instead of hanging a whole cluster behind one slow host."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

_log = logging.getLogger(__name__)
_CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "JOBSET_NAME", "JAX_COORDINATOR_ADDRESS")


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
               cpu_collectives: str = "gloo", timeout_s: int = 300) -> None:
  """Explicit flags win; else jax auto-detects SLURM / TPU pods / GKE; a plain single
  machine skips initialisation entirely."""
  explicit = bool(coordinator)
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if num_processes <= 0 and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id < 0 and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if not coordinator and not any(k in os.environ for k in _CLUSTER_ENV):
    return
  if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  kw = {"initialization_timeout": timeout_s}
  if coordinator:
    kw["coordinator_address"] = coordinator
  if num_processes > 0:
    kw["num_processes"] = num_processes
  if process_id >= 0:
    kw["process_id"] = process_id
  jax.distributed.initialize(**kw)
  _log.info("jax.distributed initialised (%s)", "explicit" if explicit else "auto-detected")


def topology() -> dict:
  devs = jax.devices()
  return {"process_index": jax.process_index(), "process_count": jax.process_count(),
          "local_devices": jax.local_device_count(), "global_devices": len(devs),
          "backend": jax.default_backend(), "device_kind": devs[0].device_kind}


def barrier(name: str, timeout_s: int = 600) -> None:
  """Named barrier with a timeout (no-op on one process)."""
  if jax.process_count() == 1:
    return
  client = getattr(jax._src.distributed.global_state, "client", None)
  if client is not None:
    client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
  else:
    multihost_utils.sync_global_devices(name)


def all_equal(x, name: str) -> bool:
  """True when every process holds the same host value (config, data hash...)."""
  if jax.process_count() == 1:
    return True
  arr = np.asarray(x)
  gathered = multihost_utils.process_allgather(arr)
  return bool(np.all(gathered == gathered[0]))
