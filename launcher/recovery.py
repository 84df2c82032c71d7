"""Nothing lost: what a supervisor does for tasks whose worker is gone.

* ``hand_back``: the moment a worker process is reaped (crash, hang, memory kill, or
  a clean stop with work unfinished), every delivery still pending for its consumer goes
  back on the queue, and its seed claim is released. No visibility timeout to wait out.
* ``reap``: any supervisor of the swarm, every tick, hands back what the swarm's other
  dead consumers hold: of its own host, those that are not its live processes (an earlier
  run's); of other hosts, those whose lease expired (a host that lost power). A consumer
  whose lease lives is never touched, however long its task runs.
* ``scan_seed_tasks``: at start, ``task:{id}`` keys announced while no swarm listened
  (pub/sub drops those) are enqueued, unless claimed, done, or another swarm's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from workers import keys, ledger_scripts, scripts
from workers.payload import owner, route

log = logging.getLogger("swarm.supervisor")


@dataclass
class Reaped:
    consumer: str
    tasks: int  # deliveries handed back
    calls: int  # calls in flight counted as lost
    bound_nano: int


def prepare_queues(redis: Any, swarm: str, pools: list[str]) -> None:
    for pool in pools:
        try:
            redis.xgroup_create(keys.queue(swarm, pool), keys.GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def hand_back(redis: Any, swarm: str, pool: str, consumer: str, reason: str,
              refund: bool) -> int:
    """Requeue what ``consumer`` was given and did not finish; returns how many."""
    stream = keys.queue(swarm, pool)
    script = redis.register_script(scripts.HAND_BACK)
    requeued = 0
    while True:
        pending = redis.xpending_range(stream, keys.GROUP, min="-", max="+", count=1000,
                                       consumername=consumer)
        if not pending:
            break
        for item in pending:
            entry_id = item["message_id"]
            entry = redis.xrange(stream, entry_id, entry_id)
            task_id = entry[0][1].get("task", "") if entry else ""
            if not task_id:
                redis.xack(stream, keys.GROUP, entry_id)
                continue
            k, a = scripts.hand_back_args(swarm, pool, task_id, entry_id, consumer, refund,
                                          reason)
            if script(keys=k, args=a) == "requeued":
                requeued += 1
    redis.register_script(scripts.FORGET_CONSUMER)(keys=[stream], args=[keys.GROUP, consumer])
    return requeued


def lose_calls(redis: Any, swarm: str, pattern: str) -> tuple[int, int]:
    """Count the API calls in flight of dead consumers (``pattern``, e.g. ``a-1#2|*``)
    as lost in the ledger; returns (calls, upper bound in nano-dollars)."""
    k, a = ledger_scripts.lose_args(swarm, pattern, time.time())
    calls, bound = redis.register_script(ledger_scripts.LOSE)(keys=k, args=a)
    return int(calls), int(bound)


def reap(redis: Any, swarm: str, host: str, pools: list[str], live: set[str]) -> list[Reaped]:
    """Hand back the deliveries of the swarm's dead consumers, and count their calls in
    flight as lost: this host's that are not in ``live``, other hosts' whose lease is
    gone. One round trip when nobody died (an XPENDING summary per pool)."""
    pipe = redis.pipeline(transaction=False)
    for pool in pools:
        pipe.xpending(keys.queue(swarm, pool), keys.GROUP)
    holders = [(pool, c["name"]) for pool, summary in zip(pools, pipe.execute())
               for c in (summary or {}).get("consumers") or [] if c["name"] not in live]
    if not holders:
        return []
    ours = keys.worker_id(swarm, host, "")
    others = [(pool, c) for pool, c in holders if not c.startswith(ours)]
    pipe = redis.pipeline(transaction=False)
    for _, name in others:
        pipe.exists(keys.lease(swarm, name))
    expired = {name for (_, name), alive in zip(others, pipe.execute()) if not alive}
    reaped = []
    for pool, name in holders:
        if name.startswith(ours) or name in expired:
            why = (f"{name} gone with an earlier supervisor of this host"
                   if name.startswith(ours) else f"{name}'s lease expired (its host is lost?)")
            tasks = hand_back(redis, swarm, pool, name, why, refund=False)
            calls, bound = lose_calls(redis, swarm, f"{name}|*")
            reaped.append(Reaped(name, tasks, calls, bound))
    return reaped


def scan_seed_tasks(redis: Any, swarm: str, default_pool: str, pools: list[str]) -> int:
    """Enqueue every unclaimed, unfinished ``task:{id}`` that no other swarm owns;
    returns how many."""
    script = redis.register_script(scripts.ENQUEUE)
    enqueued = 0
    batch: list[str] = []

    def flush() -> int:
        if not batch:
            return 0
        values = redis.mget(batch)
        count = 0
        for key, raw in zip(batch, values):
            if raw is None or owner(raw) not in (None, swarm):
                continue
            task_id = key[len("task:"):]
            pool = route(raw, default_pool, tuple(pools))
            k, a = scripts.enqueue_args(swarm, pool, task_id, "scan", time.time())
            count += int(script(keys=k, args=a) or 0)
        batch.clear()
        return count

    for key in redis.scan_iter(match="task:*", count=1000, _type="string"):
        if key.endswith((":claimed", ":result")):
            continue
        batch.append(key)
        if len(batch) >= 500:
            enqueued += flush()
    return enqueued + flush()


class Returns:
    """A supervisor's side of recovery: what comes back from its exited workers (kept
    while Redis is away), what its earlier run and other hosts' dead workers left, each
    said as an event."""

    def __init__(self, redis: Any, swarm: str, host: str, pools: list[str],
                 events: Any) -> None:
        self.redis, self.swarm, self.host, self.pools = redis, swarm, host, pools
        self.events = events
        self.waiting: list[tuple[str, str, str, bool]] = []  # pool, consumer, why, clean

    def returned(self, pool: str, consumer: str, reason: str, clean: bool) -> None:
        """A worker process exited: hand back what it held (now, or once Redis is
        back). A clean stop's attempt is refunded."""
        self.waiting.append((pool, consumer, reason, clean))
        self.flush()

    def flush(self) -> None:
        while self.waiting:
            pool, consumer, reason, clean = self.waiting[0]
            try:
                tasks = hand_back(self.redis, self.swarm, pool, consumer, reason, refund=clean)
                calls, bound = lose_calls(self.redis, self.swarm, f"{consumer}|*")
            except Exception as exc:  # noqa: BLE001 - Redis down: kept for the next tick
                log.warning("cannot hand back %s's tasks yet: %s", consumer, exc)
                return
            self.waiting.pop(0)
            self._said(Reaped(consumer, tasks, calls, bound))

    def at_start(self, seed_protocol: bool, default_pool: str) -> None:
        """What this host's earlier run left (deliveries, calls in flight), what other
        hosts' dead workers hold, then the seed's tasks nobody heard announced."""
        prepare_queues(self.redis, self.swarm, self.pools)
        self.reap(set())
        ours = keys.worker_id(self.swarm, self.host, "*")
        calls, bound = lose_calls(self.redis, self.swarm, ours)
        self._said(Reaped("(earlier run)", 0, calls, bound))
        if seed_protocol:
            found = scan_seed_tasks(self.redis, self.swarm, default_pool, self.pools)
            if found:
                self.events.record("seed_tasks_found", tasks=found)

    def reap(self, live: set[str]) -> None:
        for dead in reap(self.redis, self.swarm, self.host, self.pools, live):
            self._said(dead)

    def _said(self, dead: Reaped) -> None:
        if dead.tasks:
            self.events.record("handed_back", consumer=dead.consumer, tasks=dead.tasks)
        if dead.calls:
            self.events.record("calls_lost", consumer=dead.consumer, calls=dead.calls,
                               bound_usd=f"{dead.bound_nano / 1e9:.6f}",
                               level=logging.WARNING)
