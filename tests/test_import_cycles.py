"""No import cycles in effcv_jax, counting every import the code can execute.

The library's modules import downwards (docs/design.md: experiments -> distill / noisy_student
-> pseudo_label -> train -> pretrained -> workdir -> task -> models / augment / data / ... ->
files). An import hidden inside a function still runs, so it still forms a cycle: this walks
each module's syntax tree (ast; nothing is imported) and counts `import` / `from ... import`
statements anywhere (module level, functions, methods, `if TYPE_CHECKING:` blocks) and
`importlib.import_module("effcv_jax....")` calls with a literal name.

An import of `a.b.c` is an edge to the module `a.b.c` (the most specific module the name
resolves to); `from a.b import c` is an edge to `a.b.c` if that is a module, else to `a.b`
(c is then a name defined in a/b/__init__.py). Parent packages that Python initialises on
the way are not counted as edges: a package's __init__ re-exporting its submodules would
otherwise make every package a cycle.

Fast (parsing only, well under a second).
"""

import ast
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "effcv_jax"
# The project's reference checker, where the shared directory sits beside the repository.
# Optional: this file's own walker decides; the reference only cross-checks it.
REFERENCE_CHECKER = REPO_ROOT.parent / "shared" / "tools" / "import_cycles.py"

Edges = dict[str, dict[str, int]]       # module -> {imported module: line of the first import}


def module_files(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """{dotted module name: file} for every .py file of `package` under `root`."""
  files = {}
  for path in sorted((root / package).rglob("*.py")):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    files[".".join(parts)] = path
  return files


def _resolve(name: str, modules: dict) -> str | None:
  """The most specific module of `modules` that the dotted `name` lies in, if any."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def _imported_names(node: ast.AST, module: str, is_package: bool, modules: dict) -> list[str]:
  """Dotted names of the modules (or module attributes) one AST node imports."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  if isinstance(node, ast.ImportFrom):
    base = node.module or ""
    if node.level:                       # relative: from the package containing `module`
      package = module.split(".") if is_package else module.split(".")[:-1]
      if node.level - 1 > len(package):
        raise ImportError(f"{module}: relative import beyond the top-level package")
      package = package[:len(package) - (node.level - 1)]
      base = ".".join(package + ([base] if base else []))
    names = []
    for alias in node.names:
      candidate = f"{base}.{alias.name}" if base else alias.name
      names.append(candidate if candidate in modules else base)
    return names
  if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
      and isinstance(node.args[0].value, str)):
    func = node.func
    called = (func.attr if isinstance(func, ast.Attribute) else
              func.id if isinstance(func, ast.Name) else "")
    if called in ("import_module", "__import__"):
      return [node.args[0].value]
  return []


def import_graph(root: pathlib.Path, package: str) -> Edges:
  """Every import edge between the modules of `package`, with the line of the import."""
  files = module_files(root, package)
  edges: Edges = {module: {} for module in files}
  for module, path in files.items():
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
      for name in _imported_names(node, module, path.name == "__init__.py", files):
        target = _resolve(name, files)
        if target and target != module:
          line = edges[module].get(target, node.lineno)
          edges[module][target] = min(line, node.lineno)
  return edges


def strongly_connected(edges: Edges) -> list[list[str]]:
  """The components of more than one module (each holds at least one cycle); iterative
  Tarjan, so deep graphs do not hit the recursion limit."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  components = []
  for start in sorted(edges):
    if start in index:
      continue
    work = [(start, iter(sorted(edges[start])))]
    index[start] = low[start] = len(index)
    stack.append(start)
    on_stack.add(start)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(edges[child]))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        parent = work[-1][0]
        low[parent] = min(low[parent], low[node])
      if low[node] == index[node]:
        component = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.append(member)
          if member == node:
            break
        if len(component) > 1:
          components.append(sorted(component))
  return sorted(components)


def shortest_cycle(edges: Edges, component: list[str]) -> list[str]:
  """A shortest cycle through the component's first module (breadth-first), closed:
  [a, b, ..., a]."""
  start, members = component[0], set(component)
  previous = {start: None}
  queue = [start]
  while queue:
    node = queue.pop(0)
    for child in sorted(edges[node]):
      if child == start:
        path = [node]
        while previous[path[-1]] is not None:
          path.append(previous[path[-1]])
        return path[::-1] + [start]
      if child in members and child not in previous:
        previous[child] = node
        queue.append(child)
  raise AssertionError(f"no cycle through {start} in {component}")


def describe(edges: Edges, files: dict[str, pathlib.Path], root: pathlib.Path) -> list[str]:
  """One line per cycle: the modules of its component and one cycle with file:line."""
  lines = []
  for component in strongly_connected(edges):
    cycle = shortest_cycle(edges, component)
    steps = " -> ".join(
        f"{a} ({files[a].relative_to(root)}:{edges[a][b]})" for a, b in zip(cycle, cycle[1:]))
    lines.append(f"{len(component)} modules [{', '.join(component)}]: {steps} -> {cycle[0]}")
  return lines


# --------------------------------------------------------------------------
# The walker on a small package written here, then the library.

def _write_package(root: pathlib.Path, files: dict[str, str]) -> None:
  for name, text in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_walker_finds_cycles_hidden_in_functions_and_relative_imports(tmp_path):
  _write_package(tmp_path, {
      "pkg/low.py": "import os\n",
      # a <-> b through an import inside a method
      "pkg/a.py": "from pkg import b\n",
      "pkg/b.py": "class C:\n  def f(self):\n    from . import a\n    return a\n",
      # c -> sub.d -> c through `from ..` and importlib with a literal name
      "pkg/c.py": "from pkg.sub.d import thing\n",
      "pkg/sub/__init__.py": "",
      "pkg/sub/d.py": ("import importlib\nthing = 1\n"
                       "def g():\n  return importlib.import_module('pkg.c')\n"),
      # e imports a module and a name of the package's __init__ (an edge to pkg itself)
      "pkg/__init__.py": "from pkg import low\nNAME = 1\n",
      "pkg/e.py": "from pkg import low as _\nfrom pkg import NAME\n",
      "pkg/f.py": "if False:\n  import pkg.e\n",
  })
  edges = import_graph(tmp_path, "pkg")
  assert edges["pkg.b"] == {"pkg.a": 3}
  assert edges["pkg.c"] == {"pkg.sub.d": 1}
  assert edges["pkg.sub.d"] == {"pkg.c": 4}
  assert edges["pkg.e"] == {"pkg.low": 1, "pkg": 2}
  assert edges["pkg"] == {"pkg.low": 1}
  assert edges["pkg.f"] == {"pkg.e": 2}       # counted although it never runs
  assert strongly_connected(edges) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub.d"]]
  assert shortest_cycle(edges, ["pkg.a", "pkg.b"]) == ["pkg.a", "pkg.b", "pkg.a"]


def test_walker_finds_the_shortest_cycle_in_a_larger_component():
  edges = {"a": {"b": 1}, "b": {"c": 1, "a": 2}, "c": {"a": 1}, "d": {}}
  assert strongly_connected(edges) == [["a", "b", "c"]]
  assert shortest_cycle(edges, ["a", "b", "c"]) == ["a", "b", "a"]


def reference_components(root: pathlib.Path, package: str) -> list[list[str]] | None:
  """The cycles (as sorted module lists) the reference checker finds, or None without it."""
  if not REFERENCE_CHECKER.is_file():
    return None
  result = subprocess.run([sys.executable, str(REFERENCE_CHECKER), str(root), package],
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode in (0, 1), result.stderr
  return sorted(sorted(line.removeprefix("cycle: ").split(" <-> "))
                for line in result.stdout.splitlines() if line.startswith("cycle: "))


def test_library_has_no_import_cycles():
  files = module_files(REPO_ROOT, PACKAGE)
  assert f"{PACKAGE}.train" in files and len(files) > 20, sorted(files)
  edges = import_graph(REPO_ROOT, PACKAGE)
  reference = reference_components(REPO_ROOT, PACKAGE)
  if reference is not None:        # the two walkers must agree on what is a cycle
    assert strongly_connected(edges) == reference, (strongly_connected(edges), reference)
  cycles = describe(edges, files, REPO_ROOT)
  if cycles:
    pytest.fail(f"{len(cycles)} import cycle(s) in {PACKAGE} (imports inside functions "
                "count too; see docs/design.md for the order imports must follow):\n"
                + "\n".join(cycles), pytrace=False)
