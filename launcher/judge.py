"""The supervisor's judgements, as pure functions: from what it read (leases, samples,
ledger counters) and the time, which workers are hung or over memory and which budgets
are spent. They decide; the supervisor acts on their verdicts. No process or Redis here,
so each rule is tested on its own (tests/test_judge.py).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from launcher.slot import FATAL, HUNG, KILLING, RETIRING, STOPPING, Slot, SlotState
from workers.budgets import Budget


@dataclass(frozen=True)
class Kill:
    """Kill this worker's process tree: why, what it becomes meanwhile, and the polite
    signal that goes first (SIGABRT makes a hung worker dump its stack)."""

    slot: Slot
    state: SlotState
    reason: str
    polite: int


def first_beats(live: Sequence[Slot], leases: Sequence[str | None]) -> list[Slot]:
    """The live workers whose lease is there for the first time since they started."""
    return [slot for slot, lease in zip(live, leases)
            if lease is not None and slot.pid is not None and not slot.seen_beat]


def hung(live: Sequence[Slot], leases: Sequence[str | None], now: float,
         redis_ok_since: float, expiry: Callable[[Slot], float]) -> list[Kill]:
    """A live worker whose lease is gone is hung, once it has had a full expiry since it
    was forked (its boot) and since Redis was last unreachable (its chance to beat);
    one already being killed, or leaving, is not judged again."""
    found = []
    for slot, lease in zip(live, leases):
        if lease is not None or slot.pid is None:
            continue
        if slot.state in (HUNG, KILLING, STOPPING, RETIRING):
            continue
        wait = expiry(slot)
        if now - max(slot.started_at, redis_ok_since) < wait:
            continue
        found.append(Kill(slot, HUNG, f"hung: no heartbeat for {wait:g}s", signal.SIGABRT))
    return found


def over_memory(live: Sequence[Slot], limit: Callable[[Slot], int | None]) -> list[Kill]:
    """A worker whose process tree's last sampled RSS is over its pool's limit."""
    found = []
    for slot in live:
        cap = limit(slot)
        if cap is None or slot.state in (HUNG, KILLING) or slot.rss <= cap:
            continue
        found.append(Kill(slot, KILLING, f"memory: RSS {slot.rss} bytes over limit {cap}",
                          signal.SIGTERM))
    return found


def spent(budgets: Sequence[Budget], values: Sequence[str | None],
          already: set[str]) -> list[tuple[Budget, str]]:
    """Budgets used up that were not yet said (``already`` holds their ``who``), each
    with its pause reason."""
    found = []
    for budget, value in zip(budgets, values):
        reason = budget.reached(int(value or 0))
        if reason is not None and budget_said(budget) not in already:
            found.append((budget, reason))
    return found


def budget_said(budget: Budget) -> str:
    """What a pause for ``budget`` is remembered by: who, and how much (a budget raised
    with `swarm budget` is judged anew)."""
    return f"{budget.who}|{budget.usd!r}"



def readiness(slots: Sequence[Slot]) -> tuple[bool, str | None]:
    """Whether `swarm up -d` may return: every slot beat once or gave up (FATAL); and
    then the problem to report, if some gave up."""
    if [s for s in slots if s.state != FATAL and not s.seen_beat]:
        return False, None
    fatal = [s for s in slots if s.state == FATAL]
    if not fatal:
        return True, None
    return True, f"{len(fatal)} worker(s) FATAL: " + "; ".join(
        f"{s.worker_id}: {s.last_exit}" for s in fatal[:3])
