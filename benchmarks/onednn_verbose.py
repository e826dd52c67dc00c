"""oneDNN's verbose log (ONEDNN_VERBOSE=1), summed per pass and kernel.

Standard library only, so that tests import it without the benchmarks' flags.
"""

import collections

PASSES = {"forward_training": "forward", "backward_data": "input_grad",
          "backward_weights": "kernel_grad"}


def kernels_of_verbose_log(lines: list[str]) -> dict:
  """Sums ONEDNN_VERBOSE execution lines (oneDNN 3.x, with or without the 'v1,primitive'
  fields of newer versions) per pass and implementation: {pass: {implementation:
  {'calls', 'ms'}}}, with reorders under 'reorder'."""
  kernels = collections.defaultdict(lambda: collections.defaultdict(
      lambda: {"calls": 0, "ms": 0.0}))
  for line in lines:
    fields = line.strip().split(",")
    if "exec" not in fields[:4] or "cpu" not in fields:
      continue
    at = fields.index("cpu")
    primitive, implementation, prop_kind = fields[at + 1:at + 4]
    if primitive == "convolution":
      part = PASSES.get(prop_kind, prop_kind)
    elif primitive == "reorder":
      part = "reorder"
    else:
      part = primitive
    entry = kernels[part][implementation]
    entry["calls"] += 1
    entry["ms"] += float(fields[-1])
  return {part: {impl: {"calls": e["calls"], "ms": round(e["ms"], 1)} for impl, e in
                 sorted(impls.items())} for part, impls in sorted(kernels.items())}


def isa_of_verbose_log(lines: list[str]) -> str | None:
  """The CPU instruction set oneDNN dispatches to, from its verbose info line
  ('onednn_verbose[,v1],info,cpu,isa:Intel AVX2' -> 'Intel AVX2'); None without one."""
  for line in lines:
    fields = line.strip().split(",")
    if "info" in fields[:3] and "cpu" in fields and ",isa:" in line:
      return line.split(",isa:", 1)[1].strip()    # the ISA's name may hold commas
  return None
