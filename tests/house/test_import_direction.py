"""The package's imports run in one direction: a module imports only from its own layer or the layers
below it (``LAYERS``, bottom first), and no set of modules imports itself in a circle. Every import
counts, also those inside functions, so that a lazy import cannot hide a reverse edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "retinassl"

# bottom first; a module imports only from its own layer or below
LAYERS: list[tuple[str, ...]] = [
    ("retinassl", "atomic", "errors", "config", "data_roots", "launch", "progress", "hardware", "logs"),
    ("io",),
    ("data",),
    ("oct", "models", "losses", "metrics", "figures"),
    ("methods",),
    ("engine",),
    ("jobs",),
    ("explain",),
    ("sweeps",),
    ("report",),
    ("demo",),
    ("cli",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The retinassl modules ``name`` imports (``from pkg import submodule`` counts the submodule)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "retinassl")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "retinassl":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found.update(subs or {target})
    return {m for m in found if m != name}


def layer_of(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "retinassl"
    for i, names in enumerate(LAYERS):
        if key in names:
            return i
    raise AssertionError(f"{module}: in no layer of LAYERS; add its package to the right layer")


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {m: {d for d in imports_of(m, p, known) if d in known or d.rsplit(".", 1)[0] in known}
            for m, p in modules.items()}


def test_every_module_is_in_a_layer() -> None:
    for module in all_modules():
        layer_of(module)


def test_no_import_runs_upwards() -> None:
    reverse = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
               for m, deps in graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not reverse, "imports against the layer order:\n" + "\n".join(reverse)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return components


def test_find_cycles_finds_a_planted_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(edges) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    edges = graph()
    # a package's __init__ importing its own submodules is how registries fill; it is not a cycle
    # when the submodules import only their siblings (which Python resolves without the __init__)
    cycles = find_cycles({m: {d for d in deps if not (m.startswith(d + ".") and
                                                      all_modules()[d].name == "__init__.py")}
                          for m, deps in edges.items()})
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_module_imports_alone() -> None:
    """Each module imports on its own, with no other retinassl module loaded before it (in one
    fresh interpreter that forgets every retinassl module between imports), in reverse layer order
    so that no module can lean on one imported before it."""
    modules = sorted(all_modules(), key=lambda m: (-layer_of(m), m))
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'retinassl' or m.startswith('retinassl.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        print(f'{name}: {type(exc).__name__}: {exc}')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr[-2000:]
