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
    """The seed's heartbeat: an ISO-8601 timestamp that expires on its own. Written for
    coordinators that read it; swarm judges liveness by :func:`lease`."""
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


CHANNEL_RESPONSES = "channel:responses"


def archive_query(query_id: str) -> str:
    """The seed's librarian question: a string (plain text, or JSON with ``question``)."""
    return f"query:archive:{query_id}"


def archive_claimed(query_id: str) -> str:
    """Which librarian answers the question (``SET NX EX``, as a task's claim)."""
    return f"query:archive:{query_id}:claimed"


def archive_response(query_id: str) -> str:
    """The librarian's answer (text), announced by its id on ``channel:responses``."""
    return f"response:archive:{query_id}"


# --- who is who ----------------------------------------------------------------------
#
# A swarm runs on hosts; a host runs slots (``<pool>-<n>``); a slot runs one worker
# process at a time (its generation). A worker's id, ``<swarm>/<host>/<slot>``, is
# unique on a Redis however many swarms and hosts share it (none of the three parts can
# hold a '/'); a process's consumer name adds its generation.


def slot_name(pool: str, index: int) -> str:
    return f"{pool}-{index}"


def worker_id(swarm: str, host: str, slot: str) -> str:
    return f"{swarm}/{host}/{slot}"


def split_worker(worker: str) -> tuple[str, str, str]:
    """(swarm, host, slot) of a worker id; a consumer name's '#generation' is dropped."""
    swarm, host, slot = worker.split("#", 1)[0].split("/", 2)
    return swarm, host, slot


def consumer(worker: str, generation: int) -> str:
    """A worker process's consumer name, its claim value and the name its lease and its
    calls in flight are kept under: one per generation, so a dead process's pending
    entries are exactly the ones it was given."""
    return f"{worker}#{generation}"


# --- swarm's own -------------------------------------------------------------------

REGISTRY = "swarm:registry"  # set of swarm names known to this server


def _ns(swarm: str) -> str:
    return f"swarm:{swarm}"


def meta(swarm: str) -> str:
    """Hash: what the swarm's hosts share: state (running while any host is up),
    default pool, lead and librarian pools, budget, workdirs, reference model, price
    source, Redis kind."""
    return f"{_ns(swarm)}:meta"


def pools(swarm: str) -> str:
    """Hash: pool name -> the spec's worker count per host."""
    return f"{_ns(swarm)}:pools"


def hosts(swarm: str) -> str:
    """Set: the hosts that have run this swarm and not left cleanly."""
    return f"{_ns(swarm)}:hosts"


def host(swarm: str, host_name: str) -> str:
    """Hash with an expiry, the host's lease: its supervisor's pid, boot id, state,
    start time and last tick, refreshed every 2 s. Gone: the host is lost."""
    return f"{_ns(swarm)}:host:{host_name}"


def host_slots(swarm: str, host_name: str) -> str:
    """Hash: worker id -> JSON of what the host's supervisor knows (pid, state, rss...)."""
    return f"{_ns(swarm)}:host:{host_name}:slots"


def host_pools(swarm: str, host_name: str) -> str:
    """Hash: pool name -> the workers wanted on this host (changed by `swarm scale`)."""
    return f"{_ns(swarm)}:host:{host_name}:pools"


def host_control(swarm: str, host_name: str) -> str:
    """List: commands for the host's supervisor (scale, down), RPUSHed as JSON."""
    return f"{_ns(swarm)}:host:{host_name}:control"


def lease(swarm: str, consumer_name: str) -> str:
    """String with an expiry (the heartbeat expiry), refreshed with each beat: while it
    exists the worker process ``consumer_name`` is alive and its deliveries are its own.
    Gone, any live supervisor of the swarm hands them back."""
    return f"{_ns(swarm)}:lease:{consumer_name}"


def worker(swarm: str, worker_id: str) -> str:
    """Hash: what the worker itself reports (state, current task, done, failed)."""
    return f"{_ns(swarm)}:worker:{worker_id}"


def events(swarm: str) -> str:
    """Stream, capped: starts, exits, hangs, memory kills, restarts, give-ups."""
    return f"{_ns(swarm)}:events"


def queue(swarm: str, pool: str) -> str:
    """Stream: one entry per delivery of a task to ``pool`` (field ``task``). Read with
    the consumer group GROUP; an entry stays pending until its worker acknowledges it."""
    return f"{_ns(swarm)}:queue:{pool}"


GROUP = "workers"


def task_meta(swarm: str, task_id: str) -> str:
    """Hash: swarm's record of a task: state (queued, running, done, failed, dead,
    elsewhere, handed_back), pool, attempts, submitted/started/finished, worker,
    finding, error; for a task of a run, the run and the worst case its hand-out
    reserved (reserve, 0 once it finished); escalated_from for a task handed back to a
    stronger pool."""
    return f"{_ns(swarm)}:task:{task_id}"


def cancel(swarm: str, task_id: str) -> str:
    """String with an expiry: `swarm cancel` asks the worker running the task to stop it
    (read with each beat); the task then ends cancelled."""
    return f"{_ns(swarm)}:task:{task_id}:cancel"


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


def budgets(swarm: str) -> str:
    """Hash: the budgets in force, USD: ``swarm`` and ``pool:{name}`` ('' for none).
    Written from the spec by each host at start; `swarm budget` changes them while the
    swarm runs; workers read them as they start each task."""
    return f"{_ns(swarm)}:budgets"


def ledger(swarm: str) -> str:
    """Hash: every cost counter, pre-aggregated. Fields are ``{dim}|{key}|{metric}`` with
    dim total (key ``*``), worker, host, pool, model or run (the calls of a run's lead
    and tasks), and metric calls, input, output, cache_write, cache_read, nano (cost,
    1e-9 USD), ref_nano (the same tokens on the reference model), unpriced_calls,
    lost_calls, lost_bound_nano; batch_calls, batch_nano and batch_std_nano for calls
    through the Message Batches API."""
    return f"{_ns(swarm)}:ledger"


def ledger_minute(swarm: str, minute: int) -> str:
    """Hash: the ledger's counters for one minute (Unix time // 60), for --since."""
    return f"{_ns(swarm)}:ledger:m:{minute}"


def task_costs(swarm: str) -> str:
    """Sorted set: task id -> nano-dollars spent on it (all its attempts)."""
    return f"{_ns(swarm)}:ledger:tasks"


def inflight(swarm: str) -> str:
    """Hash: API calls sent and not yet settled: ``{consumer}|{call}`` -> JSON with the
    task, model and an upper bound on the call's cost; a request in a Message Batch
    is ``batch|{custom_id}`` once its batch exists (a dead worker's are collected by
    its successor, not lost)."""
    return f"{_ns(swarm)}:inflight"


def task_turn(swarm: str, task_id: str) -> str:
    """Hash, expiring a week after its last write: a batch pool task's agent loop as of
    its last request (workers/batch_caller.py): ``turn``, ``cid`` (the request's
    custom_id), ``status`` (gathering, sent, answered, failed, unsent), ``request`` and
    ``progress`` (JSON: what a successor needs to go on), ``consumer``, ``pool``,
    ``batch``, and once read
    ``answer``, ``answer_usage``, ``answer_nano``, or ``failure``. Deleted when the
    task is recorded."""
    return f"{_ns(swarm)}:task:{task_id}:turn"


def batches(swarm: str, pool: str) -> str:
    """Sorted set: the Message Batches of ``pool`` not yet collected, by creation time."""
    return f"{_ns(swarm)}:batches:{pool}"


def batch(swarm: str, batch_id: str) -> str:
    """Hash: one batch not yet collected: ``pool``, ``owner`` (the consumer that polls
    it; any worker of the pool adopts it once the owner's lease is gone), ``created``,
    ``requests``, ``open`` (those not yet settled)."""
    return f"{_ns(swarm)}:batch:{batch_id}"


def reserved(swarm: str) -> str:
    """Hash: the worst case of the batch requests sent and not yet settled, nano-USD:
    ``total`` and ``pool|{pool}``; a batch is sent only if it fits the budgets with
    what is spent and what is reserved."""
    return f"{_ns(swarm)}:reserved"


def warm_prefix(swarm: str, prefix: str) -> str:
    """String with an expiry: a shared prefix (model, tools, system; its hash) is in the
    API's cache; first requests over it go at once (workers/prefix_gate.py)."""
    return f"{_ns(swarm)}:prefix:{prefix}:warm"


def warming_prefix(swarm: str, prefix: str) -> str:
    """String with an expiry: one request is writing the prefix to the cache; other
    first requests over it wait for its answer."""
    return f"{_ns(swarm)}:prefix:{prefix}:writing"


def rate(swarm: str, model: str) -> str:
    """Hash: the swarm-wide request and token buckets of one model (level, time)."""
    return f"{_ns(swarm)}:rate:{model}"


def cooldown(swarm: str, model: str) -> str:
    """String with a TTL: after a 429, no worker calls ``model`` until it expires."""
    return f"{_ns(swarm)}:rate:{model}:cooldown"


def finding_docs(swarm: str) -> str:
    """List, newest first, capped: a search document per finding (workers/findings_index.py:
    its id, task, status, pool and the lower-cased start of its task and result)."""
    return f"{_ns(swarm)}:findings:docs"


def librarian_asking(swarm: str, question: str) -> str:
    """String with an expiry: the id of the question being answered now that has this
    text (its hash): identical questions in flight are answered once."""
    return f"{_ns(swarm)}:librarian:asking:{question}"


# --- runs: a lead's goal and the tasks it hands out (workers/lead.py) ------------------


def runs(swarm: str) -> str:
    """Sorted set: run ids by creation time (`swarm runs`)."""
    return f"{_ns(swarm)}:runs"


def run(swarm: str, run_id: str) -> str:
    """Hash: a run: goal, lead pool, state (queued, running, done, partial, failed),
    its limits (budget_nano, max_tasks, max_in_flight), what it handed out (handed),
    what came back (finished), the worst cases reserved for tasks in flight
    (reserved_nano), the limit it hit (limit), its finding and times."""
    return f"{_ns(swarm)}:run:{run_id}"


def run_tasks(swarm: str, run_id: str) -> str:
    """List: the ids of the tasks a run handed out, in order."""
    return f"{_ns(swarm)}:run:{run_id}:tasks"


def run_events(swarm: str, run_id: str) -> str:
    """Stream: one entry (task, finding, status) per task of the run that finished,
    in the order they did; the lead reads on from the last entry it saw."""
    return f"{_ns(swarm)}:run:{run_id}:findings"


def run_findings(swarm: str, run_id: str) -> str:
    """Set: the finding ids of the run's tasks (what its synthesis may cite)."""
    return f"{_ns(swarm)}:run:{run_id}:cited"


def run_checkpoint(swarm: str, run_id: str) -> str:
    """String: the lead's conversation and place, JSON, rewritten after every turn, so
    another lead worker resumes the run where the last one died."""
    return f"{_ns(swarm)}:run:{run_id}:checkpoint"


def run_context(swarm: str, run_id: str) -> str:
    """String: the shared context the lead set for its run's tasks (after
    ``context:active`` in their system prompt)."""
    return f"{_ns(swarm)}:run:{run_id}:context"


HOST_LEASE_MS = 10_000  # a host whose supervisor is silent this long is lost
LEDGER_MINUTE_TTL = 8 * 24 * 3600
EVENTS_MAXLEN = 10_000
RUN_TTL = 30 * 24 * 3600  # a run's checkpoint and context outlive it this long
DEAD_MAXLEN = 10_000
