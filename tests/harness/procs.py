"""Processes the tests and the benchmarks start: where this checkout is, the environment
they run in, finding what a swarm left running, and waiting for a condition."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]  # the checkout: launcher/, workers/, tests/, bench/
PYTHON = sys.executable
# as the `swarm` script runs it: -P keeps the current folder (a workdir) off sys.path
SWARM_CLI = [PYTHON, "-P", "-m", "launcher.cli"]
# never the developer's own API key, endpoint, Redis or host name
_PRIVATE = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL",
            "CLAUDE_CODE_OAUTH_TOKEN", "SWARM_REDIS_URL", "SWARM_HOST")


def checkout_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the checkout first on ``PYTHONPATH``: how a child
    (``swarm up`` and its workers, a helper run with ``python -m``) imports this tree's
    ``launcher``, ``workers``, ``tests`` and ``bench`` whatever its working folder, and
    never another copy's. A ``PYTHONPATH`` in ``extra`` comes next, then the inherited one."""
    return _environ(extra, drop=())


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every swarm process we start (CLI, supervisor, workers): as
    :func:`checkout_env`, but none of the developer's own API key, endpoint, Redis or
    host name (``extra`` sets what a test or a benchmark wants), and wide columns. A
    key that opens nothing and an endpoint where nothing listens stand in for the real
    ones (`swarm up` wants a key; no test reaches the internet); an empty
    ``ANTHROPIC_API_KEY`` in ``extra`` means none."""
    return _environ({"COLUMNS": "200", "ANTHROPIC_API_KEY": "sk-ant-test-opens-nothing",
                     "ANTHROPIC_BASE_URL": "http://127.0.0.1:9", **(extra or {})},
                    drop=_PRIVATE)


def _environ(extra: dict[str, str] | None, drop: tuple[str, ...]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in drop}
    extra = dict(extra or {})
    # (no empty entry: Python reads one as the current folder)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(ROOT), *extra.pop("PYTHONPATH", "").split(os.pathsep),
                    *env.get("PYTHONPATH", "").split(os.pathsep)] if p)
    env.update(extra)
    return env


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


def kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL each, and wait (5 s at most) until they are gone."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


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


def settle(predicate: Callable[[], Any], timeout: float, every: float = 0.5) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` runs out, and say which: a
    bounded wait that asserts nothing, for a test that counts what it waited for
    afterwards (so a timeout shows as the count that is wrong, not as the wait)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - not yet (Redis restarting)
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
