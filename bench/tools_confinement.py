"""What the tools' confinement costs (issue 9): each file tool's latency with the tools
as they were before (``workers/tools.py`` at commit d78a631, read from git, which
resolved a path with ``realpath`` and opened it whole) and as they are now (every path
walked by descriptor, writes by rename, regexes on the ``regex`` package), side by side
in interleaved rounds; and the start-up time of a sandboxed shell command against the
same command unsandboxed.

    .venv/bin/python -m bench.tools_confinement [--rounds 5] [--calls 300]

Prints Markdown tables. Latency is per call through ``Toolbox.run`` (the worker's own
path: a coroutine that hops to a thread), median of the rounds' medians.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness.procs import ROOT
from workers.tools import Toolbox, ToolSettings

BEFORE = "d78a631"


def old_tools() -> Any:
    """workers/tools.py as it was at BEFORE, imported as a module of its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:workers/tools.py"],
                            capture_output=True, text=True, check=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="old-tools-"))
    path = folder / "old_tools.py"
    path.write_text(source)
    try:
        spec = importlib.util.spec_from_file_location("old_tools", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["old_tools"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return module


def make_tree(root: Path) -> None:
    """A small project: 1,000 files of 40 lines in 50 folders, 3 levels deep."""
    for i in range(50):
        folder = root / f"pkg{i % 5}" / f"mod{i % 10}" / f"part{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(20):
            lines = [f"def function_{j}_{k}(x):  # TODO {k}" if k % 13 == 0 else
                     f"    value = x * {k} + {j}" for k in range(40)]
            (folder / f"file{j}.py").write_text("\n".join(lines) + "\n")
    (root / "README.md").write_text("hello\n" * 200)


CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("read_file, top level", "read_file", {"path": "README.md", "limit": 50}),
    ("read_file, 4 folders deep", "read_file", {"path": "pkg1/mod1/part11/file3.py"}),
    ("write_file, 4 folders deep", "write_file", {"path": "pkg2/mod2/part12/new.py",
                                                  "content": "x = 1\n" * 50}),
    ("edit_file", "edit_file", {"path": "pkg3/mod3/part13/file4.py",
                                "old_string": "value = x * 1 + 4",
                                "new_string": "value = x * 1 + 4  # edited"}),
    ("list_files **/*.py (1,000 files)", "list_files", {"pattern": "**/*.py"}),
    ("grep TODO (1,000 files)", "grep", {"pattern": "TODO 26", "glob": "**/*.py"}),
]


def per_call(box: Any, name: str, args: dict[str, Any], calls: int) -> float:
    """Median seconds per call, over ``calls`` calls on one event loop. An edit goes
    back and forth, so that every call changes the file."""
    there, back = args.get("old_string"), args.get("new_string")

    async def go() -> list[float]:
        times = []
        for i in range(calls):
            call = dict(args, old_string=back, new_string=there) if name == "edit_file" \
                and i % 2 else args
            started = time.perf_counter()
            try:
                await box.run(name, call)
            except Exception as exc:  # noqa: BLE001 - a broken case must show
                raise SystemExit(f"{name} {call} failed: {exc}") from None
            times.append(time.perf_counter() - started)
        return times

    return statistics.median(asyncio.run(go()))


def file_tools(rounds: int, calls: int) -> None:
    old = old_tools()
    work = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    try:
        make_tree(work)
        boxes = {"before": old.Toolbox(work, old.ToolSettings()),
                 "now": Toolbox(work, ToolSettings())}
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for label, name, args in CASES:
                for which, box in boxes.items():  # interleaved: noise hits both alike
                    n = calls if name not in ("list_files", "grep") else max(5, calls // 20)
                    results.setdefault((label, which), []).append(
                        per_call(box, name, dict(args), n))
        print(f"### File tools, per call (median of {rounds} interleaved rounds)\n")
        print("| call | before (d78a631) | now | now / before |")
        print("|---|---|---|---|")
        for label, _, _ in CASES:
            before = statistics.median(results[(label, "before")])
            now = statistics.median(results[(label, "now")])
            print(f"| {label} | {before * 1e6:,.0f} µs | {now * 1e6:,.0f} µs | "
                  f"{now / before:.2f}x |")
        print()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def shell_start(calls: int) -> None:
    from workers import sandbox

    work = Path(tempfile.mkdtemp(prefix="bench-shell-"))
    try:
        problem = sandbox.probe()
        if problem:
            print(f"(no sandbox here: {problem})")
            return
        rows = []
        for label, settings in (
                ("unsandboxed", ToolSettings(shell=True, shell_sandbox=False)),
                ("sandboxed, no network", ToolSettings(shell=True)),
                ("sandboxed, network", ToolSettings(shell=True, shell_network=True))):
            box = Toolbox(work, settings)
            per_call(box, "shell", {"command": "true"}, 3)  # warm the page cache
            times = []
            for _ in range(calls):
                times.append(per_call(box, "shell", {"command": "true"}, 1))
            times.sort()
            rows.append((label, statistics.median(times), times[int(len(times) * 0.9)]))
        print(f"### Shell command start-up: `true`, through Toolbox.run ({calls} calls)\n")
        print("| shell | median | p90 |")
        print("|---|---|---|")
        for label, median, p90 in rows:
            print(f"| {label} | {median * 1e3:.1f} ms | {p90 * 1e3:.1f} ms |")
        print()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"Machine: {os.cpu_count()} cores, load average {load[0]:.2f} at start; "
          f"Python {sys.version.split()[0]}\n")
    file_tools(args.rounds, args.calls)
    shell_start(max(20, args.calls // 6))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
