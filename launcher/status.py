"""`swarm status`: what every host's supervisor and every worker last reported, from
Redis only.

Three round trips whatever the size of the swarm: the swarm's own hashes, then each
host's lease, slots and pools, then every worker's report and lease TTL. A host whose
lease expired (its supervisor silent for 10 s: a host that lost power) is shown as lost,
with its workers as it last saw them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from launcher import columns
from launcher.connect import NotRunning
from launcher.redis_server import describe, server_line
from launcher.units import format_size
from launcher.slot import SUPERVISOR_WINS, SlotState
from workers import keys
from workers.states import TaskState, WorkerState

STALE_AFTER = 15.0  # a supervisor silent this long is reported as not responding


def collect(client: redis.Redis, name: str) -> dict[str, Any]:
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.meta(name))
    pipe.smembers(keys.hosts(name))
    pipe.hgetall(keys.counts(name))
    pipe.get(keys.paused(name))
    pipe.hkeys(keys.pools(name))
    pipe.info("server")
    *replies, server = pipe.execute(raise_on_error=False)
    for reply in replies:  # INFO alone may be refused (a managed Redis): no server line
        if isinstance(reply, Exception):
            raise reply
    meta, host_names, counts, paused, pool_names = replies
    hosts_sorted = sorted(host_names)
    if not meta or (meta.get("state") == "stopped" and not hosts_sorted):
        raise NotRunning(f"swarm '{name}' is not running")
    pipe = client.pipeline(transaction=False)
    for host in hosts_sorted:
        pipe.hgetall(keys.host(name, host))
        pipe.hgetall(keys.host_slots(name, host))
        pipe.hgetall(keys.host_pools(name, host))
    pipe.mget([keys.paused(name, p) for p in pool_names] or ["-"])
    for pool in pool_names:  # batch pools' open batches
        pipe.zrange(keys.batches(name, pool), 0, 999, withscores=True)
    replies = pipe.execute()
    opened = dict(zip(pool_names, replies[len(replies) - len(pool_names):]))
    replies = replies[:len(replies) - len(pool_names)]
    now = time.time()
    hosts, slots = [], []
    wanted: dict[str, int] = {}
    for i, host in enumerate(hosts_sorted):
        lease, table, targets = replies[3 * i: 3 * i + 3]
        hosts.append(_host(host, lease, now))
        if lease:
            for pool, n in targets.items():
                wanted[pool] = wanted.get(pool, 0) + int(n)
        for worker_id, raw in table.items():
            slots.append((host, worker_id, json.loads(raw), not lease))
    pool_pauses = dict(zip(pool_names, replies[-1])) if pool_names else {}
    slots.sort(key=lambda item: (item[0], _slot_order(item[2].get("slot", item[1]))))
    pipe = client.pipeline(transaction=False)
    for _, worker_id, slot, _ in slots:
        pipe.hgetall(keys.worker(name, worker_id))
        pipe.pttl(keys.lease(name, keys.consumer(worker_id, int(slot.get("generation", 0)))))
    batch_ids = [(pool, b, created) for pool, got in opened.items() for b, created in got]
    for _pool, batch_id, _created in batch_ids:
        pipe.hget(keys.batch(name, batch_id), "open")
    found = pipe.execute()
    batches = _batches(batch_ids, found[2 * len(slots):])
    workers = [_row(host, worker_id, slot, found[2 * i], found[2 * i + 1], lost)
               for i, (host, worker_id, slot, lost) in enumerate(slots)]
    up = [h for h in hosts if not h["lost"]]
    first = up[0] if up else (hosts[0] if hosts else {})
    state = meta.get("state", "unknown")
    if state != "stopped" and hosts and not up:
        state = "lost"
    return {
        "swarm": name,
        "state": state,
        "hosts": hosts,
        # the first live host's, as when a swarm had one host
        "supervisor_pid": first.get("pid", 0),
        "host": first.get("host", ""),
        "started": first.get("started", 0.0),
        "supervisor_seen_ago": first.get("seen_ago", 0.0),
        "responding": bool(up) and all(h["responding"] for h in up),
        "pools": {pool: wanted.get(pool, 0) for pool in sorted(pool_names)},
        "paused": paused,
        "paused_pools": {p: why for p, why in pool_pauses.items() if why},
        "tasks": {str(state): int(counts.get(state, 0)) for state in TaskState},
        "batches": batches,
        "workers": workers,
        "server": describe(server, name) if isinstance(server, dict) else None,
    }


def _batches(ids: list[tuple[str, str, float]], open_counts: list[Any]) -> dict[str, Any]:
    """Per batch pool: requests waiting in Message Batches, in how many batches, and
    when the oldest of them was sent (unix time)."""
    found: dict[str, dict[str, Any]] = {}
    for (pool, _batch_id, created), waiting in zip(ids, open_counts):
        if waiting is None:  # collected meanwhile
            continue
        view = found.setdefault(pool, {"requests": 0, "batches": 0, "since": created})
        view["requests"] += max(0, int(waiting))
        view["batches"] += 1
        view["since"] = min(view["since"], created)
    return found


def _host(host: str, lease: dict[str, str], now: float) -> dict[str, Any]:
    """A host's row: its supervisor, or ``lost`` when its lease is gone."""
    if not lease:
        return {"host": host, "state": "lost", "lost": True, "pid": 0, "machine": "",
                "started": 0.0, "seen_ago": None, "responding": False}
    age = now - float(lease.get("tick", lease.get("started", now)))
    return {"host": host, "state": lease.get("state", "unknown"), "lost": False,
            "pid": int(lease.get("pid", 0)), "machine": lease.get("machine", ""),
            "started": float(lease.get("started", 0)), "seen_ago": round(age, 3),
            "responding": age < STALE_AFTER}


def _slot_order(slot: str) -> tuple[str, int]:
    pool, _, index = slot.rpartition("-")
    return pool, int(index) if index.isdigit() else 0


def _row(host: str, worker_id: str, slot: dict[str, Any], report: dict[str, str],
         pttl: int, lost: bool) -> dict[str, Any]:
    expiry = float(slot.get("expiry", 0))
    beating = pttl is not None and pttl > 0
    current = report.get("pid") == str(slot.get("pid")) and slot.get("pid") is not None
    state = slot["state"]
    if lost:
        state = "lost"
    elif state not in SUPERVISOR_WINS:
        said = report.get("state", WorkerState.STARTING)
        state = said if (beating and current) else WorkerState.STARTING
    return {
        "worker": worker_id,
        "host": host,
        "slot": slot.get("slot") or keys.split_worker(worker_id)[2],
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
    WorkerState.IDLE: "green", WorkerState.BUSY: "cyan", SlotState.STARTING: "yellow",
    SlotState.RUNNING: "green", SlotState.HUNG: "red", SlotState.KILLING: "red",
    SlotState.RESTARTING: "yellow", SlotState.FATAL: "bold red",
    SlotState.STOPPING: "magenta", SlotState.RETIRING: "magenta", SlotState.STOPPED: "dim",
    "lost": "bold red",
}


_COLUMNS = ("WORKER", "PID", "STATE", "BEAT", "TASK", "DONE", "FAILED", "RESTARTS", "RSS",
            "CPU%", "LAST EXIT")
_RIGHT = {i for i, c in enumerate(_COLUMNS)
          if c in ("PID", "BEAT", "DONE", "FAILED", "RESTARTS", "RSS", "CPU%")}


def render(view: dict[str, Any]) -> Any:
    """The status table, laid out by ``launcher.columns`` (rich.Table spends ~130 ms
    measuring the cells of 200 slots); rich still prints the colours. One block per
    host: its supervisor, then its pools and workers."""
    from rich.console import Group
    from rich.text import Text

    counts: dict[str, int] = {}
    for row in view["workers"]:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no workers"
    health = "" if view["responding"] or view["state"] in ("lost", "stopped") else (
        "  [bold red]supervisor not responding[/]")
    many = len(view["hosts"]) > 1
    where = (f"{len(view['hosts'])} hosts" if many else
             f"supervisor pid {view['supervisor_pid']} on {view['host']}")
    head = Text.from_markup(f"[bold]swarm {view['swarm']}[/] {view['state']}  {where}  "
                            f"{summary}{health}")
    t = view["tasks"]
    tasks_line = Text(
        f"tasks: {t['queued']} queued, {t['running']} in flight, {t['done']} done, "
        f"{t['failed']} failed" + (f" ({t['dead']} of them dead-lettered)" if t["dead"] else "")
        + (f", {t['handed_back']} handed back" if t.get("handed_back") else "")
    )
    if view["paused"]:
        tasks_line.append(f"  PAUSED: {view['paused']}", style="bold red")
    for pool_name, why in view.get("paused_pools", {}).items():
        tasks_line.append(f"  PAUSED {pool_name}: {why}", style="bold red")
    waits = [Text(f"{pool_name}: {b['requests']:,} request(s) waiting in {b['batches']} "
                  f"batch(es), the oldest sent {_ago(b['since'])}")
             for pool_name, b in sorted(view.get("batches", {}).items())]
    lead = 1 if many else 0  # with several hosts, a HOST column comes first
    headers = ("HOST",) * lead + _COLUMNS
    right = {i + lead for i in _RIGHT}
    cells = [[row["host"]] * lead + [
              row["slot"], str(row["pid"] or "-"), row["state"],
              "-" if row["heartbeat_age"] is None else f"{row['heartbeat_age']:.1f}s",
              row["task"] or "-", str(row["done"]), str(row["failed"]), str(row["restarts"]),
              format_size(row["rss"]) if row["rss"] else "-", f"{row['cpu']:.1f}",
              row["last_exit"] or ""] for row in view["workers"]]
    sizes = columns.widths(headers, cells)
    lines = [Text(columns.line(headers, sizes, right), style="bold")]
    by_host = {h["host"]: h for h in view["hosts"]}
    host = pool = None
    for row, cell in zip(view["workers"], cells):
        if row["host"] != host:
            host, pool = row["host"], None
            if many:
                lines.append(_host_line(by_host.get(host, {"host": host, "lost": True})))
        if row["pool"] != pool:
            pool = row["pool"]
            wanted = "" if many else f" ({view['pools'].get(pool, '?')} wanted)"
            lines.append(Text(f"{pool}{wanted}", style="bold"))
        line = Text(columns.line(cell, sizes, right))
        start = sum(sizes[:2 + lead]) + 2 * (2 + lead)
        line.stylize(_STYLE.get(row["state"], ""), start, start + len(row["state"]))
        lines.append(line)
    for h in view["hosts"]:
        if many and h["host"] not in {r["host"] for r in view["workers"]}:
            lines.append(_host_line(h))
    server = [Text(server_line(view["server"]))] if view.get("server") else []
    return Group(head, *server, tasks_line, *waits, *lines)


def _ago(when: float) -> str:
    """'at 14:03:10 (5m12s ago)', local time."""
    since = max(0, int(time.time() - when))
    span = (f"{since // 3600}h{since % 3600 // 60:02d}m" if since >= 3600 else
            f"{since // 60}m{since % 60:02d}s" if since >= 60 else f"{since}s")
    return f"at {time.strftime('%H:%M:%S', time.localtime(when))} ({span} ago)"


def _host_line(host: dict[str, Any]) -> Any:
    from rich.text import Text

    if host.get("lost"):
        return Text(f"host {host['host']}: LOST (no supervisor for 10 s or more)",
                    style="bold red")
    late = "" if host.get("responding") else "  not responding"
    return Text(f"host {host['host']}: supervisor pid {host['pid']}, {host['state']}{late}",
                style="bold")
