"""Imports between realign's own modules, read from the source with `ast`, and any circles in them.

    python scripts/import_graph.py              # "cycles: none", or each circle
    python scripts/import_graph.py --edges      # also every module and what it imports

Every import counts, also those inside functions: a deferred import does not fail at load time,
but two modules that need each other are still one tangle (the judges and the organism were,
before judges got a registry). `--load-time` counts only the imports that run when a module is
loaded. An import names the module it reads from (`from .base import X` -> base; `from . import
base` -> base); the parent packages that Python loads on the way are not counted as edges.
tests/test_imports.py asserts there is no circle and that realign.evals never imports
realign.organism.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def modules(src: Path = SRC, package: str = "realign") -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _module_level(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run at load time: not inside a def (class bodies and if/try do run)."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def imports(name: str, path: Path, known: set[str], level: str = "all",
            missing: list[str] | None = None) -> set[str]:
    """The package's modules that `name` imports (level "all": anywhere; "module": at load time).

    Imports of the package that name no module of it (a relative import one dot short, after a
    move) are appended to `missing` as "module: target"."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nodes = (_module_level(tree) if level == "module"
             else [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))])
    is_package = path.name == "__init__.py"
    root = name.partition(".")[0]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            read = [a.name for a in node.names]   # `import a.b` needs the module a.b
        else:
            if node.level:   # relative: climb from this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import sub` reads the submodule; `from mod import thing` reads the module
            read = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin
                    for a in node.names]
        for target in read:
            if target.partition(".")[0] != root:
                continue   # another package
            if target not in known:
                if missing is not None:
                    missing.append(f"{name} -> {target}")
            elif target != name:
                out.add(target)
    return out


def graph(level: str = "all", src: Path = SRC, missing: list[str] | None = None) -> dict[str, set[str]]:
    mods = modules(src)
    return {name: imports(name, path, set(mods), level, missing) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(found)


# The layers, top to bottom: a module may import its own layer and those below it, never above.
# Keys are the first name under realign (a subpackage or a root module); anything unlisted is a
# shared utility at the bottom (errors, paths, stats, progress, memory, passes, distributed, plugins).
LAYERS = {
    "cli": 5,
    "runs": 4, "inspect_task": 4,
    "repairs": 3, "organism": 3, "real": 3, "recipe": 3, "training": 3,
    "evals": 2, "model_io": 2, "generation": 2, "callback": 2,
}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports that reach a higher layer than the importer's (the package's lazy re-export of
    RealignCallback, in realign/__init__.py, is the one allowed)."""
    return sorted((m, t) for m, targets in g.items() for t in targets
                  if layer(t) > layer(m) and not (m == "realign" and t == "realign.callback"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load-time", action="store_true", help="count only module-level imports")
    ap.add_argument("--edges", action="store_true", help="print every module's imports")
    args = ap.parse_args()
    missing: list[str] = []
    g = graph("module" if args.load_time else "all", missing=missing)
    if args.edges:
        for name in sorted(g):
            print(f"{name} -> {', '.join(sorted(g[name])) or '(none)'}")
    found = cycles(g)
    if missing:
        print("imports of modules that do not exist: " + "; ".join(missing))
    print(f"{len(g)} modules, {sum(map(len, g.values()))} imports "
          f"({'module level' if args.load_time else 'all levels'})")
    print("cycles: " + ("none" if not found else f"{len(found)}"))
    for c in found:
        print("  " + " <-> ".join(c))
    up = upward(g)
    print("imports up the layers: " + ("none" if not up else f"{len(up)}"))
    for m, t in up:
        print(f"  {m} -> {t}")


if __name__ == "__main__":
    main()
