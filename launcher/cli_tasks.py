"""The `swarm` commands that change tasks and workers while the swarm runs: cancel,
retry, purge (as Celery's revoke and purge, RQ's requeue and empty), restart and reload
(as supervisorctl's and pm2's). Each parses, calls the Python API, prints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Optional

import typer

from launcher.cli_common import HostOption, SwarmOption, api_for, app, fail, out


@app.command()
def cancel(
    task_ids: Annotated[list[str], typer.Argument(help="Tasks (any unique start of an id).")],
    swarm: SwarmOption = None,
) -> None:
    """Cancel tasks: a queued one at once, a running one by its worker within a beat."""
    said = {"queued": "cancelled", "running": "running: its worker stops it"}
    _each(task_ids, api_for(swarm).cancel,
          lambda was: said.get(was, f"not cancelled: it is {was}"))


@app.command()
def retry(
    task_ids: Annotated[list[str], typer.Argument(help="Finished tasks to run again.")],
    swarm: SwarmOption = None,
) -> None:
    """Run finished tasks again (failed, dead-lettered, cancelled...), attempts from 0."""
    _each(task_ids, api_for(swarm).retry, lambda was: f"queued again (was {was})")


def _each(task_ids: list[str], act: Callable[[str], str], said: Callable[[str], str]) -> None:
    """``act`` on each task, a line for each; exit 2 if any could not be done."""
    from launcher.client import SwarmError

    failed = False
    for given in task_ids:
        try:
            line = said(act(given))
        except SwarmError as exc:
            line, failed = str(exc), True
        out.print(f"{given}: {line}", markup=False, highlight=False)
    if failed:
        raise typer.Exit(2)


@app.command()
def purge(
    state: Annotated[Optional[list[str]], typer.Option(
        "--state", help="Only tasks that finished so (repeatable): done, failed, dead, "
        "cancelled, handed_back. Default: all finished.")] = None,
    older_than: Annotated[Optional[str], typer.Option(
        "--older-than", help="Only those finished longer ago than this (e.g. 7d, 12h).")] = None,
    queued: Annotated[bool, typer.Option(
        "--queued", help="Instead: cancel every queued task (Celery's purge).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """Forget finished tasks (records, payloads, findings), or cancel the queued ones."""
    from launcher.client import SwarmError
    from launcher.units import parse_duration

    api = api_for(swarm)
    if queued:
        waiting = api.tasks("queued", limit=1_000_000)
        if not yes and not typer.confirm(f"cancel {len(waiting)} queued task(s)?"):
            raise typer.Exit(1)
        done = sum(api.cancel(t["id"]) == "queued" for t in waiting)
        out.print(f"cancelled {done} queued task(s)", markup=False, highlight=False)
        return
    try:
        seconds = None if older_than is None else parse_duration(older_than)
    except ValueError as exc:
        fail(f"--older-than {exc}", 2)
    what = ", ".join(state) if state else "finished"
    if not yes and not typer.confirm(f"forget every {what} task"
                                     + (f" older than {older_than}" if older_than else "") + "?"):
        raise typer.Exit(1)
    try:
        gone = api.purge(set(state) if state else None, seconds)
    except SwarmError as exc:
        fail(str(exc), 2)
    out.print(f"purged {gone} task(s)", markup=False, highlight=False)


@app.command()
def restart(
    target: Annotated[Optional[str], typer.Argument(
        help="A pool or a worker (haiku-1); nothing: every worker.")] = None,
    host: HostOption = None,
    swarm: SwarmOption = None,
) -> None:
    """Restart workers: each finishes its tasks, then starts again at once (a worker
    that gave up, FATAL, starts again too)."""
    from launcher.client import SwarmError

    try:
        hosts = api_for(swarm).restart(target, host)
    except SwarmError as exc:
        fail(str(exc), 2)
    out.print(f"restarting {target or 'every worker'} on {', '.join(hosts)}", markup=False,
              highlight=False)


@app.command()
def reload(
    host: HostOption = None,
    swarm: SwarmOption = None,
) -> None:
    """Apply the spec file as it is now, without stopping work: worker counts, budgets,
    new and removed pools; the workers of pools whose settings changed restart."""
    from launcher.client import SwarmError
    from launcher.spec import SpecError, load
    from launcher.state import NotFound, find

    api = api_for(swarm)
    try:
        spec_path = find(api.name).read_info().get("spec")
    except NotFound:  # a swarm on a Redis server, started elsewhere
        spec_path = None
    if spec_path:  # said here at once; the supervisor checks again before it applies
        try:
            load(spec_path)
        except SpecError as exc:
            fail(f"not reloaded: {exc}", 2)
    try:
        hosts = api.reload(host)
    except SwarmError as exc:
        fail(str(exc), 2)
    out.print(f"reloading the spec on {', '.join(hosts)} (see `swarm logs`)", markup=False,
              highlight=False)
