"""The Lua scripts that move a task between states. Each runs atomically in Redis, so a
task is enqueued once, claimed by one worker, and recorded once, whoever races.

Key names always come from :mod:`workers.keys`; these functions only build the KEYS and
ARGV lists in the order each script expects.
"""

from __future__ import annotations

from workers import keys

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

# KEYS: meta, seed result, finding, counts, queue, dead list
# ARGV: finding id, finding json, status (done|failed), now, entry id, group, task id,
#       error, dead-letter json ('' for none), dead maxlen
# Returns 1 if this call recorded the result, 0 if the task already had one.
FINISH = """
redis.call('XACK', KEYS[5], ARGV[6], ARGV[5])
redis.call('XDEL', KEYS[5], ARGV[5])
if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
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
redis.call('PUBLISH', 'channel:findings', ARGV[1])
redis.call('PUBLISH', 'channel:completions', ARGV[7])
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
                now: float) -> tuple[list[str], list[str]]:
    return (
        [keys.task_meta(swarm, task_id), keys.task_result(task_id), keys.finding(finding_id),
         keys.counts(swarm), keys.queue(swarm, pool), keys.dead(swarm)],
        [finding_id, finding_json, status, f"{now:.6f}", entry_id, keys.GROUP, task_id,
         error, dead_json, str(keys.DEAD_MAXLEN)],
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


# One API response, recorded at once: settle its in-flight entry and add its tokens and
# cost to every dimension, in the totals and in this minute's bucket.
# (The seed's float counter, cost:{family}, is updated beside this script in the same
# MULTI: INCRBYFLOAT called from Lua corrupts the heap of Redis 6.2, the embedded one.)
# KEYS: inflight, ledger, minute bucket, task meta, task costs
# ARGV: in-flight field, worker, pool, model, task, input, output, cache_write,
#       cache_read, nano (-1: unknown model), ref_nano (-1: unknown), host, bucket ttl
RECORD = """
redis.call('HDEL', KEYS[1], ARGV[1])
local dims = {'total|*', 'worker|' .. ARGV[2], 'pool|' .. ARGV[3], 'model|' .. ARGV[4],
              'host|' .. ARGV[12]}
local names = {'input', 'output', 'cache_write', 'cache_read'}
local nano, ref = tonumber(ARGV[10]), tonumber(ARGV[11])
for _, hash in ipairs({KEYS[2], KEYS[3]}) do
  for _, d in ipairs(dims) do
    redis.call('HINCRBY', hash, d .. '|calls', 1)
    for i, name in ipairs(names) do
      local n = tonumber(ARGV[5 + i])
      if n ~= 0 then redis.call('HINCRBY', hash, d .. '|' .. name, n) end
    end
    if nano >= 0 then redis.call('HINCRBY', hash, d .. '|nano', nano)
    else redis.call('HINCRBY', hash, d .. '|unpriced_calls', 1) end
    if ref >= 0 then redis.call('HINCRBY', hash, d .. '|ref_nano', ref) end
  end
end
redis.call('EXPIRE', KEYS[3], ARGV[13])
redis.call('HINCRBY', KEYS[4], 'calls', 1)
redis.call('HINCRBY', KEYS[4], 'tokens', tonumber(ARGV[6]) + tonumber(ARGV[7])
           + tonumber(ARGV[8]) + tonumber(ARGV[9]))
if nano >= 0 then
  redis.call('HINCRBY', KEYS[4], 'nano', nano)
  redis.call('ZINCRBY', KEYS[5], nano, ARGV[5])
end
return 1
"""

# The calls a dead consumer had in flight: counted as lost (how many, and an upper bound
# on what they cost), never dropped.
# KEYS: inflight, ledger, minute bucket
# ARGV: pattern of the fields ('{consumer}|*', or one call's field), bucket ttl
# Returns {calls, bound}.
LOSE = """
local cursor, calls, bound = '0', 0, 0
repeat
  local reply = redis.call('HSCAN', KEYS[1], cursor, 'MATCH', ARGV[1], 'COUNT', 500)
  cursor = reply[1]
  local items = reply[2]
  for i = 1, #items, 2 do
    local call = cjson.decode(items[i + 1])
    local dims = {'total|*', 'worker|' .. call.worker, 'pool|' .. call.pool,
                  'model|' .. call.model, 'host|' .. (call.host or '?')}
    for _, hash in ipairs({KEYS[2], KEYS[3]}) do
      for _, d in ipairs(dims) do
        redis.call('HINCRBY', hash, d .. '|lost_calls', 1)
        redis.call('HINCRBY', hash, d .. '|lost_bound_nano', call.bound)
      end
    end
    redis.call('HDEL', KEYS[1], items[i])
    calls = calls + 1
    bound = bound + call.bound
  end
until cursor == '0'
if calls > 0 then redis.call('EXPIRE', KEYS[3], ARGV[2]) end
return {calls, bound}
"""


def lose_args(swarm: str, pattern: str, now: float) -> tuple[list[str], list[str]]:
    return ([keys.inflight(swarm), keys.ledger(swarm), keys.ledger_minute(swarm, int(now // 60))],
            [pattern, str(keys.LEDGER_MINUTE_TTL)])


# Admit one API call under the swarm-wide limits of its model, and register it in flight.
# Buckets refill continuously at rpm requests and tpm tokens per minute and bank at most
# one second's worth, so the swarm's rate stays smooth, never a minute's burst at once.
# A 429 anywhere sets the cooldown key and holds every worker back.
# KEYS: bucket hash, cooldown key, inflight hash
# ARGV: rpm (0: none), tpm (0: none), tokens wanted, in-flight field, in-flight json
# Returns 0 (admitted and registered) or the milliseconds to wait before asking again.
ACQUIRE = """
local cooldown = redis.call('PTTL', KEYS[2])
if cooldown > 0 then return cooldown end
local rpm, tpm, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait, levels = 0, {}
for _, b in ipairs({{'req', rpm, 1}, {'tok', tpm, want}}) do
  local name, limit = b[1], b[2]
  if limit > 0 then
    local rate = limit / 60000
    local cap = math.max(1, limit / 60)
    local need = math.min(b[3], cap)
    local level = tonumber(redis.call('HGET', KEYS[1], name) or cap)
    local since = tonumber(redis.call('HGET', KEYS[1], name .. '_at') or now)
    level = math.min(cap, level + (now - since) * rate)
    levels[name] = level - need
    if level < need then wait = math.max(wait, math.ceil((need - level) / rate)) end
  end
end
if wait > 0 then return wait end
for name, level in pairs(levels) do
  redis.call('HSET', KEYS[1], name, level, name .. '_at', now)
end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
return 0
"""

# After a 429: hold every worker back for at least ``ms`` (never shortens a longer one).
# KEYS: cooldown key; ARGV: ms
COOL_DOWN = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '429', 'PX', ARGV[1])
end
return 0
"""


# A supervisor takes its host's lease, unless a live one holds it. ``replace`` names the
# holder (``pid boot``) a caller has seen to be dead on this very machine.
# KEYS: host lease; ARGV: pid, boot, now, lease ms, replace ('' for none)
# Returns 'ok', or {pid, boot} of the live holder.
CLAIM_HOST = """
local held = redis.call('HMGET', KEYS[1], 'pid', 'boot')
if held[1] and ARGV[5] ~= held[1] .. ' ' .. (held[2] or '') then
  return {held[1], held[2] or ''}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'pid', ARGV[1], 'boot', ARGV[2], 'state', 'starting',
           'started', ARGV[3], 'tick', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 'ok'
"""

# A host leaves its swarm cleanly: its lease, slots and pools go; the last host to
# leave marks the swarm stopped. (The other hosts' leases are looked up by name.)
# KEYS: hosts, host lease, host slots, host pools, meta
# ARGV: host, prefix of every host's lease key, now
# Returns 1 if the swarm is now stopped, 0 if another host still runs it.
LEAVE = """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
for _, other in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[2] .. other) == 1 then return 0 end
end
redis.call('HSET', KEYS[5], 'state', 'stopped', 'stopped', ARGV[3])
return 1
"""


def claim_host_args(swarm: str, host: str, pid: int, boot: str, now: float,
                    replace: str = "") -> tuple[list[str], list[str]]:
    return ([keys.host(swarm, host)],
            [str(pid), boot, f"{now:.3f}", str(keys.HOST_LEASE_MS), replace])


def leave_args(swarm: str, host: str, now: float) -> tuple[list[str], list[str]]:
    return ([keys.hosts(swarm), keys.host(swarm, host), keys.host_slots(swarm, host),
             keys.host_pools(swarm, host), keys.meta(swarm)],
            [host, keys.host(swarm, ""), f"{now:.3f}"])
