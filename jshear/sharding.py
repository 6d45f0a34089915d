"""Mesh from config, and the one table mapping logical axis names to mesh axes.

Every parameter carries logical names (`jshear.model.params.param_axes`); activations use
`batch`. `RULES` is the whole sharding policy: change a line here, not the model code.
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jshear.errors import JShearError

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes). Dims that don't divide fall back to replication.
RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("fused", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),  # LoRA's rank: small, replicated (docs/memory_plan.md: fsdp here
                          # stored less but planned 3.9 GiB more temporaries on 2.7B)
    # an adapter's weight-side dims beside heads: fsdp (and tensor, as the weight's), so no
    # adapter half is whole on every fsdp device (jshear/model/lora.py)
    ("lora_head_dim", "fsdp"),
    ("lora_mlp", ("tensor", "fsdp")),
)
_log = logging.getLogger(__name__)


def resolve_axes(sizes: dict, n_devices: int, what: str) -> dict:
  """Fill a single -1 with "the rest" and check the product."""
  sizes = {a: int(sizes.get(a, 1)) for a in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise JShearError(f"{what}: at most one mesh axis may be -1, got {free}")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if n_devices % fixed:
      raise JShearError(f"{what}: {n_devices} devices do not divide by the fixed axes "
                        f"{ {a: s for a, s in sizes.items() if s != -1} } (product {fixed})")
    sizes[free[0]] = n_devices // fixed
  if math.prod(sizes.values()) != n_devices:
    raise JShearError(f"{what}: mesh {sizes} has {math.prod(sizes.values())} devices, "
                      f"but {n_devices} are available")
  return sizes


def make_mesh(ici: dict, dcn: dict | None = None, devices=None) -> Mesh:
  """ici: per-slice sizes; dcn: across-slice sizes (multi-slice TPU / multi-node)."""
  devices = list(devices if devices is not None else jax.devices())
  dcn = resolve_axes(dcn or {}, _num_slices(devices), "mesh.dcn")
  n_slices = math.prod(dcn.values())
  ici = resolve_axes(ici, len(devices) // n_slices, "mesh.ici")
  shape = tuple(ici[a] * dcn[a] for a in MESH_AXES)
  if n_slices > 1:
    from jax.experimental import mesh_utils
    arr = mesh_utils.create_hybrid_device_mesh(
        [ici[a] for a in MESH_AXES], [dcn[a] for a in MESH_AXES], devices=devices)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _num_slices(devices) -> int:
  ids = {getattr(d, "slice_index", 0) for d in devices}
  return len(ids)


def spec_for(shape, logical, mesh: Mesh, rules=RULES) -> P:
  """PartitionSpec for one array: each logical dim maps through `rules`; a mesh axis is used
  at most once, and only where it divides the dim (else that dim is replicated)."""
  table = dict(rules)
  used, out = set(), []
  for dim, name in zip(shape, logical):
    axes = table.get(name)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if axes and dim % size == 0:
      used.update(axes)
      out.append(axes if len(axes) > 1 else axes[0])
    else:
      out.append(None)
  return P(*out)


def tree_shardings(shapes_tree, axes_tree, mesh: Mesh, rules=RULES):
  """NamedShardings for a tree of arrays (or ShapeDtypeStructs) given its logical axes."""
  return jax.tree.map(
      lambda x, ax: NamedSharding(mesh, spec_for(x.shape, ax, mesh, rules)),
      shapes_tree, axes_tree, is_leaf=lambda x: isinstance(x, tuple) and all(
          isinstance(a, (str, type(None))) for a in x))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def validate_layout(mesh: Mesh, global_batch: int, micro_batches: int, num_heads: int,
                    block: str = "train") -> None:
  """`block`: the config block the batch comes from (prune, continued...), for the message."""
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % micro_batches:
    raise JShearError(f"{block}.batch_size ({global_batch}) must be divisible by "
                      f"{block}.grad_accum ({micro_batches})")
  if (global_batch // micro_batches) % dp:
    raise JShearError(f"micro-batch size {global_batch // micro_batches} ({block}.batch_size / "
                      f"{block}.grad_accum) must be divisible by data x fsdp = {dp} "
                      f"(mesh {describe(mesh)})")
  if num_heads % mesh.shape["tensor"]:
    raise JShearError(f"model heads ({num_heads}) must be divisible by mesh tensor size "
                      f"({mesh.shape['tensor']})")


def describe(mesh: Mesh) -> str:
  return " x ".join(f"{a}={mesh.shape[a]}" for a in MESH_AXES) + f" ({mesh.size} devices)"


def host_local_batch_to_global(batch: dict, mesh: Mesh) -> dict:
  """Each process passes its own rows; returns global arrays sharded over data x fsdp."""
  def one(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, x.ndim)
    return jax.make_array_from_process_local_data(sharding, x)
  return {k: one(v) for k, v in batch.items()}


def to_host(x):
  """Host numpy of a replicated (or fully addressable) array, also on multi-host runs where
  `np.asarray` of a global array would fail. A multi-process array that is not replicated
  is refused: its first local shard is only part of it (gather it, or jit the producer with
  `out_shardings=replicated(mesh)`)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise JShearError(
          f"to_host: array of shape {x.shape} is split across processes "
          f"(sharding {x.sharding}); it must be fully replicated to read it on one host "
          f"(jit its producer with out_shardings=replicated(mesh), or gather it first)")
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)
