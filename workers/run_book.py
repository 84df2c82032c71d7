"""A run's record as its lead reads and changes it: start it, see its limits and spend,
hand out one task, check citations, keep the lead's checkpoint. Spend comes from the
ledger's run counters (every call of the lead and of its tasks, the moment it is paid);
hand-outs go through the HAND_OUT script, which keeps the limits atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from workers import keys, ledger_format, run_scripts


@dataclass
class RunView:
    state: str
    budget: int  # nano-dollars; 0: none
    spent: int  # paid, and the upper bound of calls lost in flight
    reserved: int  # the worst cases of the tasks in flight
    handed: int
    finished: int
    max_tasks: int
    max_in_flight: int
    limit: str  # the first limit that refused work ('' if none)

    @property
    def in_flight(self) -> int:
        return self.handed - self.finished

    def affords(self, nano: int) -> bool:
        return not self.budget or self.spent + self.reserved + nano <= self.budget


class RunBook:
    def __init__(self, redis: Any, swarm: str, run_id: str) -> None:
        self.redis = redis
        self.swarm = swarm
        self.run_id = run_id
        self.key = keys.run(swarm, run_id)
        self._begin = redis.register_script(run_scripts.BEGIN)
        self._hand_out = redis.register_script(run_scripts.HAND_OUT)

    async def begin(self, goal: str, pool: str, task_id: str, defaults: dict[str, int]) -> str:
        """Mark the run running (creating its record for a goal sent straight to a lead
        pool); returns its state before."""
        k, a = run_scripts.begin_args(self.swarm, self.run_id, goal[:2000], pool, time.time(),
                                      task_id, defaults)
        return str(await self._begin(keys=k, args=a))

    async def view(self) -> RunView:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.key, "state", "budget_nano", "reserved_nano", "handed", "finished",
                   "max_tasks", "max_in_flight", "limit")
        pipe.hmget(keys.ledger(self.swarm), ledger_format.field("run", self.run_id, "nano"),
                   ledger_format.field("run", self.run_id, "lost_bound_nano"))
        (state, budget, reserved, handed, finished, max_tasks, max_in_flight,
         limit), (nano, lost) = await pipe.execute()
        return RunView(state or "", _int(budget), _int(nano) + _int(lost), _int(reserved),
                       _int(handed), _int(finished), _int(max_tasks), _int(max_in_flight),
                       limit or "")

    async def hand_out(self, task_id: str, pool: str, worst: int, keep: int,
                       payload: dict[str, Any]) -> tuple[str, str]:
        """('ok' | 'again' | 'refused', why)."""
        k, a = run_scripts.hand_out_args(self.swarm, self.run_id, task_id, pool, time.time(),
                                         worst, keep, json.dumps(payload))
        reply = await self._hand_out(keys=k, args=a)
        return str(reply[0]), str(reply[1]) if len(reply) > 1 else ""

    async def note_limit(self, why: str) -> None:
        await self.redis.hsetnx(self.key, "limit", why)

    async def foreign(self, finding_ids: list[str]) -> list[str]:
        """The ids among ``finding_ids`` that are not findings of this run."""
        if not finding_ids:
            return []
        known = await self.redis.smismember(keys.run_findings(self.swarm, self.run_id),
                                            finding_ids)
        return [fid for fid, ok in zip(finding_ids, known) if not ok]

    async def findings(self) -> list[str]:
        return sorted(await self.redis.smembers(keys.run_findings(self.swarm, self.run_id)))

    # --- the lead's checkpoint -----------------------------------------------------------

    async def load(self) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.run_checkpoint(self.swarm, self.run_id))
        return json.loads(raw) if raw else None

    async def save(self, state: dict[str, Any]) -> None:
        await self.redis.set(keys.run_checkpoint(self.swarm, self.run_id),
                             json.dumps(state, separators=(",", ":")), ex=keys.RUN_TTL)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
