"""README's layout table is the import rule: each module imports dlibplus modules only from its own row
or the rows above it, lazy imports inside functions included, and no modules import each other in a loop."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dlibplus"
ALWAYS = {"dlibplus"}  # the package itself (its __init__ re-exports the API lazily)


def layer_rows() -> dict[str, int]:
    """Top-level unit (``dlibplus.x``, a module or a subpackage) → its row in README's layout table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Layout", 1)[1].split("\n\n", 2)[2]
    rows: dict[str, int] = {}
    for i, line in enumerate(line for line in table.splitlines() if line.startswith("| ")):
        for name in re.findall(r"`([\w/]+(?:\.py)?)`", line.split("|")[2]):
            stem = name.removesuffix(".py").removesuffix("/")
            if (PACKAGE / f"{stem}.py").is_file() or (PACKAGE / stem).is_dir():
                rows.setdefault(f"dlibplus.{stem}", i)
    return rows


def unit_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports_of(path: Path) -> set[str]:
    """Every dlibplus module ``path`` imports, anywhere in the file."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dlibplus"}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "dlibplus":
                found |= {f"{target}.{a.name}" for a in node.names} | {target}
    return found


def unit_imports() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = unit_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if unit == "dlibplus.__init__":
            continue
        targets = {unit_of(t) for t in imports_of(path) if t.count(".")}
        targets = {t for t in targets if (PACKAGE / f"{t[9:]}.py").is_file() or (PACKAGE / t[9:]).is_dir()}
        out.setdefault(unit, set()).update(targets - {unit} - ALWAYS)
    return out


def test_every_module_has_a_row():
    rows = layer_rows()
    missing = sorted(set(unit_imports()) - set(rows) - ALWAYS)
    assert not missing, f"modules missing from README's layout table: {missing}"


def test_modules_import_only_from_their_row_or_above():
    rows = layer_rows()
    upward = sorted(f"{unit} (row {rows[unit]}) imports {target} (row {rows[target]})"
                    for unit, targets in unit_imports().items() if unit in rows
                    for target in targets if target in rows and rows[target] > rows[unit])
    assert not upward, "\n".join(upward)


def import_loop(graph: dict[str, set[str]]) -> list[str]:
    """One loop of ``graph`` (``[a, b, ..., a]``), or ``[]`` when it has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (loop := visit(node)):
            return loop
    return []


def test_import_loop_finder():
    assert import_loop({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert import_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_loops():
    loop = import_loop(unit_imports())
    assert not loop, " -> ".join(loop)
