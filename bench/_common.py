"""Helpers shared by the benchmark scripts in bench/ (not a benchmark itself); what they
share with the tests (the swarm under measurement, processes, the fake API) is in
``tests.harness``. Run the benchmarks from the checkout as ``python -m bench.NAME``.

Everything a benchmark starts lives in a temporary folder and is stopped by the
``stop()``/``close()`` of the object that started it; ``processes_under`` is the last
resort that kills anything still running with its working directory in that folder.
"""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import textwrap
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from launcher.state import StateDir
from tests.harness.procs import PYTHON, ROOT, checkout_env, cli_env, kill_all, processes_under
from tests.harness.swarm import SwarmRun

SWARM_SCRIPT = str(Path(PYTHON).with_name("swarm"))  # the console script users type
# The supervisor with a changed preload (bench/patched_launcher.py), as ``SwarmRun``'s
# ``launcher``; -P, as the swarm script: its working folder (the spec's, a pool's
# workdir) stays off sys.path, where swarm refuses a workdir.
PATCHED_LAUNCHER = [PYTHON, "-P", "-m", "bench.patched_launcher"]
# Workers build their Anthropic client at boot only when a key is set, as in real use;
# a dummy one makes them do so. No task is submitted with it, so no request is made.
DUMMY_KEY = {"ANTHROPIC_API_KEY": "sk-ant-bench-dummy-no-requests-are-made"}


# --- running, stopping, cleaning up ------------------------------------------------


def sigterm_exits() -> None:
    """Make SIGTERM run the ``finally`` blocks that stop what a benchmark started."""

    def _exit(sig: int, _frame: Any) -> None:
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, _exit)


def kill_leftovers(folder: Path) -> int:
    procs = processes_under(folder)
    kill_all(procs)
    return len(procs)


def time_runs(argv: list[str], cwd: Path, runs: int, check: Callable[[str], Any] | None = None,
              warmups: int = 1) -> list[float]:
    """Wall times of ``argv`` run as its own process ``runs`` times, after ``warmups``
    untimed runs; ``check`` is given each run's stdout. A failed run raises."""
    times = []
    for i in range(warmups + runs):
        start = time.perf_counter()
        done = subprocess.run(argv, check=False, cwd=cwd, env=cli_env(), capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr or done.stdout}")
        if check is not None:
            check(done.stdout)
        if i >= warmups:
            times.append(elapsed)
    return times


# --- a swarm under measurement -----------------------------------------------------


def bench_swarm(name: str, pools: str, *, env: dict[str, str] | None = None,
                **options: Any) -> SwarmRun:
    """``SwarmRun.in_temp_folder`` (``stop_grace``, ``kill_grace``, ``launcher``) with
    the dummy API key unless ``env`` gives one; not started."""
    return SwarmRun.in_temp_folder(name, pools, env={**DUMMY_KEY, **(env or {})}, **options)


def pool_yaml(name: str, workers: int, *, expiry: str = "15s", interval: str | None = None,
              backoff_initial: str = "100ms", backoff_max: str = "30s",
              max_restarts: int = 5, window: str = "60s", reset_after: str = "30s",
              model: str = "claude-haiku-4-5", on_start: str | None = None) -> str:
    """One pool with the example's timings (``on_start``: e.g.
    ``tests.harness.hooks:full_gc``)."""
    beat = f"{{expiry: {expiry}" + (f", interval: {interval}" if interval else "") + "}"
    hook = f"  on_start: {on_start}\n" if on_start else ""
    return textwrap.dedent(f"""\
        {name}:
          model: {model}
          workers: {workers}
          heartbeat: {beat}
          restart:
            backoff: {{initial: {backoff_initial}, max: {backoff_max}}}
            max_restarts: {max_restarts}
            window: {window}
            reset_after: {reset_after}
        """) + hook


# --- workers that swarm does not supervise ---------------------------------------------


class LoneRedis:
    """The embedded redis-server on its own (for supervisord's or plain subprocess
    workers), in a temporary folder."""

    def __init__(self, folder: Path) -> None:
        from launcher.redis_server import EmbeddedRedis

        self.folder = folder
        self.server = EmbeddedRedis(StateDir(folder / "redis-state"), folder / "redis.log")
        self.target = self.server.start()
        self.url = self.target.url
        self.password = self.target.password or ""

    def client(self) -> Any:
        return self.target.sync(socket_timeout=10)

    def close(self) -> None:
        self.server.stop()


def standalone_cmd(worker_id: str, url: str, *, swarm: str, expiry: float) -> list[str]:
    """bench/standalone_worker.py's command line; run it with :func:`standalone_env`."""
    return [PYTHON, "-P", "-m", "bench.standalone_worker", worker_id, url, "--swarm", swarm,
            "--expiry", f"{expiry:g}"]


def standalone_env(password: str) -> dict[str, str]:
    """The environment of a standalone worker: the checkout importable, the Redis
    password, the dummy API key."""
    return checkout_env({"SWARM_REDIS_PASSWORD": password, **DUMMY_KEY})


# --- processes -----------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def in_trees(pids: list[int]) -> list[psutil.Process]:
    """Every process of the trees rooted at ``pids``, each once."""
    seen: dict[int, psutil.Process] = {}
    for pid in pids:
        for proc in tree(pid):
            seen.setdefault(proc.pid, proc)
    return list(seen.values())


def mem_of(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in bytes of the process trees rooted at ``pids``."""
    rss = pss = 0
    for proc in in_trees(pids):
        try:
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return rss, pss


# --- numbers -----------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Percentile by linear interpolation between closest ranks (like numpy's default)."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else float("nan"),
        "p95": pct(values, 95),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def mib(num: float) -> str:
    return f"{num / 2**20:.1f} MiB"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table, so the output can be pasted into docs/benchmarks.md."""
    cells = [[str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def revision() -> str:
    """The commit measured: from git, or from a REVISION file in an exported copy."""
    if (ROOT / ".git").exists():
        try:
            rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                    "launcher", "workers"], capture_output=True,
                                   text=True).stdout.strip()
            return f"git {rev}" + (" + uncommitted changes in launcher/ or workers/"
                                   if dirty else " (clean launcher/ and workers/)")
        except OSError:
            pass
    if (ROOT / "REVISION").exists():
        return (ROOT / "REVISION").read_text().strip()
    return "unknown revision"


def machine() -> str:
    """One paragraph: what these numbers were measured on."""
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    redis_bin = None
    try:
        from launcher.redis_server import choose

        server = choose()
        said = subprocess.run([server.path, "--version"], capture_output=True,
                              text=True).stdout.split()
        redis_bin = f"{said[0]} {said[2]} ({server.origin})"
    except Exception:  # noqa: BLE001
        pass
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory()
    load = os.getloadavg()
    return (
        f"code: {ROOT} at {revision()}\n"
        f"machine: {os.cpu_count()} cores ({cpu}), {mem.total / 2**30:.1f} GiB RAM "
        f"({mem.available / 2**30:.1f} GiB available), Linux {platform.release()}, "
        f"load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
        f"versions: Python {platform.python_version()}, swarm {version('swarm')}, "
        f"supervisor {version('supervisor')}, server {redis_bin}, "
        f"redis-py {version('redis')}, anthropic {version('anthropic')}, "
        f"psutil {version('psutil')}"
    )


class MachineLoad:
    """How busy the whole machine was over a measurement (this benchmark's own processes
    included), and whether someone else's tests or benchmarks were running: the machine
    is shared, so every result says how quiet it was."""

    FOREIGN = ("pytest", "fake_api", "throughput.py", "bench.throughput",
               "bench.peers.throughput")

    def __init__(self, every: float = 5.0) -> None:
        import threading

        self.seen: set[str] = set()
        self._t0 = psutil.cpu_times()
        self._done = threading.Event()
        self.look()
        threading.Thread(target=self._watch, args=(every,), daemon=True).start()

    def _watch(self, every: float) -> None:
        while not self._done.wait(every):
            self.look()

    def look(self) -> None:
        """Note any foreign test or benchmark process running now."""
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
            except psutil.Error:
                continue
            if proc.info["pid"] != me and any(word in cmd for word in self.FOREIGN):
                self.seen.add(next(word for word in self.FOREIGN if word in cmd))

    def report(self) -> str:
        self._done.set()
        self.look()
        t1 = psutil.cpu_times()
        total = sum(t1) - sum(self._t0)
        idle = (t1.idle - self._t0.idle) + (getattr(t1, "iowait", 0) - getattr(self._t0, "iowait", 0))
        busy = 100 * (total - idle) / total if total > 0 else float("nan")
        others = ", ".join(sorted(self.seen)) or "none seen"
        return (f"machine busy {busy:.0f}% of all {os.cpu_count()} cores over the measurement "
                f"(this benchmark included); other tests/benchmarks running: {others}")
