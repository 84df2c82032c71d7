"""The house rules, checked on every run: mypy and ruff are clean, imports run one way
(launcher -> workers) with no circle anywhere, and no module grows past what a reader
can hold (about 400 lines)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("launcher", "workers")
MAX_LINES = 420
# a standalone program run as `python -I -S FILE`: it can import nothing of the project
STANDALONE = {"workers/_sandbox_init.py": 470}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in it (lazy and TYPE_CHECKING
    imports count: a reader follows them too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                whole = f"{node.module}.{alias.name}"
                found.add(whole if whole in known else node.module)
    return {m for m in found if m in known}


def test_mypy_is_clean() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_ruff_is_clean() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", *PACKAGES], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_workers_never_import_launcher() -> None:
    known = modules()
    wrong = {name: sorted(m for m in imports_of(path, known) if m.startswith("launcher"))
             for name, path in known.items() if name.startswith("workers")}
    assert not {k: v for k, v in wrong.items() if v}


def test_no_import_circle() -> None:
    known = modules()
    graph = {name: imports_of(path, known) - {name} for name, path in known.items()}
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not circles, circles


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_too_long_to_read(name: str) -> None:
    path = modules()[name]
    rel = str(path.relative_to(ROOT))
    lines = len(path.read_text().splitlines())
    assert lines <= STANDALONE.get(rel, MAX_LINES), f"{rel}: {lines} lines"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (each circle of imports is one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == \
        [["a", "b", "c"], ["d"]]


PLACEHOLDERS = {"swarm": "{name}", "task_id": "{id}", "finding_id": "{id}",
                "family": "{family}", "host_name": "{host}", "consumer_name": "{consumer}",
                "worker_id": "{worker_id}", "pool": "{pool}", "minute": "{minute}",
                "model": "{model}", "prefix": "{prefix}", "run_id": "{id}",
                "query_id": "{uuid}", "question": "{hash}", "batch_id": "{batch}"}
NOT_KEYS = {"slot_name", "worker_id", "split_worker", "consumer"}  # names, not keys


def test_protocol_md_lists_every_key() -> None:
    """workers/keys.py owns every name; docs/protocol.md must show each one."""
    import inspect

    from workers import keys

    protocol = (ROOT / "docs" / "protocol.md").read_text()
    names = [keys.CHANNEL_TASKS, keys.CHANNEL_FINDINGS, keys.CHANNEL_COMPLETIONS,
             keys.CONTEXT_ACTIVE, keys.REGISTRY]
    for fname, func in inspect.getmembers(keys, inspect.isfunction):
        if fname.startswith("_") or fname in NOT_KEYS or func.__module__ != keys.__name__:
            continue
        params = inspect.signature(func).parameters
        names.append(func(*(PLACEHOLDERS[p] for p in params if p != "pool" or
                            params[p].default is inspect.Parameter.empty)))
        if "pool" in params and params["pool"].default is None:
            names.append(func("{name}", "{pool}"))
    missing = [name for name in names if f"`{name}`" not in protocol]
    assert not missing, missing
