"""The supervisor's judgements, without processes or Redis: which workers are hung or
over memory, which budgets are spent, when `swarm up -d` may return."""

from __future__ import annotations

import signal

from launcher import judge
from launcher.slot import FATAL, HUNG, KILLING, RETIRING, RUNNING, STARTING, STOPPING, Slot
from launcher.spec import Restart
from workers.budgets import budgets, is_budget_pause


def slot(index: int, pid: int | None = 100, started_at: float = 0.0, state: str = RUNNING,
         seen_beat: bool = True, rss: int = 0) -> Slot:
    made = Slot("a", index, Restart())
    made.pid, made.started_at, made.state = pid, started_at, state  # type: ignore[assignment]
    made.seen_beat, made.rss = seen_beat, rss
    return made


def expiry(_slot: Slot) -> float:
    return 10.0


def test_a_worker_is_hung_once_its_lease_is_gone_for_a_full_expiry() -> None:
    fresh, old, beating = slot(1, started_at=95.0), slot(2, started_at=0.0), slot(3)
    kills = judge.hung([fresh, old, beating], [None, None, "2026-11-28T12:00:00"], now=100.0,
                       redis_ok_since=0.0, expiry=expiry)
    assert [(k.slot.index, k.state, k.polite) for k in kills] == [(2, HUNG, signal.SIGABRT)]
    assert kills[0].reason == "hung: no heartbeat for 10s"


def test_no_worker_is_hung_while_redis_was_away_less_than_an_expiry_ago() -> None:
    kills = judge.hung([slot(1)], [None], now=100.0, redis_ok_since=95.0, expiry=expiry)
    assert kills == []
    assert len(judge.hung([slot(1)], [None], now=100.0, redis_ok_since=89.0,
                          expiry=expiry)) == 1


def test_workers_being_killed_or_leaving_are_not_judged_again() -> None:
    leaving = [slot(i, state=state) for i, state in enumerate((HUNG, KILLING, STOPPING,
                                                                 RETIRING), 1)]
    assert judge.hung(leaving + [slot(9, pid=None)], [None] * 5, now=100.0,
                      redis_ok_since=0.0, expiry=expiry) == []


def test_first_beats_are_the_new_workers_with_a_lease() -> None:
    new, old, silent = slot(1, seen_beat=False, state=STARTING), slot(2), slot(3, seen_beat=False)
    assert judge.first_beats([new, old, silent], ["t", "t", None]) == [new]


def test_over_memory_is_the_sampled_rss_over_the_pools_limit() -> None:
    fat, lean, hung, free = slot(1, rss=300), slot(2, rss=100), slot(3, rss=900, state=HUNG), \
        slot(4, rss=10**9)
    limits = {1: 200, 2: 200, 3: 200, 4: None}
    kills = judge.over_memory([fat, lean, hung, free], lambda s: limits[s.index])
    assert [(k.slot.index, k.state, k.polite) for k in kills] == [(1, KILLING, signal.SIGTERM)]
    assert kills[0].reason == "memory: RSS 300 bytes over limit 200"


def test_a_budget_is_spent_once_and_said_once() -> None:
    found = budgets(1.0, {"a": 0.5, "b": None})
    assert [(b.field, b.who, b.pool) for b in found] == [
        ("total|*|nano", "the swarm", None), ("pool|a|nano", "pool a", "a")]
    spent = judge.spent(found, ["1000000000", "100"], already=set())
    assert [(b.who, why) for b, why in spent] == [
        ("the swarm", "budget reached: the swarm spent $1.000000 of $1")]
    assert is_budget_pause(spent[0][1]) and not is_budget_pause("API spend limit reached")
    said = {judge.budget_said(found[0])}
    assert judge.spent(found, ["2000000000", None], already=said) == []
    # raised (`swarm budget 3`): the new budget is judged anew
    raised = budgets(3.0, {})
    assert judge.spent(raised, ["2000000000"], already=said) == []
    assert [b.who for b, _ in judge.spent(raised, ["3000000000"], already=said)] == ["the swarm"]


def test_ready_once_every_slot_beat_or_gave_up() -> None:
    up, starting, dead = slot(1), slot(2, seen_beat=False, state=STARTING), \
        slot(3, seen_beat=False, state=FATAL, pid=None)
    dead.last_exit = "exit code 3 (failed to boot)"
    assert judge.readiness([up, starting]) == (False, None)
    assert judge.readiness([up]) == (True, None)
    ready, problem = judge.readiness([up, dead])
    assert ready and problem == "1 worker(s) FATAL: a-3: exit code 3 (failed to boot)"
