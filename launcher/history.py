"""A stopped swarm's history: what `swarm status`, `tasks`, `show`, `cost` and `runs`
read once it is down.

The embedded Redis leaves its append-only file in the state folder (``.swarm/NAME/
redis/``). To read it, a throwaway server (the binary `swarm up` would start) loads a
*copy* of those files in a private temporary folder: a unix socket there, a password of
its own, nothing written back. It is killed and the copy removed when the command ends
(and it dies with the command if that is killed). The swarm's data is never opened for
writing, so a read cannot change it.

Replaying an append-only file is slow (about a second for 10,000 tasks); loading a
snapshot is several times faster. So the first read of a stopped swarm also saves what
it loaded as a snapshot in ``.swarm/NAME/history/``, named after the data files (size,
time, inode), and later reads load that. A swarm that runs again writes new data: a new
name, a new snapshot (the old one is removed).

An external Redis keeps the data after the swarm stops: reads go there, as while it ran
(``redis.last.json`` remembers where). Commands that change things never come here:
they keep saying the swarm is not running.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from launcher.client import Swarm
from launcher.connect import Found, NotRunning, locate as locate_live
from launcher.state import StateDir
from workers import keys, ledger_format
from workers.redis_target import RedisTarget

AOF, RDB, AOF_DIR = "appendonly.aof", "dump.rdb", "appendonlydir"
LOAD_TIMEOUT = 600.0  # a server that is still loading answers LOADING: it is waited for


class HistoryError(NotRunning):
    """The stopped swarm's data cannot be read; ``str()`` says why in one line."""


def locate(name: str | None) -> Found:
    """The swarm as :func:`launcher.connect.locate` finds it if it runs; if it does not,
    what it left: ``stopped`` is set, and ``close`` ends the reading. ``NotRunning`` if
    it left nothing to read."""
    try:
        found = locate_live(name)
    except NotRunning as exc:
        if exc.state is None:
            raise
        return open_stopped(exc.state, str(exc))
    state = found.state
    if state is not None and state.live_pid() is None and state.embedded():
        return open_stopped(state, f"swarm '{state.name}' is not running")  # killed
    return found


def open_stopped(state: StateDir, why: str) -> Found:
    """Read what the swarm of ``state`` left: its external Redis, or a copy of its
    embedded Redis's data loaded by a private server."""
    last = state.read_last_redis()
    if last is not None and not last[1]:
        return Found(state.name, last[0], state, stopped=True)
    if not data_files(state):
        raise NotRunning(why)
    reader = Reader(state)
    try:
        target = reader.start()
    except BaseException:
        reader.close()
        raise
    return Found(state.name, target, state, stopped=True, close=reader.close)


def data_files(state: StateDir) -> list[Path]:
    """The embedded Redis's data files (its configuration and links left out)."""
    data = state.redis_dir
    files = [data / name for name in (AOF, RDB) if (data / name).is_file()]
    if (data / AOF_DIR).is_dir():
        files += sorted(p for p in (data / AOF_DIR).iterdir() if p.is_file())
    return files


def signature(files: list[Path]) -> str:
    """What names the data as it is now: each file's name, size, time and inode."""
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}\n".encode())
    return digest.hexdigest()[:24]


class Reader:
    """A private server on a copy of a stopped swarm's data (or of its snapshot)."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.folder = Path(tempfile.mkdtemp(prefix="swarm-history-"))  # mode 0700
        if len(str(self.folder / "redis.sock")) > 100:  # sun_path is 108 bytes
            self.folder.rmdir()
            self.folder = Path(tempfile.mkdtemp(prefix="swarm-history-", dir="/tmp"))
        self.process: subprocess.Popen[bytes] | None = None
        self.target: RedisTarget | None = None
        self.signature = ""
        self.snapshot_wanted = False
        atexit.register(self.close)

    @property
    def snapshot(self) -> Path:
        return self.state.history_dir / f"{self.signature}.rdb"

    def start(self) -> RedisTarget:
        self.state.check_data_trusted()
        files = data_files(self.state)
        self.signature = signature(files)
        if self.snapshot.is_file():
            try:
                shutil.copyfile(self.snapshot, self.folder / RDB)
                return self._serve(appendonly=False)
            except (HistoryError, OSError):  # unreadable (a newer server wrote it?)
                self._stop()
                self.snapshot.unlink(missing_ok=True)
                (self.folder / RDB).unlink(missing_ok=True)
        for path in files:
            inside = self.folder / path.relative_to(self.state.redis_dir)
            inside.parent.mkdir(mode=0o700, exist_ok=True)
            shutil.copyfile(path, inside)
        target = self._serve(appendonly=any(p.name != RDB for p in files))
        self.snapshot_wanted = True
        return target

    def _serve(self, appendonly: bool) -> RedisTarget:
        from launcher.redis_server import RedisStartError, find_binary
        from workers.proc import preexec_die_with_parent

        try:
            binary = find_binary()
        except RedisStartError as exc:
            raise HistoryError(f"cannot read swarm '{self.state.name}': {exc}") from None
        password = secrets.token_urlsafe(24)
        socket = self.folder / "redis.sock"
        conf = self.folder / "redis.conf"
        lines = ["port 0", f'unixsocket "{socket}"', "unixsocketperm 700",
                 f"requirepass {password}", f"appendonly {'yes' if appendonly else 'no'}",
                 "appendfsync no", 'save ""', f'dir "{self.folder}"',
                 f'logfile "{self.folder / "redis.log"}"', "daemonize no", "databases 16"]
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [binary, str(conf)], cwd=self.folder, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
            start_new_session=True, preexec_fn=preexec_die_with_parent(signal.SIGKILL))
        self.target = RedisTarget(f"unix://{socket}", password)
        self._wait_ready()
        return self.target

    def _wait_ready(self) -> None:
        assert self.process is not None and self.target is not None
        client = self.target.sync(socket_timeout=5.0)
        deadline = time.monotonic() + LOAD_TIMEOUT
        try:
            while True:
                if self.process.poll() is not None:
                    raise HistoryError(f"cannot read swarm '{self.state.name}': its data did "
                                       f"not load ({self._last_log_line()})")
                with contextlib.suppress(redis.BusyLoadingError, redis.ConnectionError,
                                         OSError):
                    if client.ping():
                        break
                if time.monotonic() > deadline:
                    raise HistoryError(f"cannot read swarm '{self.state.name}': its data did "
                                       f"not load within {LOAD_TIMEOUT:g}s")
                time.sleep(0.005)
            self._check_loaded(client)
        finally:
            client.close()

    def _check_loaded(self, client: redis.Redis) -> None:
        """A Redis 6 does not read the append-only folder of a Redis 7 or a Valkey: it
        would start empty, and the history would look empty."""
        if not (self.folder / AOF_DIR).is_dir():
            return
        info = client.info("server")
        major = str(info.get("redis_version", "7")).split(".")[0]
        if "server_name" not in info and major.isdigit() and int(major) < 7:
            raise HistoryError(
                f"cannot read swarm '{self.state.name}': its data was written by a newer "
                f"server than redis {info.get('redis_version')} (set SWARM_REDIS_SERVER)")

    def _last_log_line(self) -> str:
        try:
            lines = (self.folder / "redis.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return lines[-1].strip() if lines else "no log"

    def close(self) -> None:
        """Save the snapshot if this was the first read, end the server, remove the copy."""
        if self.snapshot_wanted and self.process is not None and self.process.poll() is None:
            self.snapshot_wanted = False
            with contextlib.suppress(redis.RedisError, OSError):
                self._save_snapshot()
        self._stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()  # nothing of it is kept: no need to shut down cleanly
            self.process.wait()
            self.process = None

    def _save_snapshot(self) -> None:
        assert self.target is not None
        client = self.target.sync(socket_timeout=300.0)
        try:
            client.save()
        finally:
            client.close()
        if signature(data_files(self.state)) != self.signature:
            return  # the swarm runs again, or ran meanwhile: this is no longer its data
        folder = self.state.history_dir
        folder.mkdir(mode=0o700, exist_ok=True)
        for old in folder.glob("*.rdb"):
            old.unlink(missing_ok=True)
        fresh = folder / f".{self.signature}.{os.getpid()}.tmp"
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out, open(self.folder / RDB, "rb") as source:
            shutil.copyfileobj(source, out, 1 << 20)
        os.replace(fresh, self.snapshot)


@dataclass
class HistorySwarm(Swarm):
    """The Python API over a swarm that may be stopped: the same reads, and a
    ``status()`` whose ``NotRunning`` says when it stopped and what it did."""

    # a copy of what it left: never live (a lease not yet expired in it means nothing)
    copy: bool = False
    others: tuple[str, ...] = ()  # the other swarms in its folder, none running

    def status(self) -> dict[str, Any]:
        if not self.copy:  # (on an external Redis, another host may still run it)
            try:
                return super().status()
            except NotRunning:
                pass
        raise NotRunning(stopped_line(self.redis, self.name, self.others))


def stopped_line(client: Any, name: str, others: tuple[str, ...] = ()) -> str:
    """One line: the swarm is not running, since when, and what it did and spent."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.meta(name))
    pipe.hgetall(keys.counts(name))
    pipe.hget(keys.ledger(name), ledger_format.field("total", "*", "nano"))
    pipe.xrevrange(keys.events(name), count=1)
    pipe.zcard(keys.runs(name))
    meta, counts, nano, last, runs = pipe.execute()
    line = f"swarm '{name}' is not running"
    if meta:
        when = float(meta.get("stopped") or 0) or (
            int(last[0][0].split("-")[0]) / 1000 if last else 0.0)
        how = "stopped" if meta.get("state") == "stopped" else "stopped without leaving cleanly"
        if when:
            stamp = datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")
            how += f" {stamp} ({_ago(time.time() - when)} ago)"
        n = {state: int(counts.get(state, 0)) for state in
             ("done", "failed", "dead", "handed_back", "cancelled", "queued", "running")}
        did = [f"{n['done']} done", f"{n['failed']} failed"]
        did += [f"{n[s]} {s.replace('_', ' ')}" for s in ("dead", "handed_back", "cancelled")
                if n[s]]
        did += [f"{n['queued']} left queued"] * bool(n["queued"])
        did += [f"{n['running']} left running"] * bool(n["running"])
        line += (f": {how}; tasks {', '.join(did)}; {runs} run{'s' * (runs != 1)}; spent "
                 f"${int(nano or 0) / 1e9:.4f} (swarm tasks, cost and runs show it)")
    if others:
        line += f"; also here, not running: {', '.join(others)} (--swarm NAME)"
    return line


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def other_swarms(state: StateDir) -> tuple[str, ...]:
    """The other swarms in the same ``.swarm/`` folder."""
    with contextlib.suppress(OSError):
        return tuple(sorted(p.name for p in state.path.parent.iterdir()
                            if p.is_dir() and p != state.path))
    return ()
