"""`swarm status`: what the supervisor and every worker last reported, from Redis only.

Two round trips whatever the size of the swarm: the swarm's own hashes, then every
worker's report and heartbeat TTL in one pipeline.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from launcher import columns
from launcher.connect import NotRunning
from launcher.units import format_duration, format_size
from workers import keys

# Supervisor states that override what the worker last said about itself.
_SUPERVISOR_WINS = {"hung", "killing", "restarting", "fatal", "stopping", "retiring", "stopped"}
STALE_AFTER = 15.0  # a supervisor silent this long is reported as not responding


def collect(client: redis.Redis, name: str) -> dict[str, Any]:
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.meta(name))
    pipe.hgetall(keys.slots(name))
    pipe.hgetall(keys.pools(name))
    pipe.hgetall(keys.counts(name))
    pipe.get(keys.paused(name))
    meta, slots, pools, counts, paused = pipe.execute()
    pool_pauses = dict(zip(pools, client.mget([keys.paused(name, p) for p in pools]))) if pools else {}
    if not meta or meta.get("state") == "stopped":
        raise NotRunning(f"swarm '{name}' is not running")
    ids = sorted(slots, key=_slot_order)
    pipe = client.pipeline(transaction=False)
    for worker_id in ids:
        pipe.hgetall(keys.worker(name, worker_id))
        pipe.pttl(keys.heartbeat(worker_id))
    replies = pipe.execute()
    now = time.time()
    workers = []
    for i, worker_id in enumerate(ids):
        workers.append(_row(worker_id, json.loads(slots[worker_id]), replies[2 * i],
                            replies[2 * i + 1]))
    age = now - float(meta.get("tick", meta.get("started", now)))
    return {
        "swarm": name,
        "state": meta.get("state", "unknown"),
        "supervisor_pid": int(meta.get("pid", 0)),
        "host": meta.get("host", ""),
        "started": float(meta.get("started", 0)),
        "supervisor_seen_ago": round(age, 3),
        "responding": age < STALE_AFTER,
        "pools": {pool: int(n) for pool, n in pools.items()},
        "paused": paused,
        "paused_pools": {p: why for p, why in pool_pauses.items() if why},
        "tasks": {state: int(counts.get(state, 0))
                  for state in ("queued", "running", "done", "failed", "dead", "elsewhere")},
        "workers": workers,
    }


def _slot_order(worker_id: str) -> tuple[str, int]:
    pool, _, index = worker_id.rpartition("-")
    return pool, int(index) if index.isdigit() else 0


def _row(worker_id: str, slot: dict[str, Any], report: dict[str, str], pttl: int) -> dict[str, Any]:
    expiry = float(slot.get("expiry", 0))
    beating = pttl is not None and pttl > 0
    current = report.get("pid") == str(slot.get("pid")) and slot.get("pid") is not None
    state = slot["state"]
    if state not in _SUPERVISOR_WINS:
        state = report.get("state", "starting") if (beating and current) else "starting"
    return {
        "worker": worker_id,
        "pool": slot["pool"],
        "pid": slot.get("pid"),
        "generation": slot.get("generation", 0),
        "state": state,
        "heartbeat_age": round(expiry - pttl / 1000, 3) if beating else None,
        "task": (report.get("task") or None) if current else None,
        "done": int(report.get("done", 0)),
        "failed": int(report.get("failed", 0)),
        "restarts": slot.get("restarts", 0),
        "rss": slot.get("rss", 0),
        "cpu": slot.get("cpu", 0.0),
        "last_exit": slot.get("last_exit") or None,
    }


_STYLE = {
    "idle": "green", "busy": "cyan", "starting": "yellow", "running": "green",
    "hung": "red", "killing": "red", "restarting": "yellow", "fatal": "bold red",
    "stopping": "magenta", "retiring": "magenta", "stopped": "dim",
}


_COLUMNS = ("WORKER", "PID", "STATE", "BEAT", "TASK", "DONE", "FAILED", "RESTARTS", "RSS",
            "CPU%", "LAST EXIT")
_RIGHT = {i for i, c in enumerate(_COLUMNS)
          if c in ("PID", "BEAT", "DONE", "FAILED", "RESTARTS", "RSS", "CPU%")}


def render(view: dict[str, Any]) -> Any:
    """The status table, laid out by ``launcher.columns`` (rich.Table spends ~130 ms
    measuring the cells of 200 slots); rich still prints the colours."""
    from rich.console import Group
    from rich.text import Text

    counts: dict[str, int] = {}
    for row in view["workers"]:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no workers"
    health = "" if view["responding"] else (
        f"  [bold red]supervisor not responding ({view['supervisor_seen_ago']:.0f}s)[/]"
    )
    head = Text.from_markup(
        f"[bold]swarm {view['swarm']}[/] {view['state']}  supervisor pid "
        f"{view['supervisor_pid']}  {summary}{health}"
    )
    t = view["tasks"]
    tasks_line = Text(
        f"tasks: {t['queued']} queued, {t['running']} in flight, {t['done']} done, "
        f"{t['failed']} failed ({t['dead']} dead-lettered)"
    )
    if view["paused"]:
        tasks_line.append(f"  PAUSED: {view['paused']}", style="bold red")
    for pool_name, why in view.get("paused_pools", {}).items():
        tasks_line.append(f"  PAUSED {pool_name}: {why}", style="bold red")
    cells = [[row["worker"], str(row["pid"] or "-"), row["state"],
              "-" if row["heartbeat_age"] is None else format_duration(row["heartbeat_age"]),
              row["task"] or "-", str(row["done"]), str(row["failed"]), str(row["restarts"]),
              format_size(row["rss"]) if row["rss"] else "-", f"{row['cpu']:.1f}",
              row["last_exit"] or ""] for row in view["workers"]]
    sizes = columns.widths(_COLUMNS, cells)
    lines = [Text(columns.line(_COLUMNS, sizes, _RIGHT), style="bold")]
    pool = None
    for row, cell in zip(view["workers"], cells):
        if row["pool"] != pool:
            pool = row["pool"]
            lines.append(Text(f"{pool} ({view['pools'].get(pool, '?')} wanted)", style="bold"))
        line = Text(columns.line(cell, sizes, _RIGHT))
        start = sum(sizes[:2]) + 4
        line.stylize(_STYLE.get(row["state"], ""), start, start + len(row["state"]))
        lines.append(line)
    return Group(head, tasks_line, *lines)

