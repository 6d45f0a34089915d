"""No jshear module imports itself in a cycle, at module level or inside a function, and
no module imports one from a higher layer (LAYERS below; entry points, `__main__`, may
import anything).

A function-level import only delays the cycle to the first call, so both count. Each module
is parsed with `ast` (nothing is imported); `if TYPE_CHECKING:` blocks never run and are
skipped. Importing `a.b.c` also runs the packages `a.b` and `a`, so those are edges too,
except for a package the importer sits in (it is already being imported).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The package's layers, lowest first: a module may import its own layer and lower ones.
# A module belongs to the longest prefix that names it.
LAYERS = (
    ("bottom", ("jshear", "jshear.errors", "jshear.cache", "jshear.metrics", "jshear.config_base",
                "jshear.config_check", "jshear.atomic", "jshear.hostmem")),
    ("1", ("jshear.model", "jshear.kernels", "jshear.sharding", "jshear.optim",
           "jshear.checkpoint", "jshear.distributed")),
    ("2", ("jshear.prune", "jshear.data", "jshear.convert", "jshear.model_io")),
    ("3", ("jshear.distill", "jshear.blockwise")),
    ("4", ("jshear.eval",)),
    ("5", ("jshear.assets",)),
    ("6", ("jshear.train",)),
    ("top", ("jshear.experiments", "jshear.cli")),
)


def _modules(pkg_dir: Path) -> dict[str, Path]:
  mods = {}
  for path in sorted(pkg_dir.rglob("*.py")):
    parts = list(path.relative_to(pkg_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    mods[".".join(parts)] = path
  return mods


def _is_type_checking(node: ast.If) -> bool:
  t = node.test
  return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
      isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
  """Import statements anywhere in `tree` (functions included), minus TYPE_CHECKING blocks."""
  stack = [tree]
  while stack:
    node = stack.pop()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif isinstance(node, ast.If) and _is_type_checking(node):
      stack.extend(node.orelse)
    else:
      stack.extend(ast.iter_child_nodes(node))


def _targets(name: str, is_pkg: bool, node, mods: dict[str, Path]) -> set[str]:
  """The jshear modules an import statement in module `name` makes Python run."""
  if isinstance(node, ast.Import):
    direct = {a.name for a in node.names}
  else:
    base = node.module or ""
    if node.level:  # relative: strip `level` trailing parts from the importer's package
      pkg = name.split(".") if is_pkg else name.split(".")[:-1]
      pkg = pkg[:len(pkg) - (node.level - 1)]
      base = ".".join(pkg + ([node.module] if node.module else []))
    # `from pkg import sub` runs the module pkg.sub; any other name is read from pkg itself
    subs = {f"{base}.{a.name}" for a in node.names}
    direct = (subs & mods.keys()) | ({base} if subs - mods.keys() else set())
  out = set()
  for target in direct:
    out.add(target)
    parts = target.split(".")
    for i in range(1, len(parts)):  # packages above it, unless the importer is inside them
      pkg = ".".join(parts[:i])
      if not (name == pkg or name.startswith(pkg + ".")):
        out.add(pkg)
  out &= mods.keys()
  out.discard(name)
  return out


def import_graph(pkg_dir: Path = ROOT / "jshear") -> dict[str, set[str]]:
  mods = _modules(pkg_dir)
  graph = {}
  for name, path in mods.items():
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    graph[name] = set().union(*[_targets(name, is_pkg, n, mods) for n in _imports(tree)])
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle (as a closed path) per strongly connected group of modules (Tarjan)."""
  index, low, on_stack, stack, groups = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        groups.append(set(group))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return [_cycle_in(graph, g) for g in groups]


def _cycle_in(graph, group: set[str]) -> list[str]:
  """A shortest closed path through the group's first module (breadth-first)."""
  start = min(group)
  prev = {start: None}
  queue = [start]
  while queue:
    v = queue.pop(0)
    for w in sorted(graph[v] & group):
      if w == start:  # walk back from v to start, then close the loop
        path = [v]
        while prev[path[-1]] is not None:
          path.append(prev[path[-1]])
        return path[::-1] + [start]
      if w not in prev:
        prev[w] = v
        queue.append(w)
  raise AssertionError(f"no cycle through {start}")


def test_graph_sees_relative_and_function_level_imports(tmp_path):
  pkg = tmp_path / "p"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from . import b\n")
  (pkg / "b.py").write_text("def f():\n  from p.sub import c\n")
  (pkg / "sub" / "__init__.py").write_text("from .c import X\n")
  (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\n"
                                    "if TYPE_CHECKING:\n  from p import a\nX = 1\n")
  graph = import_graph(pkg)
  assert graph["p.a"] == {"p.b"} and graph["p.b"] == {"p.sub", "p.sub.c"}
  assert graph["p.sub"] == {"p.sub.c"} and graph["p.sub.c"] == set()
  assert find_cycles(graph) == []
  (pkg / "sub" / "c.py").write_text("def g():\n  from ..a import x\n")
  assert find_cycles(import_graph(pkg)) == [["p.a", "p.b", "p.sub.c", "p.a"]]


def test_no_import_cycles_in_jshear():
  cycles = find_cycles(import_graph())
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def layer_of(module: str, layers=LAYERS) -> int:
  best = None
  for i, (_, prefixes) in enumerate(layers):
    for p in prefixes:
      if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
        best = (i, len(p))
  if best is None:
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py LAYERS")
  return best[0]


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
  out = []
  for m, targets in sorted(graph.items()):
    if m.split(".")[-1] == "__main__":
      continue
    for t in sorted(targets):
      if layer_of(t, layers) > layer_of(m, layers):
        out.append(f"{m} (layer {layers[layer_of(m, layers)][0]}) imports {t} (layer "
                   f"{layers[layer_of(t, layers)][0]})")
  return out


def test_an_upward_import_is_caught(tmp_path):
  pkg = tmp_path / "p"
  (pkg / "low").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "low" / "__init__.py").write_text("")
  (pkg / "low" / "a.py").write_text("X = 1\n")
  (pkg / "high.py").write_text("from p.low import a\n")
  (pkg / "__main__.py").write_text("from p import high\n")
  layers = (("bottom", ("p",)), ("1", ("p.low",)), ("2", ("p.high",)))
  assert upward_imports(import_graph(pkg), layers) == []   # downward, and an entry point
  (pkg / "low" / "a.py").write_text("def f():\n  from p import high\n")  # planted
  assert upward_imports(import_graph(pkg), layers) == [
      "p.low.a (layer 1) imports p.high (layer 2)"]


def test_no_module_imports_a_higher_layer():
  bad = upward_imports(import_graph())
  assert not bad, "imports that point up a layer:\n" + "\n".join(bad)
