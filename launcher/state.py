"""The swarm's state directory (``.swarm/<name>/``, mode 0700): how other shells find a
running swarm. It holds the supervisor's pid file, where Redis is (``redis.json``, no
secrets) and the Redis password (``redis.pass``, mode 0600). What outlives a run: the
spec and logs it used (``swarm.json``), where its Redis was (``redis.last.json``), the
embedded Redis's data (``redis/``) and snapshots of it for reading (``history/``)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from workers.redis_target import RedisTarget

STATE_DIRNAME = ".swarm"


class NotFound(Exception):
    """No swarm could be found; ``str()`` is a one-line answer for the user."""


class Untrusted(NotFound):
    """A connection file that is not this user's private file: someone else could have
    written it (to send our Redis password to a server of theirs)."""


@dataclass(frozen=True)
class StateDir:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def pid_file(self) -> Path:
        return self.path / "supervisor.pid"

    @property
    def redis_file(self) -> Path:
        return self.path / "redis.json"

    @property
    def password_file(self) -> Path:
        return self.path / "redis.pass"

    @property
    def redis_dir(self) -> Path:
        return self.path / "redis"

    @property
    def last_redis_file(self) -> Path:
        """Where its Redis was when it last ran; kept after it stops (its history is read
        there). With the password (``redis.last.pass``) only for an external Redis."""
        return self.path / "redis.last.json"

    @property
    def last_password_file(self) -> Path:
        return self.path / "redis.last.pass"

    @property
    def history_dir(self) -> Path:
        """Snapshots of a stopped swarm's data, for reading it fast (launcher/history.py)."""
        return self.path / "history"

    @property
    def info_file(self) -> Path:
        """Where the spec and the logs are; kept after the swarm stops."""
        return self.path / "swarm.json"

    @property
    def out_file(self) -> Path:
        """stdout/stderr of a detached supervisor (what it printed before logging)."""
        return self.path / "supervisor.out"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        os.chmod(self.path.parent, 0o700)

    # --- pid -----------------------------------------------------------------------

    def write_pid(self, pid: int) -> None:
        """The pid and the process's start time: a pid reused by another process after
        the supervisor died is never mistaken for it."""
        _write_private(self.pid_file, f"{pid} {process_started(pid)}\n")

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def live_pid(self) -> int | None:
        """The supervisor's pid if that very process still runs."""
        try:
            fields = self.pid_file.read_text().split()
            pid, started = int(fields[0]), fields[1] if len(fields) > 1 else None
        except (OSError, ValueError, IndexError):
            return None
        if not pid_alive(pid):
            return None
        return pid if started is None or process_started(pid) == started else None

    def write_info(self, **info: str) -> None:
        _write_private(self.info_file, json.dumps(info))

    def read_info(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.info_file.read_text()))
        except (OSError, ValueError):
            return {}

    # --- redis ---------------------------------------------------------------------

    def write_redis(self, target: RedisTarget, embedded: bool) -> None:
        _write_private(self.redis_file, json.dumps({"url": target.url, "embedded": embedded}))
        if target.password is not None:
            _write_private(self.password_file, target.password)
        else:
            self.password_file.unlink(missing_ok=True)
        _write_private(self.last_redis_file, json.dumps({"url": target.url, "embedded": embedded}))
        if target.password is not None and not embedded:
            _write_private(self.last_password_file, target.password)
        else:
            self.last_password_file.unlink(missing_ok=True)

    def embedded(self) -> bool:
        """Whether the swarm's Redis is its own private server (it stops with it)."""
        try:
            return bool(json.loads(self._read_trusted(self.redis_file)).get("embedded"))
        except (OSError, ValueError):
            return False

    def read_redis(self) -> RedisTarget | None:
        """Where the swarm's Redis is, or None if it is not running. ``Untrusted`` if a
        file (or the folder) is not this user's alone."""
        try:
            info = json.loads(self._read_trusted(self.redis_file))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        try:
            password: str | None = self._read_trusted(self.password_file)
        except FileNotFoundError:
            password = None
        return RedisTarget(info["url"], password)

    def read_last_redis(self) -> tuple[RedisTarget, bool] | None:
        """Where its Redis was when it last ran, and whether it was its own (embedded);
        None if that was never recorded."""
        try:
            info = json.loads(self._read_trusted(self.last_redis_file))
            url, embedded = str(info["url"]), bool(info.get("embedded"))
        except (OSError, ValueError, LookupError, TypeError):
            return None
        password = None
        if not embedded:
            with contextlib.suppress(FileNotFoundError):
                password = self._read_trusted(self.last_password_file)
        return RedisTarget(url, password), embedded

    def check_data_trusted(self) -> None:
        """``Untrusted`` unless the state folder and the embedded Redis's data folder are
        this user's alone (that data is about to be loaded into a redis-server)."""
        _check_private(self.path, folder=True)
        _check_private(self.redis_dir, folder=True)

    def last_active(self) -> float:
        """About when it last ran: its data's last write, else when it started."""
        times = [0.0]
        aof_dir = self.redis_dir / "appendonlydir"  # Valkey's (and Redis 7's) AOF files
        try:
            inside = list(aof_dir.iterdir())
        except OSError:
            inside = []
        for path in (self.info_file, self.redis_dir / "appendonly.aof",
                     self.redis_dir / "dump.rdb", *inside):
            try:
                times.append(path.stat().st_mtime)
            except OSError:
                pass
        return max(times)

    def _read_trusted(self, path: Path) -> str:
        _check_private(self.path, folder=True)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            _check_private(path, os.fstat(fd))
            return handle.read(1_000_000).decode("utf-8")

    def clear_runtime(self) -> None:
        for path in (self.pid_file, self.redis_file, self.password_file):
            path.unlink(missing_ok=True)


def _check_private(path: Path, st: os.stat_result | None = None,
                   folder: bool = False) -> None:
    """``path`` must be this user's and closed to others (a file: mode 0600; the state
    folder: nobody else may write in it)."""
    if st is None:
        st = os.stat(path, follow_symlinks=False)
    kind_ok = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
    open_to = 0o022 if folder else 0o077
    if st.st_uid != os.geteuid() or st.st_mode & open_to or not kind_ok:
        raise Untrusted(
            f"not trusting {path}: owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"
            f" (swarm's own {'folder' if folder else 'file'} is uid {os.geteuid()}'s, mode "
            f"{'0700' if folder else '0600'}); remove it if it is not yours")


def process_started(pid: int) -> str:
    """When the process started, in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[-1].split()[19]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def for_spec(state_dir: Path, name: str) -> StateDir:
    return StateDir(state_dir / name)


def find(name: str | None, start: Path | None = None) -> StateDir:
    """The state directory of swarm ``name`` (or the only one) in ``start`` or a parent."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        root = folder / STATE_DIRNAME
        if root.is_dir():
            return _pick(root, name)
    raise NotFound(
        f"no swarm found: no {STATE_DIRNAME}/ in {here} or its parents "
        "(run 'swarm up SPEC' here, or set SWARM_REDIS_URL)"
    )


def _pick(root: Path, name: str | None) -> StateDir:
    if name is not None:
        state = StateDir(root / name)
        if not state.path.is_dir():
            known = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "none"
            raise NotFound(f"no swarm named {name!r} in {root} (known: {known})")
        return state
    found = sorted(p for p in root.iterdir() if p.is_dir())
    running = [p for p in found if StateDir(p).live_pid() is not None]
    if len(running) == 1 or (found and not running):
        # none runs: the one that ran last (`swarm status` names the others)
        return max((StateDir(p) for p in running or found), key=StateDir.last_active)
    if not found:
        raise NotFound(f"no swarm found in {root}")
    names = ", ".join(p.name for p in running)
    raise NotFound(f"several swarms in {root} ({names}): choose one with --swarm NAME")
