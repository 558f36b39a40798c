"""The package's shape: the CLI apart from the library, and no import cycle among its modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "blockswap_zoo"


def test_the_library_never_imports_the_cli_or_typer() -> None:
    """Only cli/ (and the ``python -m blockswap_zoo`` entry point) import typer or the CLI; the library raises
    typed errors that the CLI turns into messages and exit codes."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli" or rel.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            offenders += [f"{rel}: {n}" for n in names if n.split(".")[0] == "typer" or n.lstrip(".").startswith("cli")]
    assert not offenders, offenders


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, at module level or inside functions (a lazy import is an edge too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base) if node.level else (node.module or "")
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found |= {full} if full in modules else ({target} if target in modules else set())
    return {m for m in found if m != name and not name.startswith(m + ".")}  # a package's own __init__: no edge


def test_no_import_cycle_among_the_packages_modules() -> None:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, set(files)) for m, p in files.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, [" -> ".join(c) for c in cycles]
    assert graph["blockswap_zoo.factory"] >= {"blockswap_zoo.sources"}  # the graph is read, not empty
