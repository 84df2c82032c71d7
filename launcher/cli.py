"""The `swarm` command. Each command is a thin layer: parse, call, print.

A user's mistake is one line on stderr and a non-zero exit (2 for bad input, 1 for a
swarm that is not there); never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold an API key
    help="Start and supervise a local swarm of Claude workers coordinated through Redis.",
)
err = Console(stderr=True, highlight=False, emoji=False)
out = Console(highlight=False, emoji=False, soft_wrap=True)  # a pipe gets whole lines

SwarmOption = Annotated[
    Optional[str], typer.Option("--swarm", "-s", help="Which swarm, if several are here.")
]


def print_json(data: object) -> None:
    """JSON for scripts: plain json.dumps (rich's highlighter costs ~120 ms on big output)."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"swarm: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(spec_path: Path):  # type: ignore[no-untyped-def]
    from launcher.spec import SpecError, load

    try:
        return load(spec_path)
    except SpecError as exc:
        fail(str(exc), 2)


def _locate(name: str | None):  # type: ignore[no-untyped-def]
    from launcher.connect import NotRunning, locate
    from launcher.state import NotFound

    try:
        return locate(name)
    except (NotFound, NotRunning) as exc:
        fail(str(exc))


@app.command()
def up(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="The swarm spec (YAML).")],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background.")] = False,
    wait: Annotated[float, typer.Option(help="With -d: seconds to wait for the workers.")] = 60.0,
    notify_fd: Annotated[Optional[int], typer.Option(hidden=True)] = None,
) -> None:
    """Start the swarm described by SPEC and supervise it."""
    from launcher import up as up_mod

    spec = _load(spec_path)
    try:
        up_mod.check_shell_sandbox(spec)
    except up_mod.UpError as exc:
        fail(str(exc), 2)
    warning = up_mod.persistence_warning(spec)
    if warning:
        err.print(f"swarm: warning: {warning}", markup=False, soft_wrap=True)
    try:
        if detach:
            pid, problem = up_mod.detach(spec, spec_path, wait)
            if problem:
                fail(f"swarm '{spec.name}' (pid {pid}): {problem}")
            total = sum(p.workers for p in spec.pools.values())
            out.print(f"swarm '{spec.name}' is up: {total} workers, supervisor pid {pid}. "
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
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
) -> None:
    """Who is alive and busy: every worker slot, read from Redis."""
    import redis

    from launcher.connect import NotRunning
    from launcher.status import collect, render

    found = _locate(swarm)
    client = found.client()

    def snapshot():  # type: ignore[no-untyped-def]
        try:
            return collect(client, found.name)
        except NotRunning as exc:
            fail(str(exc))
        except redis.RedisError as exc:
            fail(f"swarm '{found.name}' is not running (its Redis at {found.target} "
                 f"does not answer: {exc})")

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


HostOption = Annotated[
    Optional[str], typer.Option("--host", help="Which host of the swarm (default: every "
                                "host for down; this one, or the only one, for scale).")
]


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
    api = _api_of(found)
    here = found.state.read_info().get("host") if found.state else None
    pid = found.state.live_pid() if found.state else None
    private = found.state is not None and found.state.embedded()
    if found.state is not None and pid is None and (private or not api.hosts()):
        found.state.clear_runtime()
        fail(f"swarm '{found.name}' is not running")
    if private and pid is not None:  # one host, and its Redis goes with it
        _send_control(api, here or "", {"cmd": "down", "now": now})
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


def _send_control(api, host: str, command: dict) -> None:  # type: ignore[no-untyped-def]
    import redis

    from workers import keys

    try:
        api.redis.rpush(keys.host_control(api.name, host), json.dumps(command))
    except redis.RedisError:
        pass  # the signal does it


def _wait_pid(pid: int, timeout: float) -> bool:
    from launcher.state import pid_alive

    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _api_of(found):  # type: ignore[no-untyped-def]
    from launcher.client import Swarm

    return Swarm(found.name, found.client())


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

    found = _locate(swarm)
    api = _api_of(found)
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
    worker: Annotated[Optional[str], typer.Argument(help="A worker id; default the supervisor.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines to show.")] = 50,
    swarm: SwarmOption = None,
) -> None:
    """Show a worker's log (or the supervisor's)."""
    from launcher.logview import show
    from launcher.state import NotFound, find

    try:
        state = find(swarm)
    except NotFound as exc:
        fail(str(exc))
    logs_dir = state.read_info().get("logs")
    if not logs_dir:
        fail(f"swarm '{state.name}' has no log folder recorded; has it ever run?")
    path = Path(logs_dir) / f"{worker or 'supervisor'}.log"
    if not path.exists():
        known = sorted(p.stem for p in Path(logs_dir).glob("*.log"))
        fail(f"no log for {worker or 'supervisor'!r} in {logs_dir} (have: {', '.join(known)})", 2)
    try:
        show(path, lines, follow)
    except KeyboardInterrupt:
        pass


def _swarm_api(name: str | None):  # type: ignore[no-untyped-def]
    from launcher.client import Swarm

    found = _locate(name)
    return Swarm(found.name, found.client())


@app.command()
def submit(
    text: Annotated[str, typer.Argument(help="What the worker should do.")],
    pool: Annotated[Optional[str], typer.Option("--pool", "-p", help="Which pool.")] = None,
    files: Annotated[Optional[list[str]], typer.Option("--file", "-f", help="A file the task is about (repeatable).")] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait for the finding and print its result.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: seconds to wait.")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """Queue a task; prints its id (or, with --wait, its finding's result)."""
    from launcher.client import SubmitError

    api = _swarm_api(swarm)
    try:
        task_id = api.submit(text, pool=pool, files=files or [])
    except SubmitError as exc:
        fail(str(exc), 2)
    if not wait:
        print_json({"task_id": task_id}) if as_json else print(task_id)
        return
    try:
        finding = api.wait(task_id, timeout)
    except TimeoutError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"stopped waiting; the task {task_id} is still queued or running", 130)
    if as_json:
        print_json(finding)
    else:
        if finding.get("status") == "failed":
            fail(f"task {task_id} failed: {finding.get('error')}")
        print(finding.get("result", ""))
    if finding.get("status") == "failed":
        raise typer.Exit(1)


@app.command()
def tasks(
    state: Annotated[Optional[str], typer.Option("--state", help="queued, running, done, failed, dead, elsewhere")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """List tasks, newest first."""
    from rich.table import Table

    rows = _swarm_api(swarm).tasks(state, limit)
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("TASK", "POOL", "STATE", "ATTEMPTS", "WORKER", "SUBMITTED", "FINDING", "ERROR"):
        table.add_column(column, overflow="fold" if column == "ERROR" else "ellipsis")
    for row in rows:
        submitted = time.strftime("%H:%M:%S", time.localtime(float(row.get("submitted", 0))))
        table.add_row(row["id"], row.get("pool", ""), row.get("state", ""),
                      row.get("attempts", "0"), row.get("worker", ""), submitted,
                      row.get("finding", ""), row.get("error", ""))
    out.print(table)


@app.command()
def show(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """Show one task, with its finding."""
    record = _swarm_api(swarm).task(task_id)
    if record is None:
        fail(f"no task {task_id!r}", 2)
    if as_json:
        print_json(record)
        return
    finding = record.pop("finding") or {}
    for key in ("id", "state", "pool", "attempts", "worker", "claimed", "error", "payload"):
        if record.get(key) not in (None, ""):
            out.print(f"[bold]{key}:[/] {record[key]}", markup=True, highlight=False)
    if finding:
        out.print(f"[bold]finding:[/] {finding.get('finding_id')}", markup=True)
        for key in ("status", "worker_id", "model", "tokens_used", "cost", "files_changed",
                    "error", "result"):
            out.print(f"  {key}: {finding.get(key)}", markup=False)


@app.command()
def resume(swarm: SwarmOption = None) -> None:
    """Let workers take new work again after a pause (e.g. the API spend limit)."""
    from workers import keys

    api = _swarm_api(swarm)
    reason = api.redis.getdel(keys.paused(api.name))
    out.print(f"resumed (was paused: {reason})" if reason else "the swarm was not paused")


@app.command()
def cost(
    by: Annotated[str, typer.Option("--by", help="worker, host, pool, model or task")] = "worker",
    since: Annotated[Optional[str], typer.Option("--since", help="Only the last DURATION (e.g. 1h).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="With --by task: how many.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """What the swarm spent: per worker with pool and model subtotals, and what the same
    tokens would have cost on the reference model."""
    from launcher import costs
    from launcher.units import parse_duration
    from workers import keys

    if by not in costs.DIMS:
        fail(f"--by must be one of {', '.join(costs.DIMS)}, not {by!r}", 2)
    try:
        seconds = None if since is None else parse_duration(since)
    except ValueError as exc:
        fail(f"--since {exc}", 2)
    found = _locate(swarm)
    client = found.client()
    meta = client.hgetall(keys.meta(found.name))
    if by == "task":
        rows = costs.rows_by_task(client, found.name, limit, seconds)
    else:
        rows = costs.rows_by(costs.read_counters(client, found.name, seconds), by)
    reference = meta.get("reference_model", "")
    source = meta.get("price_source", "unknown")
    if as_json:
        print_json({"swarm": found.name, "by": by, "since_seconds": seconds,
                    "reference_model": reference, "price_source": source,
                    "rows": [r.as_dict() for r in rows]})
    elif as_csv:
        sys.stdout.write(costs.to_csv(rows))
    else:
        out.print(costs.render(rows, reference, source, by))


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
        err.print(f"swarm: Redis: {exc}", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
