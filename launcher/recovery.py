"""Nothing lost: what the supervisor does for tasks whose worker is gone.

* ``hand_back``: the moment a worker process is reaped (crash, hang, memory kill, or
  a clean stop with work unfinished), every delivery still pending for its consumer goes
  back on the queue, and its seed claim is released. No visibility timeout to wait out.
* ``recover_orphans``: at start, deliveries pending for consumers of an earlier run
  (the supervisor itself was killed) are handed back the same way.
* ``scan_seed_tasks``: at start, ``task:{id}`` keys announced while no swarm listened
  (pub/sub drops those) are enqueued, unless claimed or done.
"""

from __future__ import annotations

import time
from typing import Any

from workers import keys, scripts
from workers.payload import route


def prepare_queues(redis: Any, swarm: str, pools: list[str]) -> None:
    for pool in pools:
        try:
            redis.xgroup_create(keys.queue(swarm, pool), keys.GROUP, id="0", mkstream=True)
        except Exception as exc:  # noqa: BLE001
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
    redis.xgroup_delconsumer(stream, keys.GROUP, consumer)
    return requeued


def lose_calls(redis: Any, swarm: str, pattern: str) -> tuple[int, int]:
    """Count the API calls in flight of dead consumers (``pattern``, e.g. ``a-1#2|*``)
    as lost in the ledger; returns (calls, upper bound in nano-dollars)."""
    k, a = scripts.lose_args(swarm, pattern, time.time())
    calls, bound = redis.register_script(scripts.LOSE)(keys=k, args=a)
    return int(calls), int(bound)


def recover_orphans(redis: Any, swarm: str, pools: list[str]) -> dict[str, int]:
    """Hand back whatever consumers of an earlier run left pending. (Their calls in
    flight are counted as lost by the caller: at start, every call in flight is.)"""
    found: dict[str, int] = {}
    for pool in pools:
        for info in redis.xinfo_consumers(keys.queue(swarm, pool), keys.GROUP):
            name = info["name"]
            found[name] = hand_back(redis, swarm, pool, name,
                                    f"{name} gone with an earlier supervisor", refund=False)
    return found


def scan_seed_tasks(redis: Any, swarm: str, default_pool: str, pools: list[str]) -> int:
    """Enqueue every unclaimed, unfinished ``task:{id}``; returns how many."""
    script = redis.register_script(scripts.ENQUEUE)
    enqueued = 0
    batch: list[str] = []

    def flush() -> int:
        if not batch:
            return 0
        values = redis.mget(batch)
        count = 0
        for key, raw in zip(batch, values):
            if raw is None:
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
