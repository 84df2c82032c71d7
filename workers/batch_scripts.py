"""The Lua scripts of batch pools: reserve a batch's worst case against the budgets,
register a batch once it exists, let a worker adopt a dead one's batch, and settle or
fail each request of a batch exactly once.

Key names come from :mod:`workers.keys`; the ``*_args`` functions build KEYS and ARGV in
the order each script expects.
"""

from __future__ import annotations

from workers import keys, ledger_format

# Reserve the worst case of as many of a batch's requests, in order, as fit the swarm's
# and the pool's budgets with what is spent and what other batches reserved; each one
# reserved says so in its in-flight entry (``reserved``), so that whoever settles,
# withdraws or loses it gives its reservation back.
# KEYS: ledger, reserved, inflight
# ARGV: swarm budget nano (-1: none), pool budget nano (-1: none), the ledger's total
#       nano field, the pool's nano field, the pool, then each request's in-flight field
# Returns {requests reserved, reserved by others before (swarm), spent (swarm),
#          reserved before (pool), spent (pool)}.
RESERVE = """
local spent_t = tonumber(redis.call('HGET', KEYS[1], ARGV[3]) or '0')
local spent_p = tonumber(redis.call('HGET', KEYS[1], ARGV[4]) or '0')
local pool_field = 'pool|' .. ARGV[5]
local res_t = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
local res_p = tonumber(redis.call('HGET', KEYS[2], pool_field) or '0')
local cap_t, cap_p = tonumber(ARGV[1]), tonumber(ARGV[2])
local n, sum = 0, 0
for i = 6, #ARGV do
  local entry = redis.call('HGET', KEYS[3], ARGV[i])
  if entry then
    local call = cjson.decode(entry)
    local b = tonumber(call.bound)
    if (cap_t >= 0 and spent_t + res_t + sum + b > cap_t) or
       (cap_p >= 0 and spent_p + res_p + sum + b > cap_p) then break end
    call.reserved = b
    redis.call('HSET', KEYS[3], ARGV[i], cjson.encode(call))
    sum = sum + b
  end
  n = n + 1
end
if sum > 0 then
  redis.call('HINCRBY', KEYS[2], 'total', sum)
  redis.call('HINCRBY', KEYS[2], pool_field, sum)
end
return {n, res_t, spent_t, res_p, spent_p}
"""


def reserve_args(swarm: str, pool: str, swarm_cap: int | None, pool_cap: int | None,
                 fields: list[str]) -> tuple[list[str], list[object]]:
    return ([keys.ledger(swarm), keys.reserved(swarm), keys.inflight(swarm)],
            [-1 if swarm_cap is None else swarm_cap, -1 if pool_cap is None else pool_cap,
             ledger_format.field("total", "*", "nano"),
             ledger_format.field("pool", pool, "nano"), pool, *fields])


BATCH_CALL = "batch|"  # a batch request's in-flight field is this and its custom_id (SENT)


def batch_call(custom_id: str) -> str:
    return BATCH_CALL + custom_id


# The lines that give back what an in-flight entry (``call``, decoded) reserved.
_RELEASE = """
if call.reserved then
  redis.call('HINCRBY', KEYS[2], 'total', -tonumber(call.reserved))
  redis.call('HINCRBY', KEYS[2], 'pool|' .. call.pool, -tonumber(call.reserved))
end
"""

# A request never sent, or refused: not billed; out of flight, its reservation given
# back. KEYS: inflight, reserved; ARGV: in-flight field. Returns 1 if it was in flight.
WITHDRAW = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
local call = cjson.decode(entry)
""" + _RELEASE + """
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


# A batch exists: register it (the pool's open batches, its owner), move each request's
# in-flight entry from the consumer's name to the batch's (a dead worker's batch requests
# are collected by its successor, not counted lost), and note the batch in each task's
# checkpoint that still waits on that request.
# KEYS: inflight, batches of the pool, the batch's hash, then each request's checkpoint
# ARGV: batch id, created (unix s), pool, owner consumer, checkpoint ttl, then per
#       request: its old in-flight field, its custom_id
SENT = """
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], 'pool', ARGV[3], 'owner', ARGV[4], 'created', ARGV[2],
           'requests', #KEYS - 3, 'open', #KEYS - 3)
for i = 4, #KEYS do
  local old, cid = ARGV[6 + (i - 4) * 2], ARGV[7 + (i - 4) * 2]
  local entry = redis.call('HGET', KEYS[1], old)
  if entry then
    local call = cjson.decode(entry)
    call.batch = ARGV[1]
    redis.call('HDEL', KEYS[1], old)
    redis.call('HSET', KEYS[1], 'batch|' .. cid, cjson.encode(call))  -- BATCH_CALL
  end
  if redis.call('HGET', KEYS[i], 'cid') == cid then
    redis.call('HSET', KEYS[i], 'status', 'sent', 'batch', ARGV[1])
    redis.call('EXPIRE', KEYS[i], ARGV[5])
  end
end
return 1
"""


# Poll a batch: its owner's, or anyone's of the pool once the owner's lease is gone.
# KEYS: the batch's hash, the owner's lease (the caller read the owner first), ARGV: me
# Returns 1 if the batch is this consumer's to poll now, 0 if not, -1 if it is gone.
ADOPT = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return -1 end
if owner == ARGV[1] then return 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
return 1
"""

# One request's result, before RECORD (same MULTI): if it is still in flight, give back
# its reservation and, if its task still waits on it, store what came back in the
# task's checkpoint. A failed request (errored, expired, canceled: not billed) is also
# taken out of flight here.
# KEYS: inflight, reserved, the task's checkpoint, the batch's hash
# ARGV: in-flight field, custom_id, status ('answered' or 'failed'), then field/value
#       pairs for the checkpoint
# Returns 1 if the request was in flight (RECORD then records it), else 0.
SETTLE = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
local call = cjson.decode(entry)
""" + _RELEASE + """
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('HINCRBY', KEYS[4], 'open', -1) end
if ARGV[3] == 'failed' then redis.call('HDEL', KEYS[1], ARGV[1]) end
if redis.call('HGET', KEYS[3], 'cid') == ARGV[2] then
  redis.call('HSET', KEYS[3], 'status', ARGV[3])
  for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


# A batch whose results were all read: forget it.
# KEYS: batches of the pool, the batch's hash; ARGV: batch id
DONE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""
