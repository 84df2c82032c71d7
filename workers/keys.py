"""Every Redis key and channel name swarm uses, and nothing else.

Two families live here:

* the seed protocol's names (``worker:status:{id}``, ``task:{id}``, ``finding:{id}``,
  ``channel:*``, ``cost:{family}``), which existing coordinators speak and which keep
  their meaning exactly;
* swarm's own names, all under ``swarm:{name}:`` so several swarms can share one server.

docs/protocol.md documents each one; keep the two in step.
"""

from __future__ import annotations

# --- the seed protocol -------------------------------------------------------------

CHANNEL_TASKS = "channel:tasks"
CHANNEL_FINDINGS = "channel:findings"
CHANNEL_COMPLETIONS = "channel:completions"
CONTEXT_ACTIVE = "context:active"


def heartbeat(worker_id: str) -> str:
    """The seed's heartbeat: an ISO-8601 timestamp that expires on its own."""
    return f"worker:status:{worker_id}"


def task(task_id: str) -> str:
    return f"task:{task_id}"


def task_claimed(task_id: str) -> str:
    return f"task:{task_id}:claimed"


def task_result(task_id: str) -> str:
    return f"task:{task_id}:result"


def finding(finding_id: str) -> str:
    return f"finding:{finding_id}"


def seed_cost(family: str) -> str:
    return f"cost:{family}"


# --- swarm's own -------------------------------------------------------------------

REGISTRY = "swarm:registry"  # set of swarm names known to this server


def _ns(swarm: str) -> str:
    return f"swarm:{swarm}"


def meta(swarm: str) -> str:
    """Hash: the supervisor's pid, host, state, start time, spec path."""
    return f"{_ns(swarm)}:meta"


def pools(swarm: str) -> str:
    """Hash: pool name -> target worker count."""
    return f"{_ns(swarm)}:pools"


def slots(swarm: str) -> str:
    """Hash: worker id -> JSON of what the supervisor knows (pid, state, rss, ...)."""
    return f"{_ns(swarm)}:slots"


def worker(swarm: str, worker_id: str) -> str:
    """Hash: what the worker itself reports (state, current task, done, failed)."""
    return f"{_ns(swarm)}:worker:{worker_id}"


def events(swarm: str) -> str:
    """Stream, capped: starts, exits, hangs, memory kills, restarts, give-ups."""
    return f"{_ns(swarm)}:events"


def control(swarm: str) -> str:
    """List: commands for the supervisor (scale, down), RPUSHed as JSON."""
    return f"{_ns(swarm)}:control"


def queue(swarm: str, pool: str) -> str:
    """Stream: one entry per delivery of a task to ``pool`` (field ``task``). Read with
    the consumer group GROUP; an entry stays pending until its worker acknowledges it."""
    return f"{_ns(swarm)}:queue:{pool}"


GROUP = "workers"


def consumer(worker_id: str, generation: int) -> str:
    """A worker process's consumer name: one per generation, so a dead process's pending
    entries are exactly the ones it was given."""
    return f"{worker_id}#{generation}"


def task_meta(swarm: str, task_id: str) -> str:
    """Hash: swarm's record of a task: state (queued, running, done, failed, dead,
    elsewhere), pool, attempts, submitted/started/finished, worker, finding, error."""
    return f"{_ns(swarm)}:task:{task_id}"


def tasks(swarm: str) -> str:
    """Sorted set: task ids by submission time (`swarm tasks`)."""
    return f"{_ns(swarm)}:tasks"


def counts(swarm: str) -> str:
    """Hash: how many tasks are queued, running, done, failed, dead (kept by the scripts
    that move tasks between states, so `swarm status` never counts)."""
    return f"{_ns(swarm)}:counts"


def dead(swarm: str) -> str:
    """List: dead-lettered tasks as JSON {task, reason, attempts, ts}, newest first."""
    return f"{_ns(swarm)}:dead"


def paused(swarm: str, pool: str | None = None) -> str:
    """String: when set, no worker (of ``pool``, or of the swarm) starts new work; the
    value is the reason (API spend limit, budget reached)."""
    return f"{_ns(swarm)}:paused" + (f":{pool}" if pool else "")


def ledger(swarm: str) -> str:
    """Hash: every cost counter, pre-aggregated. Fields are ``{dim}|{key}|{metric}`` with
    dim total (key ``*``), worker, pool or model, and metric calls, input, output,
    cache_write, cache_read, nano (cost, 1e-9 USD), ref_nano (the same tokens on the
    reference model), unpriced_calls, lost_calls, lost_bound_nano."""
    return f"{_ns(swarm)}:ledger"


def ledger_minute(swarm: str, minute: int) -> str:
    """Hash: the ledger's counters for one minute (Unix time // 60), for --since."""
    return f"{_ns(swarm)}:ledger:m:{minute}"


def task_costs(swarm: str) -> str:
    """Sorted set: task id -> nano-dollars spent on it (all its attempts)."""
    return f"{_ns(swarm)}:ledger:tasks"


def inflight(swarm: str) -> str:
    """Hash: API calls sent and not yet settled: ``{consumer}|{call}`` -> JSON with the
    task, model and an upper bound on the call's cost."""
    return f"{_ns(swarm)}:inflight"


def rate(swarm: str, model: str) -> str:
    """Hash: the swarm-wide request and token buckets of one model (level, time)."""
    return f"{_ns(swarm)}:rate:{model}"


def cooldown(swarm: str, model: str) -> str:
    """String with a TTL: after a 429, no worker calls ``model`` until it expires."""
    return f"{_ns(swarm)}:rate:{model}:cooldown"


LEDGER_MINUTE_TTL = 8 * 24 * 3600
EVENTS_MAXLEN = 10_000
DEAD_MAXLEN = 10_000
