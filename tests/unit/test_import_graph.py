"""raydal's import graph, function-level imports included, has no cycle, and no module imports a
layer above its own (docs/architecture.md, "Layers").

Read from the source with ``ast``: every ``import``/``from ... import`` anywhere in a module (inside
functions too) is an edge. ``from pkg import sub`` is an edge to ``pkg.sub`` when that is a
module, else to ``pkg``. Imports inside ``if TYPE_CHECKING:`` are annotations only and skipped.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import raydal

ROOT = Path(raydal.__file__).parent

#: Lowest first. A module may import its own layer (no cycle allowed) or lower ones.
LAYERS = {
    "foundation": ["errors", "fs", "storage", "options", "specs", "registry", "hooks", "stats",
                   "services", "stop", "merge", "resources", "connect", "hostmem"],
    "config": ["config"],
    "data": ["transforms", "datasets", "pool", "webdataset", "labels", "run_dir",
             "shared_paths", "tracking", "report"],
    "math": ["scoring*"],  # pure torch: strategies and the per-sample gradient rules
    "models": ["models"],
    "runtime": ["oracle", "labelstudio", "selection", "train"],
    "composition": ["build", "selection_job"],
    "loop": ["loop"],
    "entry": ["cli", "", "testing*"],  # "": the package itself, the Python API
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def import_graph() -> dict[str, set[str]]:
    """{module: modules it imports}, names relative to the package ("" is raydal itself)."""
    mods = _modules()

    def known(name: str) -> str | None:
        name = name.removeprefix("raydal").lstrip(".") if name.split(".")[0] == "raydal" else None
        while name is not None:
            if name in mods:
                return name
            name = name.rsplit(".", 1)[0] if "." in name else ("" if name else None)
        return None

    graph = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".") if package else []
                    base = parts[:len(parts) - node.level + 1] + [node.module or ""]
                    base_name = "raydal." + ".".join(p for p in base if p)
                else:
                    base_name = node.module or ""
                for alias in node.names:
                    sub = known(f"{base_name}.{alias.name}")
                    whole = known(base_name)
                    targets.add(sub if sub is not None and sub != whole else whole)
        graph[mod] = {t for t in targets if t is not None and t != mod}
    return graph


def layer_of(mod: str) -> int:
    for rank, patterns in enumerate(LAYERS.values()):
        for p in patterns:
            if mod == p or (p.endswith("*") and (mod == p[:-1] or mod.startswith(p[:-1] + "."))):
                return rank
    raise AssertionError(f"module raydal.{mod} is in no layer: add it to LAYERS (and to "
                         "docs/architecture.md)")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_graph_is_read_from_real_imports():
    graph = import_graph()
    assert "scoring.grads.registry" in graph["scoring.grads.onepass"]
    assert "config" in graph["models"]
    assert "build" in graph["loop"]
    assert len(graph) >= 40


def test_no_import_cycle():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(f"raydal.{m}".rstrip(".") for m in cycle)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"raydal.{src} ({list(LAYERS)[layer_of(src)]}) imports raydal.{dst} "
              f"({list(LAYERS)[layer_of(dst)]})"
              for src, dsts in import_graph().items() for dst in dsts
              if layer_of(dst) > layer_of(src)]
    assert not upward, "\n".join(upward)


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_importing_the_config_loads_neither_torch_nor_ray():
    code = ("import sys, raydal.config; bad = [m for m in ('torch', 'ray', 'raydal.scoring') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
