"""The import graph keeps its layers: every import points down, no module cycle, no module
imports another module's ``_private`` name.

The scan reads every import in the packages' source (module level, inside functions and under
``TYPE_CHECKING`` alike) with ``ast``. ``python tests/test_layering.py`` prints the counts the
architecture notes quote.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The source folders and the package each one is (pyproject's package-dir).
PACKAGES = {
    "matrixos": "matrixos",
    "storage": "matrixos.storage",
    "engine": "matrixos.engine",
    "connectors": "matrixos.connectors",
}
# Bottom to top. A module may import modules of its own layer or of layers below it. The first
# matching prefix (longest first) places a module; anything unlisted is the facade.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "matrixos.errors",
            "matrixos._filelock",
            "matrixos._progress",
            "matrixos._lru",
            "matrixos._exit",  # hooks that run before the interpreter shuts down
            "matrixos._ports",  # ports for local servers, outside the ephemeral range
        ),
    ),
    # Models turn text into vectors (pure numpy/torch): writes embed rows, search embeds queries.
    ("models", ("matrixos.ai.embed", "matrixos.ai._bert")),
    # Settings sit with storage: they render StorageOptions and storage reads them.
    ("storage", ("matrixos.storage", "matrixos.config")),
    ("catalog", ("matrixos.catalog",)),
    ("connectors", ("matrixos.connectors",)),
    ("engine", ("matrixos.engine",)),
    ("facade", ("matrixos",)),
]


def layer_of(module: str) -> int:
    best = (-1, len(LAYERS) - 1)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best[0]:
                best = (len(p), rank)
    return best[1]


@dataclass
class Scan:
    modules: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    deferred: list[tuple[str, str]] = field(default_factory=list)  # imports inside functions
    type_checking: list[tuple[str, str]] = field(default_factory=list)
    private: list[tuple[str, str, str]] = field(default_factory=list)  # (importer, module, name)
    format_branches: list[tuple[str, int]] = field(default_factory=list)


def _module_name(folder: str, path: Path) -> str:
    rel = path.relative_to(ROOT / folder).with_suffix("")
    parts = [PACKAGES[folder], *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def scan() -> Scan:
    s = Scan()
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            s.modules[_module_name(folder, path)] = path
    for module, path in s.modules.items():
        source = path.read_text()
        tree = ast.parse(source)
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            # ``format == "lance"``-style branches: the registry should answer those.
            if isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in ("delta", "lance")
                for c in node.comparators
            ):
                left = ast.unparse(node.left)
                if left.endswith("format"):
                    s.format_branches.append((module, node.lineno))
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            else:
                target = _resolve(module, node, path.name == "__init__.py")
                targets = [(target, a.name) for a in node.names]
            targets = [(m, n) for m, n in targets if m.split(".")[0] == "matrixos"]
            if not targets:
                continue
            in_function = in_type_checking = False
            p = parents.get(node)
            while p is not None:
                if isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef):
                    in_function = True
                if isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test):
                    in_type_checking = True
                p = parents.get(p)
            for target, name in targets:
                if name and f"{target}.{name}" in s.modules:
                    target = f"{target}.{name}"  # ``from pkg import module``
                elif name and name.startswith("_") and not name.startswith("__"):
                    s.private.append((module, target, name))
                if target == module or target not in s.modules:
                    continue
                s.edges[module].add(target)
                if in_function:
                    s.deferred.append((module, target))
                if in_type_checking:
                    s.type_checking.append((module, target))
    return s


def upward(s: Scan) -> list[tuple[str, str]]:
    return sorted(
        (a, b) for a, targets in s.edges.items() for b in targets if layer_of(b) > layer_of(a)
    )


def cycles(s: Scan) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(s.edges.get(v, ())):
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(s.modules):
        if v not in index:
            visit(v)
    return found


SCAN = scan()


def test_the_scan_sees_the_packages() -> None:
    # A scan that found nothing would pass everything below.
    assert {"matrixos.session", "matrixos.engine.scan", "matrixos.storage.delta"} <= set(
        SCAN.modules
    )
    assert ("matrixos.session", "matrixos.catalog.service") in {
        (a, b) for a, bs in SCAN.edges.items() for b in bs
    }


def test_every_import_points_down() -> None:
    assert upward(SCAN) == []


def test_no_import_cycle() -> None:
    assert cycles(SCAN) == []


def test_no_module_imports_another_modules_private_name() -> None:
    assert SCAN.private == []


def test_no_branch_on_a_format_name() -> None:
    # Formats are found through storage.tablestore's registry (and the SDK's TABLE_TYPES).
    assert SCAN.format_branches == []


def test_layer_of() -> None:
    assert layer_of("matrixos.errors") == 0
    assert layer_of("matrixos.storage.delta") < layer_of("matrixos.catalog.service")
    assert layer_of("matrixos.catalog") < layer_of("matrixos.engine.sql")
    assert layer_of("matrixos.engine.sql") < layer_of("matrixos.session")
    assert layer_of("matrixos.ai.rag") == layer_of("matrixos.session")


if __name__ == "__main__":
    print(f"modules                      {len(SCAN.modules)}")
    print(f"in-function project imports {len(SCAN.deferred)}")
    print(f"TYPE_CHECKING imports        {len(SCAN.type_checking)}")
    print(f"_private cross-module names  {len(SCAN.private)}")
    print(f"format == branches           {len(SCAN.format_branches)}")
    print(f"upward edges                 {len(upward(SCAN))}")
    print(f"cycles                       {cycles(SCAN)}")
    for a, b in upward(SCAN):
        print(f"  up: {a} -> {b}")
    for m, line in SCAN.format_branches:
        print(f"  format branch: {m}:{line}")
    for p in SCAN.private:
        print(f"  private: {p}")
