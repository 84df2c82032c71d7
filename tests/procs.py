"""Process helpers shared by the test fixtures (conftest.py) and the benchmarks
(bench/_common.py): finding what a swarm left running, and waiting for a condition.
No pytest here, so a benchmark can import it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil


def processes_under(folder: Path) -> list[psutil.Process]:
    """Every process whose working directory is inside ``folder`` (supervisor, workers
    and the embedded redis-server all live there), zombies excepted."""
    found = []
    folder = folder.resolve()
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cwd = Path(proc.cwd())
        except (psutil.Error, OSError):
            continue
        if cwd == folder or folder in cwd.parents:
            found.append(proc)
    return found


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true; an exception counts as not yet
    (the swarm may still be starting) and is shown if time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - not ready yet
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(every)
