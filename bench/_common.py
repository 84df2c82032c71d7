"""Helpers shared by the benchmark scripts in bench/ (not a benchmark itself).

Everything a benchmark starts lives in a temporary folder and is stopped by the
``close()`` of the object that started it; ``processes_under`` is the last resort that
kills anything still running with its working directory in that folder.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib import metadata
from pathlib import Path
from collections.abc import Callable
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
SWARM_CLI = [PYTHON, "-m", "launcher.cli"]
SWARM_SCRIPT = str(Path(PYTHON).with_name("swarm"))  # the console script users type
STANDALONE = str(BENCH / "standalone_worker.py")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Workers build their Anthropic client at boot only when a key is set, as in real use;
# a dummy one makes them do so. No task is ever submitted, so no request is made.
os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-bench-dummy-no-requests-are-made")

from launcher.state import StateDir  # noqa: E402
from workers import keys  # noqa: E402,F401 - the benchmarks take it from here
from tests.procs import processes_under, wait_for  # noqa: E402,F401 - shared with the tests


# --- running, stopping, cleaning up ------------------------------------------------


def sigterm_exits() -> None:
    """Make SIGTERM run the ``finally`` blocks that stop what a benchmark started."""

    def _exit(sig: int, _frame: Any) -> None:
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, _exit)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for swarm processes we start: this tree's code first on the path
    (so a copy of the repo measures its own code, not the editable install's)."""
    env = dict(os.environ)
    env.pop("SWARM_REDIS_URL", None)
    env["COLUMNS"] = "200"
    path = [extra.pop("PYTHONPATH")] if "PYTHONPATH" in extra else []
    env["PYTHONPATH"] = os.pathsep.join(path + [str(ROOT)])
    env.update(extra)
    return env


def kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL each, and wait (5 s at most) until they are gone."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


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


# --- a swarm under test ------------------------------------------------------------


def pool_yaml(name: str, workers: int, *, expiry: str = "15s", interval: str | None = None,
              backoff_initial: str = "100ms", backoff_max: str = "30s",
              max_restarts: int = 5, window: str = "60s", reset_after: str = "30s",
              model: str = "claude-haiku-4-5", on_start: str | None = None) -> str:
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


class SwarmRun:
    """A spec in a temporary folder and the supervisor running it.

    By default started the way a user does, ``swarm up -d SPEC`` (which returns once
    every worker has heartbeated). With ``launcher`` (argv of a wrapper that behaves like
    ``python -m launcher.cli``) the supervisor runs in the foreground as our child and
    readiness is polled from Redis instead.
    """

    def __init__(self, name: str, pools: str, *, stop_grace: str = "5s",
                 kill_grace: str = "1s", launcher: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.folder = Path(tempfile.mkdtemp(prefix="swarm-bench-"))
        self.spec_path = self.folder / "swarm.yaml"
        self.spec_path.write_text(
            f"name: {name}\nstop_grace: {stop_grace}\nkill_grace: {kill_grace}\n"
            "pools:\n" + textwrap.indent(pools, "  ")
        )
        self.launcher = launcher
        self.env = env or {}  # extra environment for the supervisor (and so its workers)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self._client: Any = None

    @property
    def state(self) -> StateDir:
        return StateDir(self.folder / ".swarm" / self.name)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SWARM_CLI, *args], cwd=self.folder, env=cli_env(**self.env), capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def start(self, expected_workers: int, timeout: float = 600) -> SwarmRun:
        t0 = time.perf_counter()
        if self.launcher is None:
            done = self.cli("up", "-d", "--wait", str(timeout), str(self.spec_path),
                            timeout=timeout + 30)
            if done.returncode != 0:
                raise RuntimeError(f"swarm up -d failed: {done.stderr or done.stdout}")
        else:
            out = open(self.folder / "up.out", "wb")
            self.proc = subprocess.Popen(
                [*self.launcher, "up", str(self.spec_path)], cwd=self.folder,
                env=cli_env(**self.env),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            out.close()
            wait_for(lambda: self.all_beating(expected_workers), timeout, "every worker to beat",
                     every=0.2)
        self.startup_seconds = time.perf_counter() - t0
        self.pid = self.state.read_pid()
        return self

    def client(self) -> Any:
        if self._client is None:
            target = self.state.read_redis()
            if target is None:
                raise RuntimeError("the swarm has no Redis recorded")
            self._client = target.sync(socket_timeout=10)
        return self._client

    def status(self) -> dict[str, Any]:
        from launcher.status import collect

        return collect(self.client(), self.name)

    def all_beating(self, expected: int) -> bool:
        rows = self.status()["workers"]
        return len(rows) == expected and all(r["state"] in ("idle", "busy") for r in rows)

    def worker_pids(self) -> dict[str, int]:
        return {r["worker"]: int(r["pid"]) for r in self.status()["workers"] if r["pid"]}

    def redis_pid(self) -> int | None:
        """The embedded redis-server: the supervisor's child that is not a worker."""
        if self.pid is None:
            return None
        for child in psutil.Process(self.pid).children():
            try:
                if "redis-server" in child.name():
                    return child.pid
            except psutil.Error:
                pass
        return None

    def close(self) -> None:
        """`swarm down`, then SIGTERM/SIGKILL whatever is left, then remove the folder."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
        pid = self.state.live_pid() or self.pid
        if pid is not None and self.state.read_redis() is not None:
            try:
                self.cli("down", "--timeout", "30", timeout=45)
            except subprocess.TimeoutExpired:
                pass
        if pid is not None and psutil.pid_exists(pid):
            try:
                os.kill(pid, signal.SIGTERM)
                psutil.Process(pid).wait(15)
            except (psutil.Error, ProcessLookupError):
                pass
            except psutil.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
        left = kill_leftovers(self.folder)
        if left:
            print(f"  (cleanup: killed {left} leftover process(es))", file=sys.stderr)
        shutil.rmtree(self.folder, ignore_errors=True)


# --- Redis for workers that swarm does not supervise -----------------------------------


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
    return [PYTHON, STANDALONE, worker_id, url, "--swarm", swarm, "--expiry", f"{expiry:g}"]


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
        from launcher.redis_server import find_binary

        redis_bin = subprocess.run([find_binary(), "--version"], capture_output=True,
                                   text=True).stdout.split()[2]
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
        f"supervisor {version('supervisor')}, redis-server {redis_bin}, "
        f"redis-py {version('redis')}, anthropic {version('anthropic')}, "
        f"psutil {version('psutil')}"
    )


class MachineLoad:
    """How busy the whole machine was over a measurement (this benchmark's own processes
    included), and whether someone else's tests or benchmarks were running: the machine
    is shared, so every result says how quiet it was."""

    FOREIGN = ("pytest", "fake_api", "throughput.py")

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
