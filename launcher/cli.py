"""The `swarm` command: its app (launcher/cli_common.py), the commands of the swarm's
life here (up, status, down, scale, logs, schema), those of its work in
launcher/cli_work.py. Each parses, calls the Python API (launcher/client.py), prints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from launcher import cli_mcp  # noqa: F401 - registers mcp, statusline
from launcher import cli_runs  # noqa: F401 - registers run, runs
from launcher import cli_tasks  # noqa: F401 - registers cancel, retry, purge
from launcher import cli_work  # noqa: F401 - registers submit, tasks, show, resume, cost
from launcher import control
from launcher.cli_common import (
    HostOption,
    SwarmOption,
    api_of,
    app,
    err,
    fail,
    load_or_fail,
    locate_or_fail,
    out,
    print_json,
    reader_for,
    redis_failure,
)

__all__ = ["app", "main"]


@app.command()
def up(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="The swarm spec (YAML).")],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background.")] = False,
    wait: Annotated[float, typer.Option(help="With -d: seconds to wait for the workers.")] = 60.0,
    notify_fd: Annotated[Optional[int], typer.Option(hidden=True)] = None,
) -> None:
    """Start the swarm described by SPEC and supervise it."""
    from launcher import up as up_mod

    spec = load_or_fail(spec_path)
    try:
        up_mod.check_shell_sandbox(spec)
        up_mod.check_claude_code(spec)
    except up_mod.UpError as exc:
        fail(str(exc), 2)
    for problem in (up_mod.api_key_problem(spec), up_mod.log_dir_problem(spec)):
        if problem:
            fail(problem, 2)
    if spec.redis == "embedded" and not os.environ.get("SWARM_REDIS_URL"):
        from launcher.redis_server import RedisStartError, choose

        try:
            choose()  # a SWARM_REDIS_SERVER that is not a usable server is said now
        except RedisStartError as exc:
            fail(str(exc), 2)
    for warning in [up_mod.persistence_warning(spec), *up_mod.archive_warnings(spec)]:
        if warning:
            err.print(f"swarm: warning: {warning}", markup=False, soft_wrap=True)
    try:
        if detach:
            pid, problem = up_mod.detach(spec, spec_path, wait)
            if problem:
                fail(f"swarm '{spec.name}' (pid {pid}): {problem}")
            total = sum(p.workers for p in spec.pools.values())
            out.print(f"swarm '{spec.name}' is up: {total} worker{'s' if total != 1 else ''}, "
                      f"supervisor pid {pid}. "
                      "See 'swarm status'; stop with 'swarm down'.")
            return
        code = up_mod.run_foreground(spec, notify_fd=notify_fd)
    except up_mod.UpError as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command()
def status(
    swarm: SwarmOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-W", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
) -> None:
    """Who is alive and busy: every host and worker, read from Redis."""
    import redis

    from launcher.connect import NotRunning
    from launcher.status import render

    api = reader_for(swarm)

    def snapshot() -> dict[str, object]:
        try:
            return api.status()
        except NotRunning as exc:
            fail(str(exc))
        except redis.RedisError as exc:
            fail(f"swarm '{api.name}' is not running (its Redis does not answer: {exc})")

    if not watch:
        view = snapshot()
        if as_json:
            print_json(view)
        else:
            out.print(render(view))
        return
    from rich.live import Live

    try:
        with Live(render(snapshot()), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(snapshot()), refresh=True)
    except KeyboardInterrupt:
        pass


@app.command()
def down(
    swarm: SwarmOption = None,
    now: Annotated[bool, typer.Option("--now", help="Do not wait for tasks to finish.")] = False,
    host: HostOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the swarm to stop.")] = 120.0,
) -> None:
    """Stop the swarm on every host (or one): workers finish or hand back their tasks,
    then everything exits. Returns once every host's supervisor has confirmed."""
    from launcher.client import SwarmError
    from launcher.connect import NotRunning, locate
    from launcher.state import NotFound

    try:
        found = locate(swarm)
    except (NotRunning, NotFound) as exc:
        fail(str(exc))
    api = api_of(found)
    here = found.state.read_info().get("host") if found.state else None
    pid = found.state.live_pid() if found.state else None
    private = found.state is not None and found.state.embedded()
    if found.state is not None and pid is None and (private or not api.hosts()):
        found.state.clear_runtime()
        fail(f"swarm '{found.name}' is not running")
    if private and pid is not None:  # one host, and its Redis goes with it
        import redis

        with contextlib.suppress(redis.RedisError):  # the signal does it anyway
            api.send(control.Down(now), here or "")
        os.kill(pid, signal.SIGQUIT if now else signal.SIGTERM)
        if not _wait_pid(pid, timeout):
            fail(f"swarm '{found.name}' did not stop within {timeout:g}s")
        out.print(f"swarm '{found.name}' is down.")
        return
    if pid is not None and host in (None, here):
        os.kill(pid, signal.SIGQUIT if now else signal.SIGTERM)  # this host's, at once
    try:
        stopped, silent, lost = api.down(now, host, timeout)
    except SwarmError as exc:
        fail(str(exc))
    if pid is not None and host in (None, here) and not _wait_pid(pid, timeout):
        silent.append(f"{here} (pid {pid})")
    said = "".join(f"; {h} was already lost" for h in lost)
    if silent:
        fail(f"swarm '{found.name}': no confirmation from {', '.join(silent)} within "
             f"{timeout:g}s" + (f" (stopped: {', '.join(stopped)})" if stopped else "") + said)
    where = f" on {host}" if host else ""
    hosts = f" ({len(stopped)} hosts: {', '.join(stopped)})" if len(stopped) > 1 else ""
    out.print(f"swarm '{found.name}' is down{where}{hosts}{said}.")


def _wait_pid(pid: int, timeout: float) -> bool:
    from launcher.state import pid_alive

    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@app.command()
def scale(
    pool: Annotated[str, typer.Argument(help="The pool to resize.")],
    workers: Annotated[int, typer.Argument(help="How many workers it should have.", min=0)],
    swarm: SwarmOption = None,
    host: HostOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the supervisor.")] = 10.0,
) -> None:
    """Add or retire workers of one pool on one host; no other worker is touched."""
    import redis

    from launcher.client import SwarmError

    found = locate_or_fail(swarm)
    api = api_of(found)
    here = found.state.read_info().get("host") if found.state else None
    try:
        target = api.pick_host(host, here or os.environ.get("SWARM_HOST") or _machine())
        before = api.scale(pool, workers, target, timeout)
    except SwarmError as exc:
        fail(str(exc), 2 if "has no pool" in str(exc) else 1)
    except redis.RedisError as exc:
        fail(f"swarm '{found.name}' is not running ({exc})")
    out.print(f"{pool}: {before} -> {workers} workers on {target}")


def _machine() -> str:
    from launcher.spec import machine_host

    return machine_host()


@app.command()
def logs(
    worker: Annotated[Optional[str], typer.Argument(
        help="A worker (haiku-1); default the supervisor.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines to show.")] = 50,
    swarm: SwarmOption = None,
) -> None:
    """Show a worker's log (or the supervisor's), on this host."""
    from launcher.client import SwarmError, log_file
    from launcher.logview import show

    try:
        path = log_file(worker, swarm)
    except SwarmError as exc:
        fail(str(exc), 2 if str(exc).startswith("no log for") else 1)
    try:
        show(path, lines, follow)
    except KeyboardInterrupt:
        pass


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec, for editors to validate swarm.yaml."""
    from launcher.spec import json_schema

    print_json(json_schema())


def main() -> None:
    import redis

    try:
        app()
    except BrokenPipeError:  # `swarm status | head`
        sys.stderr.close()
        sys.exit(1)
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as exc:
        err.print(f"swarm: {redis_failure(exc)}", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
