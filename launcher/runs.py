"""Runs from the outside (`swarm run`, `swarm runs`, `swarm show RUN`): start one, list
them, read one as a tree of its tasks, wait for one to end. The Python API
(launcher/client.py: ``Swarm.run`` and the rest) calls these.

A run is a task of a lead pool whose id is the run's id; the lead it reaches keeps the
run's record (workers/run_book.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from workers import keys, ledger_format, scripts
from workers.payload import Task, dump
from workers.states import RunState

ENDED = (RunState.DONE, RunState.PARTIAL, RunState.FAILED)
_INTS = ("handed", "finished", "reserved_nano", "budget_nano", "max_tasks", "max_in_flight")
_SPEND = ("nano", "lost_bound_nano", "calls", "input", "output", "cache_write", "cache_read")


class RunError(Exception):
    """A run that cannot be started or found; ``str()`` says why in one line."""


def start(redis: Any, swarm: str, goal: str, pool: str | None = None,
          budget_usd: float | None = None, max_tasks: int | None = None,
          max_in_flight: int | None = None, files: Iterable[str] = ()) -> str:
    """Queue a goal for a lead pool; returns the run's id. Limits not given are the
    lead pool's (``run:`` in the spec)."""
    if not goal.strip():
        raise RunError("the goal is empty")
    for name, value in (("budget", budget_usd), ("max tasks", max_tasks),
                        ("max in flight", max_in_flight)):
        if value is not None and value <= 0:
            raise RunError(f"the {name} must be more than 0, not {value:g}")
    meta = redis.hgetall(keys.meta(swarm))
    if not meta or meta.get("state") == "stopped":
        raise RunError(f"swarm '{swarm}' is not running")
    leads = [p for p in (meta.get("leads") or "").split(",") if p]
    if not leads:
        raise RunError(f"swarm '{swarm}' has no lead pool: add a pool with 'role: lead' and "
                       "'delegates_to' to its spec")
    pool = pool or leads[0]
    if pool not in leads:
        raise RunError(f"{pool!r} is not a lead pool of swarm '{swarm}' "
                       f"(leads: {', '.join(leads)})")
    run_id = f"run_{uuid.uuid4().hex[:16]}"
    now = time.time()
    record: dict[str, Any] = {"id": run_id, "goal": goal[:2000], "pool": pool,
                              "created": f"{now:.6f}", "task": run_id, "state": "queued",
                              "handed": 0, "finished": 0, "reserved_nano": 0}
    if budget_usd is not None:
        record["budget_nano"] = int(Decimal(str(budget_usd)) * 10**9)
    if max_tasks is not None:
        record["max_tasks"] = max_tasks
    if max_in_flight is not None:
        record["max_in_flight"] = max_in_flight
    pipe = redis.pipeline(transaction=True)
    pipe.hset(keys.run(swarm, run_id), mapping=record)
    pipe.zadd(keys.runs(swarm), {run_id: now})
    pipe.set(keys.task(run_id), dump(Task(goal, list(files), pool,
                                          {"swarm": swarm, "run": run_id})))
    k, a = scripts.enqueue_args(swarm, pool, run_id, "run", now)
    pipe.eval(scripts.ENQUEUE, len(k), *k, *a)
    pipe.execute()
    return run_id


def summary(redis: Any, swarm: str, run_id: str) -> dict[str, Any] | None:
    """The run's record and spend (no tasks): what `swarm runs` shows of each."""
    return _summaries(redis, swarm, [run_id])[0]


def listing(redis: Any, swarm: str, limit: int = 50) -> list[dict[str, Any]]:
    """The newest runs first."""
    ids = redis.zrevrange(keys.runs(swarm), 0, max(1, limit) - 1)
    return [r for r in _summaries(redis, swarm, ids) if r is not None]


def tree(redis: Any, swarm: str, run_id: str) -> dict[str, Any] | None:
    """The run with each of its tasks (pool, state, attempts, cost, finding and its
    evidence) and its result."""
    run = summary(redis, swarm, run_id)
    if run is None:
        return None
    ids = redis.lrange(keys.run_tasks(swarm, run_id), 0, -1)
    pipe = redis.pipeline(transaction=False)
    for task_id in ids:
        pipe.hgetall(keys.task_meta(swarm, task_id))
        pipe.zscore(keys.task_costs(swarm), task_id)
    replies = pipe.execute()
    metas = replies[0::2]
    findings = _findings(redis, [m.get("finding", "") for m in metas])
    run["tasks"] = []
    for task_id, meta, nano, finding in zip(ids, metas, replies[1::2], findings):
        run["tasks"].append({
            "id": task_id, "pool": meta.get("pool", ""), "state": meta.get("state", ""),
            "attempts": int(meta.get("attempts") or 0), "cost_usd": (nano or 0) / 1e9,
            "finding": meta.get("finding") or None, "error": meta.get("error") or None,
            "tool_calls": finding.get("tool_calls"),
            "files_changed": finding.get("files_changed") or [],
            "task": str(finding.get("task") or "")[:200],
            "result": str(finding.get("result") or "")[:200]})
    run["result"] = _findings(redis, [run.get("finding") or ""])[0] or None
    return run


def wait(redis: Any, swarm: str, run_id: str, timeout: float | None = None,
         on_progress: Callable[[dict[str, Any]], None] | None = None,
         every: float = 0.5) -> dict[str, Any]:
    """Block until the run ends; returns its tree. ``on_progress`` is called with the
    run's summary whenever what it handed out, got back or spent changes."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: tuple[Any, ...] | None = None
    while True:
        run = summary(redis, swarm, run_id)
        if run is None:
            raise RunError(f"no run {run_id!r} in swarm '{swarm}'")
        now = (run["state"], run["handed"], run["finished"], run["spent_nano"])
        if on_progress is not None and now != seen:
            on_progress(run)
        seen = now
        if run["state"] in ENDED:
            found = tree(redis, swarm, run_id)
            assert found is not None
            return found
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} has not ended after {timeout:g}s")
        time.sleep(every)


def _summaries(redis: Any, swarm: str, ids: list[str]) -> list[dict[str, Any] | None]:
    pipe = redis.pipeline(transaction=False)
    for run_id in ids:
        pipe.hgetall(keys.run(swarm, run_id))
        pipe.hmget(keys.ledger(swarm), [ledger_format.field("run", run_id, m) for m in _SPEND])
    replies = pipe.execute()
    found: list[dict[str, Any] | None] = []
    for record, spend in zip(replies[0::2], replies[1::2]):
        if not record:
            found.append(None)
            continue
        run: dict[str, Any] = dict(record)
        for name in _INTS:
            run[name] = int(run.get(name) or 0)
        counts = {m: int(v or 0) for m, v in zip(_SPEND, spend)}
        run["spent_nano"] = counts["nano"] + counts["lost_bound_nano"]
        run["spent_usd"] = run["spent_nano"] / 1e9
        run["budget_usd"] = run["budget_nano"] / 1e9 if run["budget_nano"] else None
        run["calls"] = counts["calls"]
        run["tokens"] = sum(counts[m] for m in ("input", "output", "cache_write", "cache_read"))
        run["in_flight"] = run["handed"] - run["finished"]
        found.append(run)
    return found


def _findings(redis: Any, ids: list[str]) -> list[dict[str, Any]]:
    wanted = [i for i in ids if i]
    raws = dict(zip(wanted, redis.mget([keys.finding(i) for i in wanted]))) if wanted else {}
    out = []
    for finding_id in ids:
        try:
            value = json.loads(raws.get(finding_id) or "{}")
        except ValueError:
            value = {}
        out.append(value if isinstance(value, dict) else {})
    return out
