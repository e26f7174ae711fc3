"""The package's shape: no import circle (function-level imports included) and no oversized module."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "vlmr1"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its body, lazily or not.

    ``from a.b import c`` imports a.b.c when that is a module, else a.b; importing a module also
    runs its parent packages' ``__init__``, so those count too, except the module's own parents
    (a package importing its submodules is the usual layout, not a circle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & known
    own_parents = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
    return found - own_parents - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle():
    mods = modules()
    graph = {name: imports(name, path, set(mods)) for name, path in mods.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_circle_finder_finds_a_circle(tmp_path):
    # The check above can fail: a lazy import back into a module that imports it is a circle.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    known = {"vlmr1", "vlmr1.evaluate", "vlmr1.run"}
    (tmp_path / "run.py").write_text("from .evaluate import run_evals\n")
    (tmp_path / "evaluate.py").write_text("def f():\n    from .run import finish_run\n")
    graph = {"vlmr1.run": imports("vlmr1.run", tmp_path / "run.py", known)}
    graph["vlmr1.evaluate"] = imports("vlmr1.evaluate", tmp_path / "evaluate.py", known)
    assert graph == {"vlmr1.run": {"vlmr1.evaluate"}, "vlmr1.evaluate": {"vlmr1.run"}}
    assert find_cycle(graph) == ["vlmr1.evaluate", "vlmr1.run", "vlmr1.evaluate"]


def test_no_module_is_oversized():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by job): {big}"
