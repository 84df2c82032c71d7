"""Task control from the outside (`swarm cancel`, `retry`, `purge`), as Celery's
``revoke``/``purge`` and RQ's ``requeue``/``empty`` do: each change of a task's state is
one script, so it races safely with the workers.

A queued task is cancelled at once (its finding says so, and its queue entry is dropped
when a worker reaches it); a running one is asked to stop (``keys.cancel``): its worker
reads the flag with its next beat, stops the task and records it cancelled.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from workers import keys
from workers.states import FINISHED, TaskState

# KEYS: meta, seed result, finding, counts, cancel flag
# ARGV: finding id, finding json, now, flag ttl
# Returns the task's state before ('cancelled' from queued; 'cancelling' if running).
CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' then
  if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then return 'finished' end
  redis.call('SET', KEYS[3], ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'queued', -1)
  redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished', ARGV[3], 'finding', ARGV[1],
             'error', 'cancelled before it ran')
  redis.call('PUBLISH', 'channel:findings', ARGV[1])
  return 'queued'
end
if state == 'running' then
  redis.call('SET', KEYS[5], '1', 'EX', ARGV[4])
  return 'running'
end
return state or 'unknown'
"""

# KEYS: meta, seed result, seed claim, counts, queue, cancel flag
# ARGV: task id, now
# Returns the state it was in ('failed', ...) if queued again, else 'no:<state>'.
RETRY = """
local state = redis.call('HGET', KEYS[1], 'state')
local finished = {done = 1, failed = 1, dead = 1, cancelled = 1, handed_back = 1}
if not state or not finished[state] then return 'no:' .. (state or 'unknown') end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[6])
if state == 'dead' then redis.call('HINCRBY', KEYS[4], 'failed', -1) end
redis.call('HINCRBY', KEYS[4], state, -1)
redis.call('HINCRBY', KEYS[4], 'queued', 1)
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'error', '', 'submitted', ARGV[2])
redis.call('HDEL', KEYS[1], 'finished', 'finding')
redis.call('XADD', KEYS[5], '*', 'task', ARGV[1])
return state
"""


def cancel(redis: Any, swarm: str, task_id: str, flag_ttl: int = 86_400) -> str:
    """'queued' (cancelled now), 'running' (asked to stop), or the state it was already
    in (nothing done)."""
    finding_id = f"finding_{uuid.uuid4().hex[:16]}"
    finding = {"finding_id": finding_id, "worker_id": "", "task_id": task_id,
               "timestamp": datetime.now(UTC).isoformat(), "task": _description(redis, task_id),
               "result": "", "files_changed": [], "citations": [], "tokens_used": 0,
               "cost": 0.0, "status": "cancelled", "error": "cancelled before it ran"}
    k = [keys.task_meta(swarm, task_id), keys.task_result(task_id), keys.finding(finding_id),
         keys.counts(swarm), keys.cancel(swarm, task_id)]
    a = [finding_id, json.dumps(finding), f"{time.time():.6f}", str(flag_ttl)]
    return str(redis.eval(CANCEL, len(k), *k, *a))


def retry(redis: Any, swarm: str, task_id: str) -> str:
    """Queue a finished task again (its attempts from 0); the state it was in, or
    'no:<state>' if it is not finished."""
    meta = redis.hmget(keys.task_meta(swarm, task_id), "pool", "run")
    pool, run = meta
    if run:
        return "no:part of a run (its lead decides)"
    k = [keys.task_meta(swarm, task_id), keys.task_result(task_id), keys.task_claimed(task_id),
         keys.counts(swarm), keys.queue(swarm, pool or ""), keys.cancel(swarm, task_id)]
    return str(redis.eval(RETRY, len(k), *k, task_id, f"{time.time():.6f}"))


def purge(redis: Any, swarm: str, states: set[str], older_than: float | None = None) -> int:
    """Forget finished tasks in ``states`` (finished more than ``older_than`` seconds
    ago): their records, payloads, results and findings. Returns how many."""
    if not states <= set(FINISHED):
        raise ValueError(f"only finished tasks are purged ({', '.join(FINISHED)})")
    cutoff = None if older_than is None else time.time() - older_than
    gone: list[str] = []
    start = 0
    while True:
        ids = redis.zrange(keys.tasks(swarm), start, start + 999)
        if not ids:
            break
        start += len(ids)
        pipe = redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(keys.task_meta(swarm, task_id), "state", "finished", "finding")
        for task_id, (state, finished, finding) in zip(ids, pipe.execute()):
            if state not in states or (cutoff is not None and float(finished or 0) > cutoff):
                continue
            drop = redis.pipeline(transaction=True)
            drop.delete(keys.task_meta(swarm, task_id), keys.task(task_id),
                        keys.task_result(task_id), keys.task_claimed(task_id))
            if finding:
                drop.delete(keys.finding(finding))
            drop.zrem(keys.tasks(swarm), task_id)
            drop.zrem(keys.task_costs(swarm), task_id)
            drop.hincrby(keys.counts(swarm), state, -1)
            if state == TaskState.DEAD:
                drop.hincrby(keys.counts(swarm), "failed", -1)
            drop.execute()
            gone.append(task_id)
            start -= 1
    if TaskState.DEAD in states and gone:
        _forget_dead(redis, swarm, set(gone))
    return len(gone)


def _forget_dead(redis: Any, swarm: str, gone: set[str]) -> None:
    kept = [x for x in redis.lrange(keys.dead(swarm), 0, -1)
            if json.loads(x).get("task") not in gone]
    pipe = redis.pipeline(transaction=True)
    pipe.delete(keys.dead(swarm))
    if kept:
        pipe.rpush(keys.dead(swarm), *kept)
    pipe.execute()


def _description(redis: Any, task_id: str) -> str:
    try:
        return str(json.loads(redis.get(keys.task(task_id)) or "{}").get("description", ""))
    except (ValueError, AttributeError):
        return ""
