"""The ledger's Lua scripts: record a call's usage, count a dead worker's calls as lost,
admit a call under the swarm-wide rate limits, and hold every worker back after a 429.
The counters they write are ``{dim}|{key}|{metric}`` fields (workers/ledger_format.py).

Key names always come from :mod:`workers.keys`; these functions only build the KEYS and
ARGV lists in the order each script expects.
"""

from __future__ import annotations

from workers import keys

# One API response, recorded at once: settle its in-flight entry and add its tokens and
# cost to every dimension, in the totals and in this minute's bucket.
# (The seed's float counter, cost:{family}, is updated beside this script in the same
# MULTI: INCRBYFLOAT called from Lua corrupts the heap of Redis 6.2, the embedded one.)
# KEYS: inflight, ledger, minute bucket, task meta, task costs
# ARGV: in-flight field, worker, pool, model, task, input, output, cache_write,
#       cache_read, nano (-1: unknown model), ref_nano (-1: unknown), host, bucket ttl,
#       cache_write_1h (part of cache_write), nocache_nano (the same tokens with no cache
#       read or written; -1: unknown), cache miss reason ('' if none was said), run ('' if
#       the task is in none), guard ('1': record nothing, return 0, if the field was no
#       longer in flight: a batch result another collector recorded), batch ('1': a
#       Message Batches call, priced at batch rates), std_nano (a batch call's tokens at
#       standard prices, -1: unknown)
RECORD = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 and ARGV[18] == '1' then return 0 end
local dims = {'total|*', 'worker|' .. ARGV[2], 'pool|' .. ARGV[3], 'model|' .. ARGV[4],
              'host|' .. ARGV[12]}
if ARGV[17] ~= '' then dims[#dims + 1] = 'run|' .. ARGV[17] end
local counts = {input = ARGV[6], output = ARGV[7], cache_write = ARGV[8],
                cache_read = ARGV[9], cache_write_1h = ARGV[14]}
local nano, ref, nocache = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[15])
for _, hash in ipairs({KEYS[2], KEYS[3]}) do
  for _, d in ipairs(dims) do
    redis.call('HINCRBY', hash, d .. '|calls', 1)
    for name, value in pairs(counts) do
      local n = tonumber(value)
      if n ~= 0 then redis.call('HINCRBY', hash, d .. '|' .. name, n) end
    end
    if nano >= 0 then redis.call('HINCRBY', hash, d .. '|nano', nano)
    else redis.call('HINCRBY', hash, d .. '|unpriced_calls', 1) end
    if ref >= 0 then redis.call('HINCRBY', hash, d .. '|ref_nano', ref) end
    if nocache >= 0 then redis.call('HINCRBY', hash, d .. '|nocache_nano', nocache) end
    if ARGV[16] ~= '' then redis.call('HINCRBY', hash, d .. '|miss_' .. ARGV[16], 1) end
    if ARGV[19] == '1' then
      redis.call('HINCRBY', hash, d .. '|batch_calls', 1)
      if nano >= 0 then redis.call('HINCRBY', hash, d .. '|batch_nano', nano) end
      if tonumber(ARGV[20]) >= 0 then
        redis.call('HINCRBY', hash, d .. '|batch_std_nano', ARGV[20])
      end
    end
  end
end
redis.call('EXPIRE', KEYS[3], ARGV[13])
local read, side = tonumber(ARGV[9]), tonumber(ARGV[6]) + tonumber(ARGV[8]) + tonumber(ARGV[9])
redis.call('HINCRBY', KEYS[4], 'calls', 1)
redis.call('HINCRBY', KEYS[4], 'tokens', side + tonumber(ARGV[7]))
redis.call('HINCRBY', KEYS[4], 'input_side', side)
if read ~= 0 then redis.call('HINCRBY', KEYS[4], 'cache_read', read) end
if tonumber(ARGV[7]) ~= 0 then redis.call('HINCRBY', KEYS[4], 'output', ARGV[7]) end
if tonumber(ARGV[8]) ~= 0 then redis.call('HINCRBY', KEYS[4], 'cache_write', ARGV[8]) end
if ref >= 0 then redis.call('HINCRBY', KEYS[4], 'ref_nano', ref) end
if nano >= 0 then
  redis.call('HINCRBY', KEYS[4], 'nano', nano)
  redis.call('ZINCRBY', KEYS[5], nano, ARGV[5])
end
if nocache >= 0 then redis.call('HINCRBY', KEYS[4], 'nocache_nano', nocache) end
return 1
"""

# The calls a dead consumer had in flight: counted as lost (how many, and an upper bound
# on what they cost), never dropped.
# KEYS: inflight, ledger, minute bucket, reserved
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
    if call.run and call.run ~= '' then dims[#dims + 1] = 'run|' .. call.run end
    for _, hash in ipairs({KEYS[2], KEYS[3]}) do
      for _, d in ipairs(dims) do
        redis.call('HINCRBY', hash, d .. '|lost_calls', 1)
        redis.call('HINCRBY', hash, d .. '|lost_bound_nano', call.bound)
      end
    end
    if call.reserved then  -- a batch request's worst case, reserved against budgets
      redis.call('HINCRBY', KEYS[4], 'total', -tonumber(call.reserved))
      redis.call('HINCRBY', KEYS[4], 'pool|' .. call.pool, -tonumber(call.reserved))
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
    return ([keys.inflight(swarm), keys.ledger(swarm), keys.ledger_minute(swarm, int(now // 60)),
             keys.reserved(swarm)],
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
