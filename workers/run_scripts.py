"""The Lua scripts of a run (workers/lead.py): start it, and hand out one task within
its limits. Each runs atomically, so the limits hold however many hand-outs race, and a
hand-out asked again (a lead resumed from its checkpoint) is the same hand-out.

A task's end (releasing its reservation, telling the lead) is in FINISH
(workers/scripts.py), with its result, so it happens exactly once.
"""

from __future__ import annotations

from workers import keys, ledger_format

# KEYS: run, runs index
# ARGV: run id, goal, lead pool, now, lead task id, then the default limits as
#       name, value pairs (set only where the run has none)
# The run is created if nobody did (a goal submitted straight to a lead pool), its
# defaults filled in, and it is marked running. Returns the run's state before.
BEGIN = """
local before = redis.call('HGET', KEYS[1], 'state') or ''
if redis.call('HSETNX', KEYS[1], 'id', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'goal', ARGV[2], 'pool', ARGV[3], 'created', ARGV[4],
             'task', ARGV[5], 'handed', 0, 'finished', 0, 'reserved_nano', 0)
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
end
for i = 6, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
if before == '' or before == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[4])
end
return before
"""

# KEYS: run, ledger, task meta, pool queue, tasks index, counts, seed result, seed
#       claim, payload, run's task list
# ARGV: task id, pool, now, worst case (nano), kept back for the lead's last call
#       (nano), payload json, the ledger fields of the run's spend and of its calls
#       lost in flight
# Returns {'ok'} (handed out now), {'again'} (handed out before: a resumed lead asking
# again) or {'refused', why}. A refusal that no task ending could lift (max_tasks; the
# budget even with nothing reserved) is the run's limit, recorded in it (partial).
HAND_OUT = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[7]) == 1 then
  return {'again'}
end
local run = redis.call('HMGET', KEYS[1], 'state', 'budget_nano', 'reserved_nano',
                       'handed', 'finished', 'max_tasks', 'max_in_flight')
local state = run[1]
if state ~= 'running' then return {'refused', 'the run is ' .. (state or 'unknown')} end
local budget, reserved = tonumber(run[2] or '0'), tonumber(run[3] or '0')
local handed, finished = tonumber(run[4] or '0'), tonumber(run[5] or '0')
local max_tasks, max_in_flight = tonumber(run[6] or '0'), tonumber(run[7] or '0')
local function refuse(why)
  redis.call('HSETNX', KEYS[1], 'limit', why)
  return {'refused', why}
end
if max_tasks > 0 and handed >= max_tasks then
  return refuse('max_tasks: the run has handed out ' .. handed .. ' tasks, its most')
end
if max_in_flight > 0 and handed - finished >= max_in_flight then
  return {'refused', 'max_in_flight: ' .. (handed - finished) ..
          ' tasks are in flight, the most at once; wait for findings first'}
end
local worst, keep = tonumber(ARGV[4]), tonumber(ARGV[5])
if budget > 0 then
  local spent = tonumber(redis.call('HGET', KEYS[2], ARGV[7]) or '0') +
                tonumber(redis.call('HGET', KEYS[2], ARGV[8]) or '0')
  if spent + reserved + worst + keep > budget then
    local why = string.format(
      'budget: spent $%.6f + reserved for tasks in flight $%.6f + this task at worst ' ..
      '$%.6f + the final synthesis $%.6f is over the budget $%.6f',
      spent / 1e9, reserved / 1e9, worst / 1e9, keep / 1e9, budget / 1e9)
    if spent + worst + keep > budget then return refuse(why) end
    -- only what tasks in flight hold back stands in the way: not a limit of the run yet
    return {'refused', why .. '; tasks in flight hold the difference until they end: ' ..
            'wait for their findings, then hand it out again'}
  end
end
redis.call('HSET', KEYS[3], 'state', 'queued', 'id', ARGV[1], 'pool', ARGV[2],
           'source', 'run', 'submitted', ARGV[3], 'attempts', 0,
           'run', redis.call('HGET', KEYS[1], 'id'), 'reserve', worst)
redis.call('SET', KEYS[9], ARGV[6])
redis.call('XADD', KEYS[4], '*', 'task', ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[6], 'queued', 1)
redis.call('HINCRBY', KEYS[1], 'handed', 1)
redis.call('HINCRBY', KEYS[1], 'reserved_nano', worst)
redis.call('RPUSH', KEYS[10], ARGV[1])
redis.call('PUBLISH', 'channel:tasks', ARGV[1])
return {'ok'}
"""


def begin_args(swarm: str, run_id: str, goal: str, pool: str, now: float, task_id: str,
               defaults: dict[str, int]) -> tuple[list[str], list[str]]:
    pairs = [str(x) for name, value in defaults.items() for x in (name, value)]
    return ([keys.run(swarm, run_id), keys.runs(swarm)],
            [run_id, goal, pool, f"{now:.6f}", task_id, *pairs])


def hand_out_args(swarm: str, run_id: str, task_id: str, pool: str, now: float,
                  worst_nano: int, keep_nano: int,
                  payload: str) -> tuple[list[str], list[str]]:
    return (
        [keys.run(swarm, run_id), keys.ledger(swarm), keys.task_meta(swarm, task_id),
         keys.queue(swarm, pool), keys.tasks(swarm), keys.counts(swarm),
         keys.task_result(task_id), keys.task_claimed(task_id), keys.task(task_id),
         keys.run_tasks(swarm, run_id)],
        [task_id, pool, f"{now:.6f}", str(worst_nano), str(keep_nano), payload,
         ledger_format.field("run", run_id, "nano"),
         ledger_format.field("run", run_id, "lost_bound_nano")],
    )
