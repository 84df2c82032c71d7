"""`swarm statusline`: one short line for Claude Code's status bar, e.g.

    swarm t | 2 busy, 1 idle | 3 queued, 1 running, 4 done, 1 failed | $0.0123 of $5

Claude Code runs the command whenever its conversation changes (at most every 300 ms),
writes its session as JSON to the command's stdin and shows the first line it prints.
So this reads only what Redis keeps pre-aggregated, as `swarm status` does (the task
counts, each host's slots, each worker's own report, the ledger's total) in three round
trips; imports nothing heavy (on a ``unix://`` or ``redis://`` Redis, as the embedded
one is, a few lines of RESP over a socket stand in for redis-py, whose import alone
takes ~200 ms); gives up on a Redis that does not answer within half a second; and
always prints a line and exits 0 ("swarm: not running"), never a traceback.

The swarm's budget is its spec's ``budget_usd``, as its hosts publish it in the swarm's
meta. `swarm statusline` (launcher/entry.py) comes here without loading the CLI.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from launcher.slot import SUPERVISOR_WINS
from launcher.state import NotFound, StateDir, find
from workers import keys, ledger_format
from workers.redis_target import RedisTarget

TIMEOUT = 0.5  # seconds for Redis to connect and to answer each round trip
STDIN_WAIT = 0.2  # seconds to wait for the session's JSON on a pipe
_STATES = ("busy", "idle", "starting")  # shown first, in this order


def main(name: str | None = None) -> int:
    """Print the line; always 0 (a status bar has nowhere to show an exit code)."""
    session = read_session()
    try:
        text = line(name, _starts(session))
    except Exception as exc:  # noqa: BLE001 - a status bar shows one line, never a traceback
        text = f"swarm: {type(exc).__name__}: {exc}"
    try:
        sys.stdout.write(_short(text, 200) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    return 0


def read_session(wait: float = STDIN_WAIT) -> dict[str, Any]:
    """Claude Code's JSON from stdin, drained without blocking: nothing is read from a
    terminal, and a pipe gets ``wait`` seconds to reach its end."""
    try:
        if os.isatty(0):
            return {}
    except OSError:
        return {}
    chunks: list[bytes] = []
    deadline = time.monotonic() + wait
    try:
        while sum(map(len, chunks)) < 1_000_000:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([0], [], [], left)[0]:
                break
            chunk = os.read(0, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        found = json.loads(b"".join(chunks) or b"{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _starts(session: dict[str, Any]) -> list[Path]:
    """Where to look for ``.swarm/``: here, then the session's folders."""
    workspace = session.get("workspace")
    workspace = workspace if isinstance(workspace, dict) else {}
    dirs = [Path.cwd()]
    for value in (workspace.get("current_dir"), workspace.get("project_dir"), session.get("cwd")):
        if isinstance(value, str) and value and Path(value) not in dirs:
            dirs.append(Path(value))
    return dirs


def line(name: str | None, starts: list[Path]) -> str:
    state: StateDir | None = None
    problem: NotFound | None = None
    for start in starts:
        try:
            state = find(name, start)
            break
        except NotFound as exc:
            problem = problem or exc
    try:
        target = state.read_redis() if state is not None else None
    except NotFound as exc:  # a connection file that is not the user's own
        return f"swarm: {exc}"
    env_url = os.environ.get("SWARM_REDIS_URL")
    if target is None and env_url:
        target = RedisTarget.parse(env_url)
    if state is not None and (name is None or state.name == name):
        name = state.name
    label = f"swarm {name}" if name else "swarm"
    if target is None:
        if state is not None:
            return f"{label}: not running"
        return "swarm: no swarm here" if "no swarm found" in str(problem) else f"swarm: {problem}"
    try:
        conn = connect(target)
    except (OSError, ReplyError) as exc:
        return f"{label}: not running ({_short(str(exc), 60)})"
    try:
        if name is None:
            names = conn.run([("SMEMBERS", keys.REGISTRY)])[0]
            if len(names) != 1:
                return f"swarm: {len(names) or 'no'} swarms in that Redis: choose with --swarm"
            name = str(next(iter(names)))
        view = snapshot(conn, name)
        return render(name, view, view["budget_usd"])
    except (OSError, ReplyError) as exc:
        return f"{label}: Redis does not answer ({_short(str(exc), 60)})"
    finally:
        conn.close()


def snapshot(conn: Any, name: str) -> dict[str, Any]:
    """What the line shows, read as `swarm status` reads it (launcher/status.py)."""
    meta, hosts, counts, paused, spent = conn.run([
        ("HGETALL", keys.meta(name)), ("SMEMBERS", keys.hosts(name)),
        ("HGETALL", keys.counts(name)), ("GET", keys.paused(name)),
        ("HGET", keys.ledger(name), ledger_format.field("total", "*", "nano"))])
    meta, counts, hosts = _hash(meta), _hash(counts), sorted(hosts)
    replies = conn.run([cmd for host in hosts for cmd in (
        ("EXISTS", keys.host(name, host)), ("HGETALL", keys.host_slots(name, host)))])
    slots = []
    alive = replies[0::2]
    for up, table in zip(alive, replies[1::2]):
        for worker_id, raw in _hash(table).items():
            slots.append((worker_id, json.loads(raw), not up))
    reports = conn.run([cmd for worker_id, slot, _ in slots for cmd in (
        ("HMGET", keys.worker(name, worker_id), "state", "pid"),
        ("PTTL", keys.lease(name, keys.consumer(worker_id, int(slot.get("generation", 0))))),
    )]) if slots else []
    workers: dict[str, int] = {}
    for i, (_, slot, lost) in enumerate(slots):
        (said, pid), pttl = reports[2 * i], reports[2 * i + 1]
        state = slot["state"]
        if lost:
            state = "lost"
        elif state not in SUPERVISOR_WINS:
            current = slot.get("pid") is not None and pid == str(slot.get("pid"))
            state = (said or "starting") if (pttl or 0) > 0 and current else "starting"
        workers[state] = workers.get(state, 0) + 1
    state = meta.get("state", "unknown")
    if not meta or (state == "stopped" and not hosts):
        state = "not running"
    elif state != "stopped" and hosts and not any(alive):
        state = "lost"
    return {"state": state, "workers": workers, "paused": paused,
            "tasks": {k: int(v) for k, v in counts.items()}, "spent_nano": int(spent or 0),
            "budget_usd": float(meta.get("budget_usd") or 0) or None}


def render(name: str, view: dict[str, Any], budget_usd: float | None) -> str:
    if view["state"] == "not running":
        return f"swarm {name}: not running"
    workers = view["workers"]
    order = [s for s in _STATES if s in workers] + sorted(s for s in workers if s not in _STATES)
    tasks = view["tasks"]
    parts = [f"swarm {name}" + ("" if view["state"] == "running" else f" {view['state']}"),
             ", ".join(f"{workers[s]} {s}" for s in order) or "no workers",
             f"{tasks.get('queued', 0)} queued, {tasks.get('running', 0)} running, "
             f"{tasks.get('done', 0)} done, {tasks.get('failed', 0)} failed",
             usd(view["spent_nano"]) + (f" of ${budget_usd:g}" if budget_usd else "")]
    if view["paused"]:
        parts.append("PAUSED: " + _short(str(view["paused"]), 60))
    return " | ".join(parts)


def usd(nano: int) -> str:
    dollars = nano / 1e9
    return f"${dollars:.4f}" if dollars < 10 else f"${dollars:,.2f}"


def _hash(reply: Any) -> dict[str, str]:
    """HGETALL's reply: a dict from redis-py, pairs in a list from RESP."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[0::2], reply[1::2])) if reply else {}


def _short(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


# --- talking to Redis ----------------------------------------------------------------


class ReplyError(Exception):
    """Redis answered with an error (a wrong password, say)."""


def connect(target: RedisTarget, timeout: float = TIMEOUT) -> Any:
    """A connection with ``run(commands) -> replies`` (one round trip) and ``close()``:
    plain RESP on a ``unix://`` or ``redis://`` URL, redis-py for anything else."""
    parts = urlsplit(target.url)
    query = parse_qs(parts.query)
    if parts.scheme in ("unix", "redis") and set(query) <= {"db"}:
        db = (query.get("db") or [parts.path.strip("/") if parts.scheme == "redis" else ""])[0]
        return Resp(parts, target.password, db, timeout)
    return _RedisPy(target, timeout)


class Resp:
    """Just enough RESP2 for a few reads: pipelined commands, their replies."""

    def __init__(self, url: Any, password: str | None, db: str, timeout: float) -> None:
        if url.scheme == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(url.path)
            except OSError:
                self.sock.close()
                raise
        else:
            self.sock = socket.create_connection((url.hostname or "localhost",
                                                  url.port or 6379), timeout)
        self.reader = self.sock.makefile("rb")
        hello: list[tuple[str, ...]] = []
        if password is not None:
            hello.append(("AUTH", *([url.username] if url.username else []), password))
        if db and db != "0":
            hello.append(("SELECT", db))
        try:
            if hello:
                self.run(hello)
        except (OSError, ReplyError):
            self.close()
            raise

    def run(self, commands: list[tuple[str, ...]]) -> list[Any]:
        out = bytearray()
        for command in commands:
            out += b"*%d\r\n" % len(command)
            for arg in command:
                data = str(arg).encode()
                out += b"$%d\r\n%s\r\n" % (len(data), data)
        self.sock.sendall(out)
        replies = [self._read() for _ in commands]
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
        return replies

    def _read(self) -> Any:
        head = self.reader.readline()
        if not head.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, rest = head[:1], head[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return ReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind in (b"$", b"*") and int(rest) < 0:
            return None
        if kind == b"$":
            return self.reader.read(int(rest) + 2)[:-2].decode(errors="replace")
        if kind == b"*":
            return [self._read() for _ in range(int(rest))]
        raise ConnectionError(f"not a Redis reply: {head[:20]!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class _RedisPy:
    """redis-py, for the URLs plain RESP here does not cover (TLS, options)."""

    def __init__(self, target: RedisTarget, timeout: float) -> None:
        self.client = target.sync(socket_timeout=timeout, socket_connect_timeout=timeout)

    def run(self, commands: list[tuple[str, ...]]) -> list[Any]:
        import redis

        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            return list(pipe.execute())
        except redis.ResponseError as exc:
            raise ReplyError(str(exc)) from None
        except redis.RedisError as exc:
            raise ConnectionError(str(exc)) from None

    def close(self) -> None:
        self.client.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[1] if len(args) == 2 and args[0] in ("--swarm", "-s") else None))
