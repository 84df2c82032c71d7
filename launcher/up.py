"""`swarm up`: bring a swarm up in the foreground, or detached in the background.

Detached, the parent re-runs ``swarm up`` in a new session with a pipe to hear back
on, and returns once every worker has heartbeated (or prints why not)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from launcher.logfiles import SUPERVISOR_FORMAT, rotating
from launcher.redis_server import EmbeddedRedis, RedisStartError
from launcher.spec import Pool, SwarmSpec
from launcher.spec_roles import SUBSCRIPTION
from launcher.state import StateDir
from workers.proc import isolate_imports
from workers.redis_target import RedisTarget

if TYPE_CHECKING:
    from launcher.live import LiveView


class UpError(Exception):
    """`swarm up` cannot proceed; ``str()`` is a one-line reason."""


def state_of(spec: SwarmSpec) -> StateDir:
    return StateDir(spec.state_dir / spec.name)


def check_shell_sandbox(spec: SwarmSpec) -> None:
    """A pool whose shell is to be sandboxed needs a machine that can build the sandbox:
    say so now, in one line, rather than fail every command later."""
    from workers import sandbox

    for name, pool in spec.pools.items():
        if pool.tools.shell and pool.tools.shell_sandbox:
            problem = sandbox.probe()
            if problem:
                raise UpError(
                    f"{spec.source}: pools.{name}.tools.shell: shell commands cannot be "
                    f"sandboxed on this machine ({problem}); set tools.shell_sandbox: "
                    "false to run them unsandboxed, as the worker's user (see README)")


def check_claude_code(spec: SwarmSpec) -> None:
    """A pool whose tasks run in Claude Code needs claude-agent-sdk and a sandbox for
    the CLI (it is never run unsandboxed): say so now, in one line."""
    from workers import claude_code, sandbox

    for name, pool in spec.pools.items():
        if pool.runtime != "claude-code":
            continue
        problem = claude_code.missing() or sandbox.probe()
        if problem:
            raise UpError(f"{spec.source}: pools.{name}.runtime: {problem}")


LOG_OWNER = ".swarm-owner"  # in a log folder: the swarm whose supervisor writes there


def log_dir_problem(spec: SwarmSpec) -> str | None:
    """One running swarm per log folder (its files are named by slot, not by swarm):
    why not, if another swarm's live supervisor writes there."""
    from launcher.state import pid_alive, process_started

    try:
        name, pid, started = (spec.logs.dir / LOG_OWNER).read_text().split()
        if name != spec.name and pid_alive(int(pid)) and process_started(int(pid)) == started:
            return (f"{spec.logs.dir} holds the logs of swarm '{name}', running (pid {pid}): "
                    f"give swarm '{spec.name}' a folder of its own (logs.dir in its spec)")
    except (OSError, ValueError):
        pass
    return None


def claim_log_dir(spec: SwarmSpec) -> None:
    from launcher.state import process_started

    problem = log_dir_problem(spec)
    if problem:
        raise UpError(problem)
    (spec.logs.dir / LOG_OWNER).write_text(
        f"{spec.name} {os.getpid()} {process_started(os.getpid())}\n")


def api_key_problem(spec: SwarmSpec, environ: dict[str, str] | None = None) -> str | None:
    """Why the workers of some pool would have no API key (every task would fail), or
    None. The key comes from the environment of `swarm up`, or a pool's ``env``."""
    env = os.environ if environ is None else environ
    names = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    if any(env.get(n) for n in names):
        return None

    def has(pool: Pool, name: str) -> bool:
        return bool(env.get(name) or pool.env.get(name))

    keyless = [name for name, pool in spec.pools.items()
               if not any(has(pool, n) for n in names) and not (
                   pool.runtime == "claude-code" and has(pool, SUBSCRIPTION))]
    if not keyless:
        return None
    return ("ANTHROPIC_API_KEY is not set: every task of pool "
            f"{', '.join(keyless)} would fail; export it (or ANTHROPIC_AUTH_TOKEN) in this "
            "shell, then run `swarm up` again")


def archive_warnings(spec: SwarmSpec) -> list[str]:
    """Librarian archives too short for their model to cache (at about 4 characters a
    token): every question then pays for the whole archive, and the API does not say."""
    from workers.pricing import cache_min_tokens

    found = []
    for name, pool in spec.pools.items():
        if pool.role != "librarian":
            continue
        files = {path for pattern in pool.archive for path in pool.workdir.glob(pattern)
                 if path.is_file()}
        chars = sum(path.stat().st_size for path in files)
        least = cache_min_tokens(pool.model)
        if chars // 4 < least:
            found.append(f"pool {name}: its archive is about {chars // 4:,} tokens, under the "
                         f"{least:,} {pool.model} caches at least: every question will pay "
                         "for the whole archive")
    return found


def persistence_warning(spec: SwarmSpec) -> str | None:
    """One line if the external Redis would lose queued work on a restart (and what to
    set), else None. The embedded Redis keeps an append-only file; it is not asked."""
    url = os.environ.get("SWARM_REDIS_URL") or (None if spec.redis == "embedded" else spec.redis)
    if url is None:
        return None
    try:
        target = RedisTarget.parse(url)
        client = target.sync(socket_timeout=5.0, socket_connect_timeout=5.0)
        if str(client.info("persistence").get("aof_enabled", "0")) == "1":
            return None
        try:
            points = str(client.config_get("save").get("save", "")).strip()
        except redis.RedisError:  # CONFIG turned off (a managed server): say what we know
            points = "?"
    except (redis.RedisError, ValueError, OSError):
        return None  # unreachable: `swarm up` says so itself
    if points not in ("", "?"):
        what = (f"keeps only snapshots (save {points}): a restart of that server loses "
                "what changed since the last one")
    else:
        what = ("has appendonly off" + (" and no save points" if points == "" else "") +
                ": a restart of that server loses every queued task and the cost history")
    return (f"Redis at {target} {what}; set 'appendonly yes' in its configuration "
            "(or CONFIG SET appendonly yes)")


def check_not_running(state: StateDir) -> None:
    pid = state.live_pid()
    if pid is not None:
        raise UpError(f"swarm '{state.name}' is already running (supervisor pid {pid})")


def run_foreground(spec: SwarmSpec, notify_fd: int | None = None, live: bool = True) -> int:
    from launcher.presence import HostTaken
    from launcher.supervisor import Supervisor

    state = state_of(spec)
    check_not_running(state)
    # neither this process nor the workers it forks import from here or a workdir
    isolate_imports(os.getcwd(), *(str(p.workdir) for p in spec.pools.values()))
    state.create()
    spec.logs.dir.mkdir(parents=True, exist_ok=True)
    claim_log_dir(spec)
    view = _live_view() if live and notify_fd is None and sys.stdout.isatty() else None
    _setup_logging(spec, console=notify_fd is None, live=view)
    notify = _notifier(notify_fd)
    embedded = None
    try:
        target, embedded = _connect(spec, state)
    except UpError as exc:
        notify(str(exc))
        raise
    if api_key_problem(spec):  # (`swarm up` refuses; the Python API's callers may not)
        logging.getLogger("swarm.supervisor").warning(str(api_key_problem(spec)))
    state.write_redis(target, embedded is not None)
    state.write_pid(os.getpid())
    state.write_info(spec=str(spec.source), logs=str(spec.logs.dir), name=spec.name,
                     host=spec.host_name)
    _preload(spec)
    sup = Supervisor(spec, state, target, embedded=embedded, on_ready=notify,
                     on_tick=view.update if view else None)
    try:
        sup.claim_host()
    except HostTaken as exc:
        notify(str(exc))
        if embedded:
            embedded.stop()
        state.clear_runtime()
        raise UpError(str(exc)) from None
    try:
        if view:
            with view.live:
                return sup.run()
        return sup.run()
    except BaseException:
        if embedded:
            embedded.stop()
        state.clear_runtime()
        raise


def _connect(spec: SwarmSpec, state: StateDir) -> tuple[RedisTarget, EmbeddedRedis | None]:
    env_url = os.environ.get("SWARM_REDIS_URL")
    url = env_url or (None if spec.redis == "embedded" else spec.redis)
    if url is None:
        embedded = EmbeddedRedis(state, spec.logs.dir / "redis.log")
        try:
            return embedded.start(), embedded
        except RedisStartError as exc:
            raise UpError(str(exc)) from None
    try:
        target = RedisTarget.parse(url)
    except ValueError as exc:
        raise UpError(f"{'SWARM_REDIS_URL' if env_url else 'redis'}: {exc}") from None
    try:
        target.sync(socket_timeout=5.0, socket_connect_timeout=5.0).ping()
    except (redis.RedisError, ValueError, OSError) as exc:
        raise UpError(f"cannot reach Redis at {target}: {exc}") from None
    return target, None


def _preload(spec: SwarmSpec) -> None:
    """Import the worker's heavy modules and load the price data once, here, so every
    fork shares them instead of each worker paying for them on its first task."""
    import anthropic

    import workers.agent
    import workers.tasks
    import workers.tools
    import workers.worker  # noqa: F401 - imported to be shared by the forks
    from workers.pricing import PriceBook, newest_sonnet

    book = PriceBook()
    for model in {p.model for p in spec.pools.values()} | {newest_sonnet() or ""}:
        book.knows(model)
    # building (and dropping) the SDK's HTTP client imports its transport and TLS modules
    anthropic.DefaultAsyncHttpxClient()
    # what the forks inherit is never scanned by their garbage collector, so its pages
    # stay shared instead of being copied into every worker (19 -> 51 MiB USS without)
    gc.collect()
    gc.freeze()


def _setup_logging(spec: SwarmSpec, console: bool, live: LiveView | None) -> None:
    logger = logging.getLogger("swarm")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers[:] = [rotating(spec.logs.dir / "supervisor.log", spec.logs,
                                   SUPERVISOR_FORMAT.format(swarm=spec.name))]
    if live is not None:
        logger.addHandler(live.handler)
    elif console:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)


def _notifier(fd: int | None) -> Callable[[str | None], None]:
    """What tells a detached `swarm up` that the workers are up (or why not)."""
    def notify(problem: str | None) -> None:
        if fd is None:
            return
        message = "ready\n" if problem is None else f"error: {problem}\n"
        with contextlib.suppress(OSError):  # the parent gave up waiting: nobody to tell
            os.write(fd, message.encode())
            os.close(fd)

    return notify


def _live_view() -> LiveView:
    from launcher.live import LiveView

    return LiveView()


def detach(spec: SwarmSpec, spec_path: Path, timeout: float) -> tuple[int, str | None]:
    """Start the supervisor in the background; returns (pid, problem or None)."""
    state = state_of(spec)
    check_not_running(state)
    state.create()
    read_fd, write_fd = os.pipe()
    fd = os.open(state.out_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        proc = subprocess.Popen(
            # -P: never the current folder on sys.path (a workdir may be it)
            [sys.executable, "-P", "-m", "launcher.cli", "up", str(spec_path),
             "--notify-fd", str(write_fd)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            pass_fds=[write_fd], start_new_session=True, close_fds=True,
        )
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    answer = b""
    try:
        while b"\n" not in answer:
            left = deadline - time.monotonic()
            if left <= 0:
                return proc.pid, f"workers not all up after {timeout:g}s (see swarm status)"
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_fd, 4096)
            if not chunk:
                code = proc.wait(timeout=5)
                return proc.pid, f"supervisor exited with code {code}: {_last_line(state.out_file)}"
            answer += chunk
    finally:
        os.close(read_fd)
    line = answer.decode().strip()
    return proc.pid, None if line == "ready" else line.removeprefix("error: ")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"
