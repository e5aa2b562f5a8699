"""The boundaries of ARCHITECTURE.md, checked on the source: who may import what, thin launchers,
short functions in the taggants package, no import cycle in the library."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBRARY = sorted((ROOT / "jaxtag").rglob("*.py"))
LAUNCHERS = sorted(p for p in (ROOT / "launch").glob("*.py") if p.name not in ("__init__.py",))


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, *, top_level_only: bool = False) -> set[str]:
  """The modules ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``)."""
  tree = ast.parse(path.read_text())
  nodes = tree.body if top_level_only else ast.walk(tree)
  out = set()
  for node in nodes:
    if isinstance(node, ast.Import):
      out |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out.add(node.module)
      out |= {f"{node.module}.{alias.name}" for alias in node.names}
  return out


def test_the_library_never_imports_launchers_benchmarks_tests_flags_or_configdicts():
  for path in LIBRARY:
    bad = {m for m in _imports(path) if m.split(".")[0] in (
        "launch", "benchmarks", "tests", "absl", "ml_collections")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_audio_is_the_ground_floor_and_stats_needs_no_jax():
  for path in sorted((ROOT / "jaxtag" / "audio").glob("*.py")):
    up = {m for m in _imports(path) if m.startswith("jaxtag.") and not m.startswith(
        "jaxtag.audio")}
    assert not up, f"{path.relative_to(ROOT)} imports {sorted(up)}"
  assert not {m for m in _imports(ROOT / "jaxtag" / "stats.py") if m.split(".")[0] in (
      "jax", "flax", "optax")}


def test_secrets_and_config_floors_import_no_method():
  for name in ("secrets.py", "config.py", "workdir.py", "rng.py"):
    path = ROOT / "jaxtag" / name
    up = {m for m in _imports(path) if m.split(".")[:2] in (
        ["jaxtag", "taggants"], ["jaxtag", "poscuda"], ["jaxtag", "train"], ["jaxtag", "models"],
        ["jaxtag", "cbw"], ["jaxtag", "speaker"])}
    assert not up, f"jaxtag/{name} imports {sorted(up)}"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launchers_are_thin_and_import_no_other_launcher(path):
  others = {m for m in _imports(path) if m.startswith("launch.") and m.split(".")[1] not in (
      "app", "configs")}
  assert not others, f"{path.name} imports {sorted(others)}"
  if path.name != "app.py":   # the shared setup, not a launcher
    assert len(path.read_text().splitlines()) <= 120, path.name


def test_no_function_in_the_taggants_package_is_over_80_lines():
  long = []
  for path in sorted((ROOT / "jaxtag" / "taggants").glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if node.end_lineno - node.lineno + 1 > 80:
          long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
  assert not long, long


def test_no_import_cycle_at_module_level_in_the_library():
  """Module-level imports between jaxtag modules form no cycle (a cycle makes the import order
  matter and hides behind lazy ``__getattr__`` tricks)."""
  modules = {_module(p): p for p in LIBRARY}
  graph = {name: {m for m in _imports(path, top_level_only=True) if m in modules and m != name}
           for name, path in modules.items()}
  # A package imports its own submodules to re-export them; that edge is not a cycle's cause.
  state: dict[str, int] = {}

  def visit(node, stack):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if nxt.startswith(node + "."):
        continue
      if state.get(nxt) == 1:
        cycle = stack[stack.index(nxt):] + [nxt]
        if not any(b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
          raise AssertionError(" -> ".join(cycle))
      elif nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = 2

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])
