"""The `swarm` commands about its work and what it cost: submit, tasks, show, resume,
cost. Each parses, calls the Python API (launcher/client.py), prints."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

import typer

from workers import ledger_format
from workers.states import TaskState
from workers.tool_base import one_line
from launcher.cli_common import (SwarmOption, api_for, app, err, fail, out, print_json,
                                  reader_for)


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
    """Queue a task (TEXT, or - to read it from stdin); prints its id (or, with --wait,
    its finding's result)."""
    from launcher.client import SubmitError

    if text == "-":
        if sys.stdin is None or sys.stdin.isatty():
            fail("submit -: the task's text comes from stdin, and stdin is a terminal", 2)
        text = sys.stdin.read()
    api = api_for(swarm)
    try:
        task_id = api.submit(text, pool=pool, files=files or [])
    except SubmitError as exc:
        fail(str(exc), 2)
    paused = api.paused(pool)
    if paused:
        err.print(f"swarm: queued, but the swarm takes no new work now ({paused}); it runs "
                  "after `swarm resume`", markup=False, soft_wrap=True)
    if not wait:
        print_json({"task_id": task_id}) if as_json else print(task_id)
        return
    try:
        finding = api.wait(task_id, timeout)
    except TimeoutError as exc:
        paused = api.paused(pool)
        fail(f"{exc}" + (f"; the swarm is paused: {paused}" if paused else ""))
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
    """List tasks, newest first: id (whole: any unique prefix of it names the task in
    `swarm show` and the task commands), pool, state, attempts, when, what."""
    from launcher import columns
    from launcher.client import SwarmError

    try:
        rows = reader_for(swarm).tasks(state, limit)
    except SwarmError as exc:
        fail(str(exc), 2)
    if as_json:
        print_json(rows)
        return
    headers = ["TASK", "POOL", "STATE", "ATTEMPTS", "SUBMITTED", "DESCRIPTION / ERROR"]
    cells = [[row["id"], row.get("pool", ""), row.get("state", ""), str(row.get("attempts", 0)),
              time.strftime("%m-%d %H:%M:%S", time.localtime(float(row.get("submitted", 0)))),
              one_line(row.get("error") if row.get("state") in ("failed", "dead") and
                    row.get("error") else row.get("description", ""), 70)] for row in rows]
    sizes = columns.widths(headers, cells)
    out.print(columns.line(headers, sizes, {3}), style="bold", highlight=False, markup=False)
    for cell in cells:
        out.print(columns.line(cell, sizes, {3}), highlight=False, markup=False)
    if not rows:
        out.print(f"(no {state + ' ' if state else ''}tasks)", highlight=False, markup=False)



@app.command()
def show(
    task_id: Annotated[str, typer.Argument(help="The task's id, or a run's.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """Show one task, with its finding; or a run (run_...) as the tree of its tasks. Any
    unique start of an id will do."""
    from launcher.client import SwarmError

    api = reader_for(swarm)
    try:
        task_id = api.resolve(task_id)
    except SwarmError as exc:
        fail(str(exc), 2)
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
    from launcher.client import SwarmError

    try:
        reason = api_for(swarm).resume()
    except SwarmError as exc:
        fail(str(exc))
    out.print(f"resumed (was paused: {reason})" if reason else "the swarm was not paused",
              markup=False, highlight=False)


@app.command()
def budget(
    usd: Annotated[Optional[str], typer.Argument(
        help="The new budget in USD, or 'none' to lift it; nothing: show them.")] = None,
    pool: Annotated[Optional[str], typer.Option("--pool", "-p", help="A pool's budget.")] = None,
    swarm: SwarmOption = None,
) -> None:
    """Show the budgets and their spend, or set one while the swarm runs (until the next
    `swarm up`, which reads the spec's again). Raising a spent budget lets work go on."""
    from launcher.client import SwarmError

    api = reader_for(swarm) if usd is None else api_for(swarm)
    if usd is None:
        for row in api.budgets():
            who = f"pool {row['pool']}" if row["pool"] else "the swarm"
            cap = f"${row['usd']:g}" if row["usd"] is not None else "none"
            out.print(f"{who}: ${row['spent_usd']:.6f} spent, budget {cap}"
                      + (f"  PAUSED: {row['paused']}" if row["paused"] else ""),
                      markup=False, highlight=False)
        return
    try:
        value = None if usd.lower() == "none" else float(usd)
    except ValueError:
        fail(f"budget: {usd!r} is not a number of USD (or 'none')", 2)
    try:
        before = api.set_budget(value, pool)
    except SwarmError as exc:
        fail(str(exc), 2)
    who = f"pool {pool}'s" if pool else "the swarm's"
    out.print(f"{who} budget: {'none' if value is None else f'${value:g}'} (was "
              f"{'none' if before is None else f'${before:g}'})", markup=False, highlight=False)


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
    if as_json and as_csv:
        fail("--json and --csv: choose one", 2)
    try:
        seconds = None if since is None else parse_duration(since)
    except ValueError as exc:
        fail(f"--since {exc}", 2)
    api = reader_for(swarm)
    try:
        report = api.cost(by, seconds, limit)
    except SwarmError as exc:
        fail(str(exc), 2)
    rows, reference, source = report["rows"], report["reference_model"], report["price_source"]
    if as_json:
        print_json({"swarm": api.name, "by": by, "since_seconds": seconds,
                    "reference_model": reference, "price_source": source,
                    "covered_by_subscription": report.get("subscription", []),
                    "rows": [r.as_dict() for r in rows]})
    elif as_csv:
        sys.stdout.write(costs.to_csv(rows))
    else:
        out.print(costs.render(rows, reference, source, by))
        for pool in report.get("subscription", []):
            out.print(f"pool {pool}: covered by a Claude subscription (CLAUDE_CODE_OAUTH_TOKEN): "
                      "its figures are list prices for its tokens, not a bill")
