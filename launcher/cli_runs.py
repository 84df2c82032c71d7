"""The `swarm` commands about runs (a goal for a lead): run, runs, and the tree `swarm
show RUN` prints. Each parses, calls the Python API (launcher/client.py), prints."""

from __future__ import annotations

import time
from typing import Annotated, Any, Optional

import typer

from launcher.cli_common import SwarmOption, api_for, app, fail, out, print_json, reader_for
from workers.tool_base import one_line


@app.command()
def run(
    goal: Annotated[str, typer.Argument(help="What the lead should reach.")],
    pool: Annotated[Optional[str], typer.Option(
        "--pool", "-p", help="Which lead pool (default the first).")] = None,
    budget: Annotated[Optional[float], typer.Option(
        "--budget", help="USD the run may spend, its lead and its tasks (default the "
        "lead pool's run.budget_usd).")] = None,
    max_tasks: Annotated[Optional[int], typer.Option(
        "--max-tasks", help="Tasks it may hand out.")] = None,
    max_in_flight: Annotated[Optional[int], typer.Option(
        "--max-in-flight", help="Tasks running at once.")] = None,
    files: Annotated[Optional[list[str]], typer.Option(
        "--file", "-f", help="A file the goal is about (repeatable).")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", "-w", help="Show progress, then the synthesis.")] = False,
    timeout: Annotated[Optional[float], typer.Option(
        help="With --wait: seconds to wait (default: as long as it runs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """Give the swarm a goal: a lead plans it, hands tasks to the workers, and writes a
    synthesis citing their findings, within the run's budget. Prints the run's id."""
    from launcher.client import SubmitError, SwarmError

    api = api_for(swarm)
    try:
        run_id = api.run(goal, pool, budget, max_tasks, max_in_flight, files or [])
    except SubmitError as exc:
        fail(str(exc), 2)
    if not wait:
        print_json({"run_id": run_id}) if as_json else print(run_id)
        return
    if not as_json:
        out.print(f"run {run_id}", highlight=False)
    try:
        info = api.wait_run(run_id, timeout, None if as_json else _progress)
    except TimeoutError as exc:
        fail(f"{exc}; it goes on (swarm show {run_id})")
    except SwarmError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"stopped waiting; the run {run_id} goes on (swarm show {run_id})", 130)
    if as_json:
        print_json(info)
    else:
        _print_result(info)
    if info["state"] == "failed":
        raise typer.Exit(1)


@app.command()
def runs(
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    swarm: SwarmOption = None,
) -> None:
    """List runs, newest first: state, tasks back of handed out, spend and budget."""
    from launcher import columns

    rows = reader_for(swarm).runs(limit)
    if as_json:
        print_json(rows)
        return
    headers = ["RUN", "STATE", "TASKS", "IN FLIGHT", "SPENT", "BUDGET", "STARTED", "GOAL"]
    cells = [[r["id"], r.get("state", ""), f"{r['finished']}/{r['handed']}",
              str(r["in_flight"]), f"${r['spent_usd']:.6f}",
              f"${r['budget_usd']:.2f}" if r["budget_usd"] else "-",
              time.strftime("%m-%d %H:%M:%S", time.localtime(float(r.get("created") or 0))),
              one_line(r.get("goal", ""), 60)] for r in rows]
    sizes = columns.widths(headers, cells)
    out.print(columns.line(headers, sizes, {2, 3, 4, 5}), style="bold", highlight=False)
    for cell in cells:
        out.print(columns.line(cell, sizes, {2, 3, 4, 5}), highlight=False, markup=False)
    if not rows:
        out.print("(no runs yet: swarm run GOAL)", highlight=False)


def show_run(info: dict[str, Any]) -> None:
    """`swarm show RUN`: the run, then its tasks as a tree."""
    from rich.tree import Tree

    budget = f" of ${info['budget_usd']:.6f}" if info["budget_usd"] else ""
    root = Tree(f"[bold]{info['id']}[/] {info.get('state', '')} · pool {info.get('pool', '')}"
                f" · spent ${info['spent_usd']:.6f}{budget} · tasks {info['finished']}/"
                f"{info['handed']}" + (f" · limit: {info['limit']}" if info.get("limit") else ""))
    root.add(f"goal: {one_line(info.get('goal', ''), 200)}")
    for task in info["tasks"]:
        evidence = ("" if task["tool_calls"] is None else f" · {task['tool_calls']} tool calls"
                    + (f" · changed {', '.join(task['files_changed'])}"
                       if task["files_changed"] else ""))
        node = root.add(f"{task['id']} · {task['pool']} · {task['state']} · attempts "
                        f"{task['attempts']} · ${task['cost_usd']:.6f}{evidence}")
        if task["finding"]:
            node.add(f"{task['finding']}: {one_line(task['result'], 160)}")
        elif task["error"]:
            node.add(f"error: {one_line(task['error'], 160)}")
    out.print(root, highlight=False)
    result = info.get("result")
    if result:
        out.print(f"[bold]result:[/] {result.get('finding_id')} (cites "
                  f"{', '.join(result.get('citations') or []) or 'nothing'})", highlight=False)
        out.print(str(result.get("result", "")), markup=False, highlight=False)


def _progress(run: dict[str, Any]) -> None:
    budget = f" of ${run['budget_usd']:.2f}" if run["budget_usd"] else ""
    out.print(f"{time.strftime('%H:%M:%S')} {run['state']}: handed out {run['handed']} · "
              f"findings back {run['finished']} · in flight {run['in_flight']} · spent "
              f"${run['spent_usd']:.6f}{budget}", highlight=False, markup=False)


def _print_result(info: dict[str, Any]) -> None:
    result = info.get("result") or {}
    if info["state"] == "failed":
        fail(f"run {info['id']} failed: {result.get('error') or info.get('error') or '?'}")
    out.print(f"\n{info['state']}: ${info['spent_usd']:.6f} spent, {info['handed']} tasks; "
              f"cites {', '.join(result.get('citations') or []) or 'nothing'}\n",
              highlight=False, markup=False)
    out.print(str(result.get("result", "")), markup=False, highlight=False)

