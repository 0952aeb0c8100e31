"""The installed library stands alone and its modules import each other without a cycle.

Read from the sources (every import statement, lazy ones inside functions included), so an import that only
runs on some path counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "h2cache"
CHECKOUT_ONLY = ("embedded_model", "devtools", "bench", "ui", "app", "tests")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """The absolute module names `path` (module `name`) imports; ``from .a import b`` gives ``a`` and ``a.b``."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports, ignoring each module's import of its own parent packages (Python runs those first)."""
    done, stack = set(), []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for nxt in sorted(edges[node]):
            if node.startswith(nxt + "."):
                continue
            cycle = visit(nxt)
            if cycle:
                return cycle
        stack.pop()
        done.add(node)
        return None

    for start in sorted(edges):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_library_imports_nothing_from_the_checkouts_tooling():
    for path in PACKAGE.rglob("*.py"):
        bad = {m for m in imports_of(path) if m.split(".")[0] in CHECKOUT_ONLY}
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"


def test_the_librarys_import_graph_has_no_cycle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_the_checks_would_see_a_cycle_and_a_tooling_import(tmp_path):
    """The checks themselves: a lazy import back into a module's importer is a cycle, and is found; a lazy
    import of the checkout's tooling inside a function is seen."""
    edges = graph()
    assert "h2cache.hooks" in edges["h2cache.apply"]
    assert find_cycle({**edges, "h2cache.hooks": edges["h2cache.hooks"] | {"h2cache.apply"}}) is not None
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from embedded_model.scenes import sample_specs\n    from ..pfs import x\n")
    found = imports_of(sample, "h2cache.methods.sample")
    assert {"embedded_model.scenes", "h2cache.pfs"} <= found
