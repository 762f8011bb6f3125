"""Device mesh, logical-axis rules and shardings; multi-host initialisation.

Model code names logical axes only ("embed", "mlp", "heads", ...). One table maps them to the mesh
axes ("data", "fsdp", "tensor"); changing the parallelism strategy is a config edit (pick a preset
or pass your own rules), never a model edit. Shardings are derived from the params' logical axes and
shapes; a mesh axis that does not divide a dimension is dropped for that tensor (replicated) rather
than failing, and `sharded_fraction` reports how much actually got sharded.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # a batch is split over every data-parallel replica

Rules = Mapping[str, str | tuple[str, ...] | None]

# Activations ("act_*" names, `constrain`): the batch is split over every data-parallel replica,
# in every preset; the residual stream's length and width stay whole on each device, attention
# heads follow the heads' weights (split over tensor under fsdp_tp).
ACTIVATION_RULES: Rules = {"act_batch": BATCH_AXES, "act_length": None, "act_embed": None,
                           "act_heads": None, "act_kv_heads": None}

RULE_PRESETS: dict[str, Rules] = {
    # Pure data parallelism: every param replicated.
    "dp": {**ACTIVATION_RULES},
    # ZeRO-3 style: params and optimizer state split over fsdp along the model width.
    "fsdp": {**ACTIVATION_RULES, "embed": "fsdp"},
    # fsdp plus Megatron-style tensor parallelism on heads, MLP width and vocabulary.
    "fsdp_tp": {**ACTIVATION_RULES, "embed": "fsdp", "mlp": "tensor", "heads": "tensor",
                "kv_heads": "tensor", "vocab": "tensor", "act_heads": "tensor",
                "act_kv_heads": "tensor"},
}


def resolve_rules(rules: str | Rules | Sequence[tuple[str, str | None]]) -> dict:
  """A preset name, a dict, or a list of (logical, mesh) pairs -> a dict of rules (a custom table
  gets ACTIVATION_RULES for the names it does not set)."""
  if isinstance(rules, str):
    if rules not in RULE_PRESETS:
      raise ValueError(f"unknown sharding rules preset {rules!r}; presets: {sorted(RULE_PRESETS)}")
    return dict(RULE_PRESETS[rules])
  rules = {**ACTIVATION_RULES, **dict(rules)}
  for logical, mesh_axes in rules.items():
    for axis in (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ()):
      if axis not in MESH_AXES:
        raise ValueError(f"rule {logical!r} -> {axis!r}: mesh axes are {MESH_AXES}")
  return rules


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh; one size may be -1 (all remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} "
                     f"tensor={tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into fsdp*tensor*data={known}*k")
    sizes[sizes.index(-1)] = len(devices) // known
  if -1 not in (data, fsdp, tensor) and math.prod(sizes) < len(devices):
    logging.info("mesh uses %d of %d devices", math.prod(sizes), len(devices))
    devices = devices[:math.prod(sizes)]
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
                     f"{math.prod(sizes)} devices; {len(devices)} available")
  grid = np.asarray(devices).reshape(sizes)
  # Auto axes: plain jax.jit sharding propagation (Explicit axes reject some gathers).
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules) -> PartitionSpec:
  """PartitionSpec for one array; mesh axes that don't divide the dim (or repeat) are dropped."""
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape, strict=True):
    target = rules.get(name) if name is not None else None
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    kept = []
    for axis in mesh_axes:
      size = mesh.shape[axis]
      if axis in used or size == 1 or dim % (size * math.prod(mesh.shape[a] for a in kept)):
        continue
      kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def _is_axes(x) -> bool:
  return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def param_shardings(axes: dict, shapes: dict, mesh: Mesh, rules: str | Rules = "fsdp_tp") -> dict:
  """NamedShardings for a param tree from its logical axes and its shapes (arrays or structs)."""
  rules = resolve_rules(rules)
  return jax.tree.map(
      lambda ax, x: NamedSharding(mesh, logical_to_spec(ax, x.shape, mesh, rules)),
      axes, shapes, is_leaf=_is_axes)


_ACTIVATIONS: contextvars.ContextVar[tuple[Mesh, dict] | None] = contextvars.ContextVar(
    "jaxprof_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: str | Rules):
  """Within this block, `constrain` pins activations to `mesh` by their logical names (functions
  traced here, e.g. a jitted step's first call, carry the constraints in their program)."""
  token = _ACTIVATIONS.set((mesh, resolve_rules(rules)))
  try:
    yield
  finally:
    _ACTIVATIONS.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`x` with the sharding its logical `axes` map to (e.g. ("act_batch", "act_length",
  "act_embed")), inside `activation_sharding`; unchanged outside it or on one device."""
  active = _ACTIVATIONS.get()
  if active is None or active[0].size == 1:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules)))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dimension split over data and fsdp; the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch, mesh: Mesh):
  """device_put every array of a batch pytree with its leading dim split over the batch axes."""
  return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x))), batch)


def to_host(tree):
  """numpy copies of a pytree's arrays. Arrays that span other processes' devices (a multi-host
  run) are gathered from every process, so all processes must call this together."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def sharded_fraction(tree) -> float:
  """Fraction of the tree's bytes that live in sharded (not fully replicated) arrays."""
  total = sharded = 0
  for x in jax.tree.leaves(tree):
    total += x.nbytes
    if not x.sharding.is_fully_replicated:
      sharded += x.nbytes
  return sharded / max(total, 1)


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """jax.distributed.initialize; on CPU, collectives go through gloo (must precede init)."""
  if jax.distributed.is_initialized():
    return
  if coordinator is None and num_processes is None:
    try:  # TPU pods and SLURM/GKE clusters describe themselves
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      logging.info("single-process run (%s)", e)
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
