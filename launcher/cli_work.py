"""The `swarm` commands about its work and what it cost: submit, tasks, show, resume,
cost. Each parses, calls the Python API (launcher/client.py), prints."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

import typer

from workers import ledger_format
from workers.states import TaskState
from launcher.cli_common import SwarmOption, api_for, app, fail, out, print_json


@app.command()
def submit(
    text: Annotated[str, typer.Argument(help="What the worker should do.")],
    pool: Annotated[Optional[str], typer.Option("--pool", "-p", help="Which pool.")] = None,
    files: Annotated[Optional[list[str]], typer.Option(
        "--file", "-f", help="A file the task is about (repeatable).")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", "-w", help="Wait for the finding and print its result.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: seconds to wait.")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """Queue a task; prints its id (or, with --wait, its finding's result)."""
    from launcher.client import SubmitError

    api = api_for(swarm)
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
    state: Annotated[Optional[str], typer.Option(
        "--state", help=", ".join(TaskState))] = None,
    limit: Annotated[int, typer.Option(
        "--limit", "-n", help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """List tasks, newest first."""
    from rich.table import Table

    rows = api_for(swarm).tasks(state, limit)
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
    task_id: Annotated[str, typer.Argument(help="The task's id, or a run's.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """Show one task, with its finding; or a run (run_...) as the tree of its tasks."""
    api = api_for(swarm)
    if task_id.startswith("run_"):
        info = api.run_info(task_id)
        if info is not None:
            if as_json:
                print_json(info)
            else:
                from launcher.cli_runs import show_run

                show_run(info)
            return
    record = api.task(task_id)
    if record is None:
        fail(f"no task {task_id!r}", 2)
    if as_json:
        print_json(record)
        return
    finding = record.pop("finding") or {}
    for key in ("id", "state", "pool", "attempts", "worker", "claimed", "error", "payload"):
        if record.get(key) not in (None, ""):
            out.print(f"[bold]{key}:[/] {record[key]}", markup=True, highlight=False)
    hit = ledger_format.hit_ratio(int(record.get("input_side") or 0) -
                                  int(record.get("cache_read") or 0), 0,
                                  int(record.get("cache_read") or 0))
    if hit is not None:
        saved = int(record.get("nocache_nano") or 0) - int(record.get("nano") or 0)
        out.print(f"[bold]cache:[/] {hit * 100:.0f}% of input read from the cache, "
                  f"saved ${saved / 1e9:.6f}", markup=True, highlight=False)
    if finding:
        out.print(f"[bold]finding:[/] {finding.get('finding_id')}", markup=True)
        for key in ("status", "worker_id", "model", "tokens_used", "cost", "stop_reason",
                    "truncated", "files_changed", "error", "result"):
            out.print(f"  {key}: {finding.get(key)}", markup=False)


@app.command()
def resume(swarm: SwarmOption = None) -> None:
    """Let workers take new work again after a pause (e.g. the API spend limit)."""
    reason = api_for(swarm).resume()
    out.print(f"resumed (was paused: {reason})" if reason else "the swarm was not paused")


@app.command()
def cost(
    by: Annotated[str, typer.Option(
        "--by", help="worker, host, pool, model, run or task")] = "worker",
    since: Annotated[Optional[str], typer.Option(
        "--since", help="Only the last DURATION (e.g. 1h).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="With --by task: how many.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """What the swarm spent: per worker with pool and model subtotals, and what the same
    tokens would have cost on the reference model."""
    from launcher import costs
    from launcher.client import SwarmError
    from launcher.units import parse_duration

    if by not in costs.DIMS:
        fail(f"--by must be one of {', '.join(costs.DIMS)}, not {by!r}", 2)
    try:
        seconds = None if since is None else parse_duration(since)
    except ValueError as exc:
        fail(f"--since {exc}", 2)
    api = api_for(swarm)
    try:
        report = api.cost(by, seconds, limit)
    except SwarmError as exc:
        fail(str(exc), 2)
    rows, reference, source = report["rows"], report["reference_model"], report["price_source"]
    if as_json:
        print_json({"swarm": api.name, "by": by, "since_seconds": seconds,
                    "reference_model": reference, "price_source": source,
                    "rows": [r.as_dict() for r in rows]})
    elif as_csv:
        sys.stdout.write(costs.to_csv(rows))
    else:
        out.print(costs.render(rows, reference, source, by))
