r"""Compile every jitted step of a config for a TPU topology, on a machine without one.

  python -m jaxprof.compile_check --config=configs/langptune.py --topology=v5p:4x4x2 \
      --model=llama3-8b --config.mesh.data=1 --config.mesh.fsdp=-1

The same `--config` and overrides as `jaxprof.train`, plus `--topology` (any TPU topology name
libtpu knows: v4:2x2x1, v5e:2x4, v5p:4x4x2, v6e:2x2, ...) and `--model` (a named shape of
`jaxprof.models.shapes`, an HF config.json or a checkpoint directory; default config.model.path).
No weights are read: params are `jax.ShapeDtypeStruct`s with the shardings the config's mesh and
rules give them, and each step the config's stages run (SFT update, reward-model update, PPO/GRPO
update, reference and critic passes, the sampler's prefill and one decode step) is lowered and
compiled by XLA's TPU compiler. For each step it prints per-device bytes (arguments, outputs,
temporaries, and the run's other arrays alive meanwhile: optimizer state, reference, critic)
against the chip's HBM, FLOPs, bytes moved by collectives, and a lower bound on the step's time
(FLOPs at the chip's peak, arguments over HBM bandwidth, collectives over ICI: the largest). A
step that does not fit exits with status 1 and one line naming it and what to change.
Needs the `tpu` extra (`pip install -e ".[tpu]"`, libtpu: no TPU required).
"""

from __future__ import annotations

import os

# libtpu looks for a TPU host's metadata when it loads, and lets one process at a time load it:
# tell it there is no TPU host to find, and that several processes (parallel tests) may load it.
for _k, _v in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
               ("TPU_WORKER_HOSTNAMES", "localhost"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
  os.environ.setdefault(_k, _v)

import dataclasses  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from jaxprof import config as config_lib  # noqa: E402
from jaxprof import parallel, train  # noqa: E402
from jaxprof.models import shapes  # noqa: E402
from jaxprof.trainers import abstract_steps, policy  # noqa: E402

# --config (with its overrides) and --stages are jaxprof.train's own flags.
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:2x4 or v5p:4x4x2.")
_MODEL = flags.DEFINE_string("model", None, "Named shape (llama3-8b, qwen2.5-1.5b, ...), "
                             "config.json or HF directory; default config.model.path.")
_STEPS = flags.DEFINE_list("steps", None, "Compile only these steps (e.g. grpo/update); default "
                           "every step of the stages.")
_FRACTION = flags.DEFINE_float("hbm_fraction", 0.95, "Fraction of a chip's HBM a step may use "
                               "(the runtime keeps the rest).")
_JSON = flags.DEFINE_string("json", None, "Also write the per-step results to this JSON file.")

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures: HBM bytes, dense bf16 FLOP/s, HBM bytes/s, ICI bytes/s (all
  links of a chip together)."""

  name: str
  hbm: float
  flops: float
  hbm_bandwidth: float
  ici_bandwidth: float


# By the device_kind libtpu reports.
CHIPS = {
    "TPU v4": Chip("v4", 32 * 2**30, 275e12, 1.2e12, 3.0e11),
    "TPU v5 lite": Chip("v5e", 16 * 2**30, 197e12, 8.19e11, 2.0e11),
    "TPU v5": Chip("v5p", 95 * 2**30, 459e12, 2.765e12, 6.0e11),
    "TPU v6 lite": Chip("v6e", 32 * 2**30, 918e12, 1.64e12, 4.48e11),
}


class TopologyError(ValueError):
  """--topology names no topology libtpu can describe."""


def topology_devices(name: str) -> tuple[list, Chip, int]:
  """(devices of TPU topology `name`, their chip, chips): abstract devices to compile for."""
  from jax.experimental import topologies

  try:
    devices = list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
  except Exception as e:  # libtpu missing, or a name it does not know
    raise TopologyError(f"--topology={name!r}: {train.one_line(e)} (a name like v5e:2x4 or "
                        "v5p:4x4x2; the tpu extra must be installed: pip install -e '.[tpu]')"
                        ) from None
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise TopologyError(f"--topology={name!r}: no HBM and peak figures for {kind!r}; "
                        f"known: {', '.join(CHIPS)}")
  chips = math.prod(int(x) for x in name.split(":")[1].split("x"))
  return devices, CHIPS[kind], chips


@dataclasses.dataclass
class Result:
  """One compiled step's per-device figures (bytes, FLOPs, seconds)."""

  name: str
  arguments: float = 0.0
  outputs: float = 0.0  # not aliased to a (donated) argument
  temporaries: float = 0.0
  resident: float = 0.0  # the run's other arrays alive meanwhile (not arguments)
  flops: float = 0.0  # model FLOPs per device (`abstract_steps.Step.flops` / parallel devices)
  xla_flops: float = 0.0  # XLA's count for the compiled module (a loop body counted once)
  collective_bytes: float = 0.0  # results of collectives, loop bodies x their trip counts
  compute_s: float = 0.0  # flops at the chip's peak
  memory_s: float = 0.0  # the arguments read once from HBM
  ici_s: float = 0.0  # the collectives' results over the chip's ICI links
  tokens_per_chip_s: float = 0.0
  compile_s: float = 0.0
  error: str = ""

  @property
  def total(self) -> float:
    return self.arguments + self.outputs + self.temporaries + self.resident

  @property
  def bound_s(self) -> float:
    """A lower bound on the step's time: each resource must at least do its part."""
    return max(self.compute_s, self.memory_s, self.ici_s)


_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|f16|bf16|s32|u32|f32|s64|u64|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_COLLECTIVE = re.compile(r"= (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                         r"collective-permute)(-start)?\(")
_WHILE = re.compile(r" while\(.*condition=(%[\w.\-]+), body=(%[\w.\-]+)")


def _shape_bytes(text: str) -> int:
  return sum(_BYTES[d] * math.prod(int(x) for x in dims.split(",") if x)
             for d, dims in _SHAPE.findall(text))


def collective_bytes(hlo: str) -> float:
  """Bytes of every collective's result in a compiled module's text, per device, each while
  loop's body counted as often as its condition's bound (the largest integer constant there:
  the layer scan's L)."""
  comps: dict[str, list[str]] = {}
  name, entry = None, None
  for line in hlo.splitlines():
    if line and not line.startswith(" ") and line.endswith("{"):
      name = line.split()[1 if line.startswith("ENTRY") else 0]
      comps[name] = []
      entry = name if line.startswith("ENTRY") else entry
    elif name is not None and line.startswith(" "):
      comps[name].append(line)

  def bound(cond: str) -> int:
    consts = [int(c) for line in comps.get(cond, ())
              for c in re.findall(r"s32\[\][^ ]* constant\((\d+)\)", line)]
    return max(consts, default=1)

  def total(comp: str, seen: frozenset = frozenset()) -> float:
    if comp in seen:
      return 0.0
    out = 0.0
    for line in comps.get(comp, ()):
      m = _COLLECTIVE.search(line)
      if m and "-done" not in line:
        out += _shape_bytes(m.group(1))
      w = _WHILE.search(line)
      if w:
        out += bound(w.group(1)) * total(w.group(2), seen | {comp})
    return out
  return total(entry) if entry else 0.0


def _per_device(tree) -> float:
  """Bytes of `tree`'s structs on one device (the largest shard of each)."""
  return float(sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                   for x in jax.tree.leaves(tree) if hasattr(x, "sharding")))


def measure(step: abstract_steps.Step, chip: Chip, chips: int, work_split: int) -> Result:
  """Compiles `step` and reads its per-device memory and cost. work_split: devices the step's
  work divides over (the batch axes, and the tensor axis where the rules shard over it)."""
  res = Result(step.name, resident=_per_device(step.resident))
  args = step.args() if callable(step.args) else step.args
  start = time.perf_counter()
  try:
    compiled = step.fn.lower(*args).compile()
  except Exception as e:  # XLA's out-of-memory is an error at compile time on TPU
    res.error = train.one_line(e)[:400]
    res.arguments = _per_device(args)
    return res
  res.compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  res.arguments = float(mem.argument_size_in_bytes)
  res.outputs = float(mem.output_size_in_bytes - mem.alias_size_in_bytes)
  res.temporaries = float(mem.temp_size_in_bytes)
  cost = compiled.cost_analysis() or {}
  res.xla_flops = float(cost.get("flops", 0.0))
  res.collective_bytes = collective_bytes(compiled.as_text())
  res.flops = step.flops / work_split
  res.compute_s = res.flops / chip.flops
  res.memory_s = res.arguments / chip.hbm_bandwidth  # every argument is read at least once
  res.ici_s = res.collective_bytes / chip.ici_bandwidth
  res.tokens_per_chip_s = step.tokens / chips / res.bound_s if res.bound_s else 0.0
  return res


@dataclasses.dataclass
class Report:
  topology: str
  chip: Chip
  devices: int
  mesh: dict
  rules: str
  model: str
  results: list[Result]
  skipped: list[abstract_steps.Skipped]
  fraction: float
  sharded: float = 0.0  # fraction of the policy's param bytes that the rules split

  @property
  def budget(self) -> float:
    """Bytes per device a step may use: the chip's HBM (over its devices) x hbm_fraction."""
    return self.chip.hbm * self.fraction

  def table(self) -> str:
    head = (f"{self.model} on {self.topology} ({self.devices} x {self.chip.name}, "
            f"{self.chip.hbm / GB:.1f} GB HBM each), mesh {self.mesh}, rules {self.rules!r}; "
            f"{self.sharded:.0%} of the policy's param bytes sharded")
    if self.sharded < 0.5 and self.rules != "dp":
      head += (" (a mesh axis of size 1, or one whose size divides no dimension the rules "
               "give it, leaves params whole: parallel.logical_to_spec)")
    rows = [head, "", "| step | fits | args GB | out GB | temp GB | other GB | total GB | "
            "GFLOP | collectives GB | bound ms | tokens/s/chip |", "|" + "---|" * 11]
    for r in self.results:
      if r.error:
        rows.append(f"| {r.name} | no | {r.arguments / GB:.2f} | | | {r.resident / GB:.2f} | | "
                    f"| | | compile failed: {r.error[:160]} |")
        continue
      rows.append(
          f"| {r.name} | {'yes' if r.total <= self.budget else 'NO'} | {r.arguments / GB:.2f} | "
          f"{r.outputs / GB:.2f} | {r.temporaries / GB:.2f} | {r.resident / GB:.2f} | "
          f"{r.total / GB:.2f} | {r.flops / 1e9:,.1f} | {r.collective_bytes / GB:.3f} | "
          f"{r.bound_s * 1e3:.2f} | {r.tokens_per_chip_s:,.0f} |")
    rows += [f"| {s.name} | skipped: {s.why} |" for s in self.skipped]
    return "\n".join(rows)

  def failure(self) -> str:
    """One line naming the first step that does not fit and what to change, or ""."""
    for r in self.results:
      if r.error or r.total > self.budget:
        used = f"needs {r.total / GB:.2f} GB" if not r.error else "failed to compile"
        return (f"{r.name} {used} per device, over {self.budget / GB:.2f} GB "
                f"({self.fraction:g} of {self.chip.hbm / GB:.1f} GB on {self.chip.name}); "
                "shard more (--config.mesh.fsdp=-1 --config.mesh.data=1, "
                "--config.mesh.rules=fsdp_tp with --config.mesh.tensor), recompute "
                "(--config.model.remat=full), cut the batch (--config.rl.num_minibatches, "
                "--config.<stage>.optim.grad_accum), train LoRA (--config.model.lora.rank), or "
                "take a larger topology" + (f" [{r.error[:200]}]" if r.error else ""))
    return ""

  def to_json(self) -> dict:
    return {"topology": self.topology, "chip": dataclasses.asdict(self.chip),
            "devices": self.devices, "mesh": self.mesh, "rules": self.rules, "model": self.model,
            "hbm_fraction": self.fraction, "sharded": self.sharded,
            "steps": [dict(dataclasses.asdict(r), total=r.total, bound_s=r.bound_s)
                      for r in self.results],
            "skipped": [dataclasses.asdict(s) for s in self.skipped]}


def work_split(mesh, rules) -> int:
  """Devices a step's FLOPs divide over: the batch axes, times tensor if the rules use it."""
  resolved = parallel.resolve_rules(rules)
  uses_tensor = any(v == "tensor" or (isinstance(v, tuple) and "tensor" in v)
                    for v in resolved.values())
  return (mesh.shape["data"] * mesh.shape["fsdp"]
          * (mesh.shape["tensor"] if uses_tensor else 1))


def check(config, topology: str, model: str | None = None, only: list[str] | None = None,
          fraction: float = 0.95, step_names: list[str] | None = None) -> Report:
  """Compiles every step of `config`'s stages (or `only`; or only the steps `step_names`) for
  `topology`; see the module doc."""
  devices, chip, chips = topology_devices(topology)
  only = [s for s in (only or config.stages) if s != "eval"]
  config = config.copy_and_resolve_references()
  config.stages = tuple(only)  # the batches of the stages checked must split over the mesh
  chip = dataclasses.replace(chip, hbm=chip.hbm * chips / len(devices),
                             flops=chip.flops * chips / len(devices),
                             hbm_bandwidth=chip.hbm_bandwidth * chips / len(devices),
                             ici_bandwidth=chip.ici_bandwidth * chips / len(devices))
  try:
    mesh = parallel.make_mesh(**train.mesh_shape(config, len(devices)), devices=devices)
  except ValueError as e:
    raise config_lib.ConfigError(f"config.mesh on {topology} ({len(devices)} devices): {e}"
                                 ) from None
  train.check_batches(config, mesh)
  if model is None and config.model.path == "tiny":
    cfg, name = policy.load(config.model, "tiny")[0], "tiny"
  else:
    name = model or config.model.path
    cfg = shapes.from_name_or_path(name)
  steps = abstract_steps.steps(config, cfg, mesh, only)
  if step_names:
    unknown = set(step_names) - {s.name for s in steps}
    if unknown:
      raise config_lib.ConfigError(f"--steps: no step {sorted(unknown)} in this config's stages; "
                                   f"its steps: {', '.join(s.name for s in steps)}")
    steps = [s for s in steps if s.name in step_names]
  split = work_split(mesh, config.mesh.rules)
  results = []
  for step in steps:
    if isinstance(step, abstract_steps.Step):
      results.append(measure(step, chip, chips, split))
      logging.info("compiled %s in %.1f s", step.name, results[-1].compile_s)
  return Report(topology, chip, len(devices), dict(mesh.shape), str(config.mesh.rules), name,
                results, [s for s in steps if isinstance(s, abstract_steps.Skipped)], fraction,
                abstract_steps.sharded_fraction(cfg, mesh, config.mesh.rules))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _TOPOLOGY.value is None:
    raise app.UsageError("--topology is required (e.g. --topology=v5e:2x4)")
  try:
    config = config_lib.validate(train._CONFIG.value)
    report = check(config, _TOPOLOGY.value, _MODEL.value, train._STAGES.value, _FRACTION.value,
                   _STEPS.value)
  except (*train.USER_ERRORS, TopologyError) as e:
    if logging.get_verbosity() >= 1:
      raise
    sys.stderr.write(f"jaxprof.compile_check: {type(e).__name__}: {train.one_line(e)}\n")
    sys.exit(2)
  print(report.table())
  if _JSON.value:
    from jaxprof import stages

    stages.atomic_write_json(_JSON.value, report.to_json())
  failure = report.failure()
  if failure:
    sys.stderr.write(f"jaxprof.compile_check: {failure}\n")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
