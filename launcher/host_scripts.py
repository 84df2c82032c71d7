"""The Lua scripts of a host's place in its swarm: take its lease, leave, and clear the
pauses that were budgets when it starts (they are judged again against its spec).

Key names always come from :mod:`workers.keys`.
"""

from __future__ import annotations

from workers import budgets, keys

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


# A pause that was a budget is cleared (judged again against this spec's budgets); a
# spend-limit pause stays until `swarm resume`.
# KEYS: pause flag; ARGV: the budget reasons' prefix
CLEAR_BUDGET_PAUSE = """
local reason = redis.call('GET', KEYS[1])
if reason and string.sub(reason, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""


def clear_budget_pause_args(swarm: str, pool: str | None) -> tuple[list[str], list[str]]:
    return [keys.paused(swarm, pool)], [budgets.PREFIX]
