"""Pure tests of a slot's restart policy, driven with explicit monotonic times."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher import slot as slot_mod
from launcher.slot import (
    FATAL,
    HUNG,
    KILLING,
    RESTARTING,
    RETIRING,
    STARTING,
    STOPPED,
    STOPPING,
    Slot,
)
from launcher.spec import Restart

INITIAL, MAX = 0.1, 1.0


def policy(**overrides: object) -> Restart:
    fields: dict[str, object] = {
        "backoff": {"initial": INITIAL, "max": MAX},
        "max_restarts": 3,
        "window": 10,
        "reset_after": 5,
    }
    fields.update(overrides)
    return Restart(**fields)  # type: ignore[arg-type]


def ceiling(attempt: int, initial: float = INITIAL, cap: float = MAX) -> float:
    return min(cap, initial * 2**attempt)


@pytest.fixture
def jitter(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """Replace the jitter with its upper bound (factor 1.0) and record its arguments."""
    calls: list[tuple[float, float]] = []

    def uniform(lo: float, hi: float) -> float:
        calls.append((lo, hi))
        return hi

    monkeypatch.setattr(slot_mod.random, "uniform", uniform)
    return calls


def crash_loop(slot: Slot, now: float, runs: list[float]) -> tuple[list[float | None], float]:
    """Start the slot, let it run ``runs[i]`` seconds, exit, wait its backoff; repeat."""
    delays: list[float | None] = []
    for ran in runs:
        slot.started(1000 + len(delays), now)
        now += ran
        delay = slot.exited("exit code 1", now)
        delays.append(delay)
        if delay is None:
            break
        now = slot.next_start  # type: ignore[assignment]
    return delays, now


# --- identity and starting -----------------------------------------------------------


def test_a_new_slot_is_due_at_once() -> None:
    slot = Slot("haiku", 3, policy())
    assert slot.worker_id == slot.name == "haiku-3"
    assert slot.state == STARTING
    assert slot.generation == 0
    assert not slot.alive
    assert slot.next_start == 0.0
    assert slot.due(0.0)
    assert slot.due(123.0)


def test_started_bumps_generation_and_resets_per_process_fields() -> None:
    slot = Slot("haiku", 1, policy())
    slot.seen_beat, slot.kill_at, slot.rss, slot.cpu = True, 9.0, 4096, 12.5
    slot.started(111, 50.0)
    assert (slot.pid, slot.generation, slot.started_at) == (111, 1, 50.0)
    assert slot.alive
    assert slot.state == STARTING
    assert slot.seen_beat is False
    assert slot.kill_at is None
    assert (slot.rss, slot.cpu) == (0, 0.0)
    assert slot.next_start is None
    assert not slot.due(50.0) and not slot.due(1e9)

    slot.exited("exit code 1", 51.0)
    slot.started(222, 60.0)
    assert (slot.pid, slot.generation, slot.started_at) == (222, 2, 60.0)


def test_started_keeps_a_continuing_generation() -> None:
    # The supervisor carries the generation over when it re-creates a slot.
    slot = Slot("haiku", 1, policy(), generation=7)
    slot.started(5, 0.0)
    assert slot.generation == 8


@pytest.mark.parametrize("state", [RETIRING, STOPPING])
def test_started_keeps_a_retiring_or_stopping_state(state: str) -> None:
    slot = Slot("haiku", 1, policy(), state=state)
    slot.started(5, 0.0)
    assert slot.state == state
    assert slot.generation == 1


# --- due -----------------------------------------------------------------------------


def test_due_semantics(jitter: list[tuple[float, float]]) -> None:
    slot = Slot("haiku", 1, policy())
    slot.started(10, 0.0)
    assert not slot.due(100.0)  # alive: never due
    delay = slot.exited("exit code 1", 1.0)
    assert delay == pytest.approx(INITIAL)
    assert slot.next_start == pytest.approx(1.0 + INITIAL)
    assert not slot.due(1.0)
    assert not slot.due(1.0 + INITIAL / 2)
    assert slot.due(slot.next_start)  # at the exact time
    assert slot.due(slot.next_start + 5)
    slot.pid = 99  # alive again
    assert not slot.due(slot.next_start + 5)
    slot.pid, slot.next_start = None, None  # not to start
    assert not slot.due(1e12)


# --- backoff -------------------------------------------------------------------------


def test_backoff_doubles_from_initial_and_is_capped_at_max(
    jitter: list[tuple[float, float]],
) -> None:
    slot = Slot("haiku", 1, policy(max_restarts=100, window=0.001))
    delays, _ = crash_loop(slot, 1000.0, [0.01] * 8)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])
    assert jitter == [(0.5, 1.0)] * 8  # jitter always drawn in [50%, 100%]
    assert slot.restarts == 8
    assert slot.state == RESTARTING


def test_backoff_lower_bound_is_half(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slot_mod.random, "uniform", lambda lo, hi: lo)
    slot = Slot("haiku", 1, policy(max_restarts=100, window=0.001))
    delays, _ = crash_loop(slot, 0.0, [0.01] * 7)
    assert delays == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("seed", [0, 1, 2, 42, 1234])
def test_backoff_with_real_jitter_stays_in_bounds(seed: int) -> None:
    random.seed(seed)
    slot = Slot("haiku", 1, policy(max_restarts=1000, window=0.001))
    delays, _ = crash_loop(slot, 0.0, [0.01] * 40)
    assert len(delays) == 40
    for attempt, delay in enumerate(delays):
        top = ceiling(attempt)
        assert delay is not None
        assert 0.5 * top <= delay <= top, (attempt, delay)
    # jitter really varies
    assert len({round(d, 9) for d in delays if d is not None}) > 10


def test_backoff_of_a_huge_attempt_count_is_capped() -> None:
    slot = Slot("haiku", 1, policy())
    slot._attempt = 10_000
    for _ in range(50):
        assert 0.5 * MAX <= slot.backoff() <= MAX


def test_backoff_restarts_from_initial_after_a_stable_run(
    jitter: list[tuple[float, float]],
) -> None:
    slot = Slot("haiku", 1, policy(max_restarts=100, window=0.001))
    delays, now = crash_loop(slot, 0.0, [0.01] * 4)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])

    # a run just short of reset_after keeps doubling ...
    delays, now = crash_loop(slot, now, [4.99])
    assert delays == pytest.approx([1.0])
    # ... a run of exactly reset_after starts again from initial
    delays, now = crash_loop(slot, now, [5.0, 0.01, 0.01])
    assert delays == pytest.approx([0.1, 0.2, 0.4])
    # and so does a long run
    delays, now = crash_loop(slot, now, [3600.0])
    assert delays == pytest.approx([0.1])


# --- FATAL ---------------------------------------------------------------------------


def test_the_exit_after_max_restarts_within_the_window_is_fatal(
    jitter: list[tuple[float, float]],
) -> None:
    slot = Slot("haiku", 1, policy(max_restarts=3, window=10))
    delays, now = crash_loop(slot, 0.0, [0.1] * 10)
    assert delays[:3] == pytest.approx([0.1, 0.2, 0.4])
    assert delays[3] is None and len(delays) == 4  # the 4th exit
    assert slot.state == FATAL
    assert slot.next_start is None
    assert slot.restarts == 3
    assert slot.pid is None and not slot.alive
    assert slot.last_exit == "exit code 1"
    assert not slot.due(now) and not slot.due(now + 1e6)


def test_zero_max_restarts_makes_the_first_exit_fatal() -> None:
    slot = Slot("haiku", 1, policy(max_restarts=0))
    slot.started(1, 0.0)
    assert slot.exited("killed by SIGKILL", 100.0) is None
    assert slot.state == FATAL
    assert slot.restarts == 0
    assert not slot.due(1e9)


@pytest.mark.parametrize("max_restarts", [1, 3, 5])
def test_exits_spaced_wider_than_the_window_never_go_fatal(max_restarts: int) -> None:
    random.seed(7)
    window = 10.0
    slot = Slot("haiku", 1, policy(max_restarts=max_restarts, window=window))
    now = 0.0
    for n in range(200):
        slot.started(n, now)
        now += window + 0.001  # quick to crash after a wait, but each exit > window apart
        delay = slot.exited("exit code 1", now)
        assert delay is not None, n
        assert slot.state == RESTARTING
        now = slot.next_start  # type: ignore[assignment]
    assert slot.restarts == 200


def test_the_window_slides(jitter: list[tuple[float, float]]) -> None:
    slot = Slot("haiku", 1, policy(max_restarts=3, window=10, reset_after=1000))

    def exit_at(t: float) -> float | None:
        slot.started(1, t - 0.001)
        return slot.exited("exit code 1", t)

    assert exit_at(0.0) is not None  # restarts at 0
    assert exit_at(1.0) is not None  # 0, 1
    assert exit_at(2.0) is not None  # 0, 1, 2
    assert exit_at(10.5) is not None  # 0 has left the window: 1, 2, 10.5
    assert exit_at(11.5) is not None  # 1 has left: 2, 10.5, 11.5
    assert slot.state == RESTARTING
    assert exit_at(11.6) is None  # 2, 10.5, 11.5 are all within 10s: FATAL
    assert slot.state == FATAL
    assert slot.restarts == 5


def test_an_exit_exactly_one_window_later_still_counts(
    jitter: list[tuple[float, float]],
) -> None:
    slot = Slot("haiku", 1, policy(max_restarts=1, window=10))
    slot.started(1, 0.0)
    assert slot.exited("exit code 1", 0.5) is not None
    slot.started(2, 5.0)
    assert slot.exited("exit code 1", 10.5) is None  # 10.5 - 0.5 == window: inside
    assert slot.state == FATAL


@pytest.mark.parametrize("state", [HUNG, KILLING, STARTING, "running", "idle", "busy"])
def test_a_killed_or_running_slot_that_exits_is_restarted(state: str) -> None:
    slot = Slot("haiku", 1, policy())
    slot.started(1, 0.0)
    slot.state = state
    slot.kill_at = 3.0
    delay = slot.exited("killed by SIGKILL", 1.0)
    assert delay is not None and 0.5 * INITIAL <= delay <= INITIAL
    assert slot.state == RESTARTING
    assert slot.kill_at is None
    assert slot.pid is None
    assert slot.restarts == 1


# --- retiring and stopping -----------------------------------------------------------


@pytest.mark.parametrize("state", [RETIRING, STOPPING, STOPPED])
def test_a_retiring_or_stopping_slot_that_exits_is_stopped(state: str) -> None:
    slot = Slot("haiku", 1, policy(max_restarts=0))
    slot.started(1, 0.0)
    slot.state = state
    slot.kill_at = 9.0
    assert slot.exited("exit code 0", 0.5) is None
    assert slot.state == STOPPED  # not FATAL, even with max_restarts 0
    assert slot.pid is None and slot.kill_at is None
    assert slot.last_exit == "exit code 0"
    assert slot.next_start is None
    assert slot.restarts == 0
    assert not slot.due(0.5) and not slot.due(1e9)


def test_retiring_after_crashes_is_not_restarted(jitter: list[tuple[float, float]]) -> None:
    slot = Slot("haiku", 1, policy())
    delays, now = crash_loop(slot, 0.0, [0.1, 0.1])
    assert delays == pytest.approx([0.1, 0.2])
    slot.started(3, now)
    slot.state = RETIRING
    assert slot.exited("exit code 0", now + 1) is None
    assert slot.state == STOPPED
    assert slot.restarts == 2
    assert not slot.due(now + 100)


# --- properties ----------------------------------------------------------------------


@given(
    runs=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=40),
    initial=st.floats(0.01, 5, allow_nan=False),
    factor=st.floats(1, 100, allow_nan=False),
    max_restarts=st.integers(0, 6),
    window=st.floats(0.5, 30, allow_nan=False),
    reset_after=st.floats(0.5, 30, allow_nan=False),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=200, deadline=None)
def test_restart_policy_model(
    runs: list[float],
    initial: float,
    factor: float,
    max_restarts: int,
    window: float,
    reset_after: float,
    seed: int,
) -> None:
    """Against a straightforward model of the documented policy."""
    random.seed(seed)
    cap = initial * factor
    slot = Slot(
        "p",
        1,
        Restart(
            backoff={"initial": initial, "max": cap},  # type: ignore[arg-type]
            max_restarts=max_restarts,
            window=window,
            reset_after=reset_after,
        ),
    )
    attempt, restarts_at, now = 0, [], 0.0
    for n, ran in enumerate(runs):
        slot.started(n + 1, now)
        assert slot.generation == n + 1
        started, now = now, now + ran
        delay = slot.exited("exit code 1", now)
        if now - started >= reset_after:  # the same float arithmetic as the slot's
            attempt = 0
        recent = [t for t in restarts_at if now - t <= window]
        if len(recent) >= max_restarts:
            assert delay is None
            assert slot.state == FATAL and slot.next_start is None
            assert slot.restarts == len(restarts_at)
            return
        top = min(cap, initial * 2**attempt)
        assert delay is not None
        assert 0.5 * top - 1e-9 <= delay <= top + 1e-9
        assert slot.next_start == pytest.approx(now + delay)
        assert slot.state == RESTARTING
        attempt += 1
        restarts_at.append(now)
        assert slot.restarts == len(restarts_at)
        assert not slot.due(now) or delay == 0
        now = slot.next_start
        assert slot.due(now)
