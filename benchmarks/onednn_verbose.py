"""oneDNN's verbose log (ONEDNN_VERBOSE=1), summed per pass and kernel.

Standard library only, so that tests import it without the benchmarks' flags.
"""

import collections
import re
import statistics
from typing import NamedTuple

# The source (or its gradient) memory descriptor's data type, in the old (src_f32::...) and
# the new (src:f32::...) verbose formats.
_SOURCE_TYPE = re.compile(r"^(?:diff_)?src[_:]([a-z0-9]+)(?::|$)")

PASSES = {"forward_training": "forward", "backward_data": "input_grad",
          "backward_weights": "kernel_grad"}


class Execution(NamedTuple):
  """One execution line: the pass ('forward', 'input_grad', 'kernel_grad' for convolutions,
  'reorder', or the primitive's name), the implementation, the source data type ('' where
  the line names none), the problem (shapes) and the execution time in ms."""
  part: str
  implementation: str
  data_type: str
  problem: str
  ms: float


def executions(lines: list[str]) -> list[Execution]:
  """The execution lines of a log (oneDNN 3.x, with or without the 'v1,primitive' fields of
  newer versions), in order; other lines are skipped."""
  found = []
  for line in lines:
    fields = line.strip().split(",")
    if "exec" not in fields[:4] or "cpu" not in fields or len(fields) < 6:
      continue
    at = fields.index("cpu")
    primitive, implementation, prop_kind = fields[at + 1:at + 4]
    if primitive == "convolution":
      part = PASSES.get(prop_kind, prop_kind)
    elif primitive == "reorder":
      part = "reorder"
    else:
      part = primitive
    source = _SOURCE_TYPE.match(fields[at + 4]) if len(fields) > at + 4 else None
    found.append(Execution(part, implementation, source.group(1) if source else "",
                           fields[-2], float(fields[-1])))
  return found


def kernels_of_verbose_log(lines: list[str]) -> dict:
  """Sums ONEDNN_VERBOSE execution lines per pass and implementation: {pass: {implementation:
  {'calls', 'ms'}}}, with reorders under 'reorder'."""
  kernels = collections.defaultdict(lambda: collections.defaultdict(
      lambda: {"calls": 0, "ms": 0.0}))
  for run in executions(lines):
    entry = kernels[run.part][run.implementation]
    entry["calls"] += 1
    entry["ms"] += run.ms
  return {part: {impl: {"calls": e["calls"], "ms": round(e["ms"], 1)} for impl, e in
                 sorted(impls.items())} for part, impls in sorted(kernels.items())}


def warm_ms_per_step(lines: list[str], steps: int) -> dict[str, float]:
  """{pass: ms per step, 'all': their sum} of a log of `steps` identical steps (and possibly
  an initialisation before them), without the first executions: a call's first execution
  JIT-compiles its kernel and touches fresh memory (a matrix product's first call can take
  1,000 times its later ones). Per pass, implementation and problem: (calls // steps) calls per
  step at the median time of the calls after the first (the first's time where it is the only
  one)."""
  times = collections.defaultdict(list)
  for run in executions(lines):
    times[(run.part, run.implementation, run.problem)].append(run.ms)
  per_step = collections.defaultdict(float)
  for (part, _, _), ms in times.items():
    warm = ms[1:] or ms
    per_step[part] += (len(ms) // steps) * statistics.median(warm)
  result = {part: round(ms, 1) for part, ms in sorted(per_step.items())}
  return {**result, "all": round(sum(per_step.values()), 1)}


def data_types_of_verbose_log(lines: list[str]) -> dict[str, list[str]]:
  """{pass: sorted data types of the source operand} of the convolutions in an
  ONEDNN_VERBOSE log (forward, input_grad, kernel_grad): which precision each pass ran in."""
  types = collections.defaultdict(set)
  for run in executions(lines):
    if run.part in PASSES.values() and run.data_type:
      types[run.part].add(run.data_type)
  return {part: sorted(found) for part, found in sorted(types.items())}


def isa_of_verbose_log(lines: list[str]) -> str | None:
  """The CPU instruction set oneDNN dispatches to, from its verbose info line
  ('onednn_verbose[,v1],info,cpu,isa:Intel AVX2' -> 'Intel AVX2'); None without one."""
  for line in lines:
    fields = line.strip().split(",")
    if "info" in fields[:3] and "cpu" in fields and ",isa:" in line:
      return line.split(",isa:", 1)[1].strip()    # the ISA's name may hold commas
  return None
