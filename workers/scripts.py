"""The Lua scripts that move a task between states (queued, running, done, ... as in
workers/states.py). Each runs atomically in Redis, so a task is enqueued once, claimed by
one worker, and recorded once, whoever races. The ledger's scripts are in
workers/ledger_scripts.py, the hosts' in launcher/host_scripts.py.

Key names always come from :mod:`workers.keys`; these functions only build the KEYS and
ARGV lists in the order each script expects.
"""

from __future__ import annotations

from workers import keys
from workers.findings_index import DOCS_MAX

# KEYS: meta, queue, tasks, counts, seed result, seed claim
# ARGV: task id, pool, source, now
# Returns 1 if enqueued, 0 if already known / claimed elsewhere / has a result.
ENQUEUE = """
if redis.call('EXISTS', KEYS[5]) == 1 or redis.call('EXISTS', KEYS[6]) == 1 then
  return 0
end
if redis.call('HSETNX', KEYS[1], 'state', 'queued') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'pool', ARGV[2], 'source', ARGV[3],
           'submitted', ARGV[4], 'attempts', 0)
redis.call('XADD', KEYS[2], '*', 'task', ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'queued', 1)
return 1
"""

# KEYS: meta, seed claim, seed result, counts, tasks
# ARGV: worker (claim value), claim ttl seconds, now, max attempts, task id
# Returns 'run', 'done' (nothing to do), 'exhausted' (attempts used up: dead-letter it),
# or 'taken:<owner>' (another worker has it: a seed-style one, or another swarm's). A
# task submitted to this swarm is then marked 'elsewhere'; one it only heard of the
# seed's way is forgotten (the winner keeps the only record).
START = """
local state = redis.call('HGET', KEYS[1], 'state')
-- someone else has it, or had it (a seed-style worker, another swarm): not ours to run
local function not_ours(owner)
  if state ~= 'queued' then return end
  redis.call('HINCRBY', KEYS[4], 'queued', -1)
  if redis.call('HGET', KEYS[1], 'source') == 'submit' then
    redis.call('HINCRBY', KEYS[4], 'elsewhere', 1)
    redis.call('HSET', KEYS[1], 'state', 'elsewhere', 'worker', owner or '')
  else
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[5], ARGV[5])
  end
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  not_ours(redis.call('GET', KEYS[2]))
  return 'done'
end
if state == 'done' or state == 'failed' or state == 'dead' then return 'done' end
if tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') >= tonumber(ARGV[4]) then
  return 'exhausted'
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then
  local owner = redis.call('GET', KEYS[2])
  if owner == ARGV[1] and state == 'running' then
    return 'run'  -- our own claim, asked again after a lost reply: not a new attempt
  end
  if owner ~= ARGV[1] then
    not_ours(owner)
    return 'taken:' .. (owner or '')
  end
end
if state == 'queued' then
  redis.call('HINCRBY', KEYS[4], 'queued', -1)
  redis.call('HINCRBY', KEYS[4], 'running', 1)
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 'run'
"""

# KEYS: meta, seed result, finding, counts, queue, dead list, run, run's findings
#       stream, run's finding set (the last three only used for a task of a run), the
#       findings' search documents
# ARGV: finding id, finding json, status (done|failed|handed_back), now, entry id, group,
#       task id, error, dead-letter json ('' for none), dead maxlen, role in a run ('':
#       none, 'child': a task the lead handed out, 'lead': the run's own task), the
#       run's final state (for the lead: done|partial|failed), the finding's search
#       document, how many documents are kept
# A child's finish releases what its hand-out reserved and tells the lead (its stream);
# the lead's finish ends the run. Both with the result, so exactly once.
# Returns 1 if this call recorded the result, 0 if the task already had one.
FINISH = """
redis.call('XACK', KEYS[5], ARGV[6], ARGV[5])
redis.call('XDEL', KEYS[5], ARGV[5])
if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('LPUSH', KEYS[10], ARGV[13])
redis.call('LTRIM', KEYS[10], 0, tonumber(ARGV[14]) - 1)
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' then redis.call('HINCRBY', KEYS[4], 'running', -1)
elseif state == 'queued' then redis.call('HINCRBY', KEYS[4], 'queued', -1) end
local final = ARGV[3]
if ARGV[9] ~= '' then
  final = 'dead'
  redis.call('LPUSH', KEYS[6], ARGV[9])
  redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[10]) - 1)
  redis.call('HINCRBY', KEYS[4], 'failed', 1)
end
redis.call('HINCRBY', KEYS[4], final, 1)
redis.call('HSET', KEYS[1], 'state', final, 'finished', ARGV[4], 'finding', ARGV[1],
           'error', ARGV[8])
if ARGV[11] == 'child' then
  local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserve') or '0')
  if reserved > 0 then
    redis.call('HINCRBY', KEYS[7], 'reserved_nano', -reserved)
    redis.call('HSET', KEYS[1], 'reserve', 0)
  end
  redis.call('HINCRBY', KEYS[7], 'finished', 1)
  redis.call('XADD', KEYS[8], '*', 'task', ARGV[7], 'finding', ARGV[1], 'status', final)
  redis.call('SADD', KEYS[9], ARGV[1])
elseif ARGV[11] == 'lead' then
  local run_state = ARGV[12]
  if final == 'dead' then run_state = 'failed' end
  redis.call('HSET', KEYS[7], 'state', run_state, 'finding', ARGV[1], 'finished_at', ARGV[4],
             'error', ARGV[8])
end
redis.call('PUBLISH', 'channel:findings', ARGV[1])
redis.call('PUBLISH', 'channel:completions', ARGV[7])
return 1
"""

# A task handed back by a worker of a pool with ``escalate_to``, outside any run: moved
# to the escalation pool's queue as a new try there (its attempts start again; the
# payload already says why it came back and where it has been).
# KEYS: meta, seed claim, counts, this pool's queue, the escalation pool's queue, payload
# ARGV: entry id, group, task id, claim value, escalation pool, reason, new payload
# Returns 1 if moved, 0 if the task was no longer ours (its delivery taken back).
ESCALATE = """
if redis.call('XACK', KEYS[4], ARGV[2], ARGV[1]) == 0 then return 0 end
redis.call('XDEL', KEYS[4], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' then
  redis.call('HINCRBY', KEYS[3], 'running', -1)
  redis.call('HINCRBY', KEYS[3], 'queued', 1)
end
local from = redis.call('HGET', KEYS[1], 'pool') or ''
redis.call('HSET', KEYS[1], 'state', 'queued', 'pool', ARGV[5], 'attempts', 0,
           'escalated_from', from, 'error', ARGV[6])
redis.call('SET', KEYS[6], ARGV[7])
redis.call('XADD', KEYS[5], '*', 'task', ARGV[3])
return 1
"""

# Hand a dead worker's delivery back to the queue (at-least-once). Whoever calls it
# first for a delivery hands it back; a second caller (another supervisor that saw the
# same dead worker) finds it acknowledged already and does nothing.
# KEYS: meta, seed result, seed claim, counts, queue
# ARGV: entry id, group, task id, claim value of the dead worker, attempts change (-1:
#       the worker was stopped cleanly, this try does not count; 1: it failed before
#       START counted it; 0), why it came back
# Returns 'requeued', 'done' (already recorded) or 'gone' (handed back by someone else).
HAND_BACK = """
if redis.call('XACK', KEYS[5], ARGV[2], ARGV[1]) == 0 then return 'gone' end
redis.call('XDEL', KEYS[5], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return 'done' end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'failed' or state == 'dead' or state == 'elsewhere' then
  return 'done'
end
if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
local change = tonumber(ARGV[5])
if (change < 0 and state == 'running') or change > 0 then
  redis.call('HINCRBY', KEYS[1], 'attempts', change)
end
if state == 'running' then
  redis.call('HINCRBY', KEYS[4], 'running', -1)
  redis.call('HINCRBY', KEYS[4], 'queued', 1)
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'error', ARGV[6])
redis.call('XADD', KEYS[5], '*', 'task', ARGV[3])
return 'requeued'
"""


# Forget a consumer that has nothing pending. (XGROUP DELCONSUMER drops the consumer's
# pending entries with it: never for one that still has some.)
# KEYS: queue; ARGV: group, consumer. Returns 1 if it was deleted.
FORGET_CONSUMER = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) and 1 or 0
"""


def enqueue_args(swarm: str, pool: str, task_id: str, source: str,
                 now: float) -> tuple[list[str], list[str]]:
    return (
        [keys.task_meta(swarm, task_id), keys.queue(swarm, pool), keys.tasks(swarm),
         keys.counts(swarm), keys.task_result(task_id), keys.task_claimed(task_id)],
        [task_id, pool, source, f"{now:.6f}"],
    )


def start_args(swarm: str, task_id: str, claimant: str, ttl: int, now: float,
               max_attempts: int) -> tuple[list[str], list[str]]:
    return (
        [keys.task_meta(swarm, task_id), keys.task_claimed(task_id),
         keys.task_result(task_id), keys.counts(swarm), keys.tasks(swarm)],
        [claimant, str(ttl), f"{now:.6f}", str(max_attempts), task_id],
    )


def finish_args(swarm: str, pool: str, task_id: str, entry_id: str, finding_id: str,
                finding_json: str, status: str, error: str, dead_json: str,
                now: float, run_id: str = "", role: str = "", run_state: str = "",
                document: str = "") -> tuple[list[str], list[str]]:
    """``run_id`` and ``role`` ('child' or 'lead') for a task of a run; ``run_state``
    the run's end (the lead's task); ``document`` the finding's search document."""
    return (
        [keys.task_meta(swarm, task_id), keys.task_result(task_id), keys.finding(finding_id),
         keys.counts(swarm), keys.queue(swarm, pool), keys.dead(swarm),
         keys.run(swarm, run_id), keys.run_events(swarm, run_id),
         keys.run_findings(swarm, run_id), keys.finding_docs(swarm)],
        [finding_id, finding_json, status, f"{now:.6f}", entry_id, keys.GROUP, task_id,
         error, dead_json, str(keys.DEAD_MAXLEN), role if run_id else "", run_state,
         document or finding_id, str(DOCS_MAX)],
    )


def escalate_args(swarm: str, pool: str, to_pool: str, task_id: str, entry_id: str,
                  claimant: str, reason: str,
                  new_payload: str) -> tuple[list[str], list[str]]:
    return (
        [keys.task_meta(swarm, task_id), keys.task_claimed(task_id), keys.counts(swarm),
         keys.queue(swarm, pool), keys.queue(swarm, to_pool), keys.task(task_id)],
        [entry_id, keys.GROUP, task_id, claimant, to_pool, reason, new_payload],
    )


def hand_back_args(swarm: str, pool: str, task_id: str, entry_id: str, claimant: str,
                   refund: bool, reason: str,
                   charge: bool = False) -> tuple[list[str], list[str]]:
    """``refund``: the try does not count (a clean stop); ``charge``: it failed before
    START counted it, count it now."""
    change = "-1" if refund else "1" if charge else "0"
    return (
        [keys.task_meta(swarm, task_id), keys.task_result(task_id),
         keys.task_claimed(task_id), keys.counts(swarm), keys.queue(swarm, pool)],
        [entry_id, keys.GROUP, task_id, claimant, change, reason],
    )
