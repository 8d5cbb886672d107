"""The house stays drawn: imports point one way (down the floors), no cycles (lazy imports included), no private
name taken from another module, at most 12 modules at the top level."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gpt2tune"

# the floors, lowest first: a module may import from its own folder (without a cycle) or from a lower floor
FLOORS = [
    {"errors"},
    {"files", "console", "hardware", "threads", "process"},
    {"config"},
    {"corpus"},
    {"model"},
    {"data"},
    {"run"},
    {"train"},
    {"evaluate"},
    {"export", "serve"},
    {"bench", "demo"},
    {"cli"},
    {"__init__", "__main__"},
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = ["gpt2tune", *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def room(module: str) -> str:
    """The folder (or top-level module) a module lives in: gpt2tune.data.split -> data, gpt2tune -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, names) for every import of a gpt2tune module anywhere in the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == "gpt2tune"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "gpt2tune":
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            out += [(s, node.lineno, []) for s in subs]
            if len(subs) < len(names):
                out.append((target, node.lineno, [n for n in names if f"{target}.{n}" not in known]))
    return out


def house_problems(root: Path) -> list[str]:
    known = modules(root)
    problems, graph = [], {m: set() for m in known}
    for module, path in known.items():
        here = room(module)
        for target, line, names in imports(module, path, known):
            where = f"{path.relative_to(root.parent)}:{line}"
            if target not in known:
                problems.append(f"{where}: imports {target}, which does not exist")
                continue
            if target == module:
                continue
            graph[module].add(target)
            there = room(target)
            if target == "gpt2tune" and here != "__init__":
                problems.append(f"{where}: imports the package's API (gpt2tune/__init__) from below it")
            elif here != there and FLOOR[there] >= FLOOR[here]:
                problems.append(f"{where}: {here} (floor {FLOOR[here]}) imports {target} (floor {FLOOR[there]})")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                problems.append(f"{where}: imports private {', '.join(private)} from {target}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    top = [m for m in known if m.count(".") == 1 and known[m].name != "__init__.py"]
    if len(top) + 1 > 12:  # + gpt2tune/__init__.py
        problems.append(f"{len(top) + 1} modules at the top level (at most 12): {sorted(top)}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(shortest_cycle(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first within the component)."""
    start = min(component)
    parent, queue = {start: None}, [start]
    for v in queue:
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return sorted(component)


def test_the_package_keeps_its_floors():
    assert house_problems(SRC) == []


def test_every_folder_and_top_level_module_has_a_floor():
    rooms = {room(m) for m in modules(SRC)}
    assert rooms <= set(FLOOR), rooms - set(FLOOR)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "gpt2tune"
    shutil.copytree(SRC, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_a_planted_cycle_inside_a_folder_is_found(copy: Path):
    # data/split imports data/encode at module level ...; a lazy import back makes a cycle
    split, encode = copy / "data" / "split.py", copy / "data" / "encode.py"
    split.write_text(split.read_text() + "\nfrom gpt2tune.data import encode\n")
    encode.write_text(encode.read_text() + "\n\ndef _later():\n    from gpt2tune.data import split  # noqa\n")
    problems = house_problems(copy)
    assert any(p.startswith("import cycle:") and "gpt2tune.data.encode" in p and "gpt2tune.data.split" in p
               for p in problems), problems


def test_an_upward_lazy_import_is_found(copy: Path):
    errors = copy / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _late():\n    from gpt2tune.cli import main  # noqa\n")
    problems = house_problems(copy)
    assert any("errors (floor 0) imports gpt2tune.cli (floor 11)" in p for p in problems), problems


def test_a_private_name_from_another_module_is_found(copy: Path):
    cli = copy / "cli.py"
    cli.write_text(cli.read_text() + "\nfrom gpt2tune.config import _short  # noqa\n")
    assert any("imports private _short from gpt2tune.config" in p for p in house_problems(copy))
