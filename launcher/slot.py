"""One worker slot: a stable name (``<pool>-<n>``) on one host, whose process comes and
goes; its worker id (``<swarm>/<host>/<pool>-<n>``) is unique on the Redis it uses.

The restart policy lives here as plain logic on monotonic time, so it can be tested
without processes: exponential backoff with jitter on every exit, reset after a stable
run, and FATAL after too many restarts within a window.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from workers import keys

if TYPE_CHECKING:  # only a type here: `swarm status` imports this, not pydantic
    from launcher.spec import Restart

class SlotState(StrEnum):
    """What the supervisor knows of a slot, as `swarm status` shows it ("idle" and
    "busy" come from the worker itself once it is running)."""

    STARTING = "starting"
    RUNNING = "running"
    HUNG = "hung"  # heartbeat expired; being killed
    KILLING = "killing"  # over its memory limit; being killed
    RESTARTING = "restarting"  # exited; waiting out its backoff
    FATAL = "fatal"  # gave up: too many restarts within the window
    STOPPING = "stopping"  # asked to finish its work and exit (shutdown)
    RETIRING = "retiring"  # scaled away: finishing its work, will not come back
    STOPPED = "stopped"


STARTING, RUNNING, HUNG, KILLING = (SlotState.STARTING, SlotState.RUNNING, SlotState.HUNG,
                                    SlotState.KILLING)
RESTARTING, FATAL, STOPPING, RETIRING, STOPPED = (
    SlotState.RESTARTING, SlotState.FATAL, SlotState.STOPPING, SlotState.RETIRING,
    SlotState.STOPPED)
# the states in which the supervisor's word wins over what the worker says of itself
SUPERVISOR_WINS = frozenset({HUNG, KILLING, RESTARTING, FATAL, STOPPING, RETIRING, STOPPED})


@dataclass
class Slot:
    pool: str
    index: int
    policy: Restart
    worker_id: str = ""  # the supervisor gives the whole id; alone, the slot's name
    generation: int = 0
    pid: int | None = None
    state: SlotState = STARTING
    started_at: float = 0.0  # monotonic, when the current process was forked
    seen_beat: bool = False  # the current process has heartbeated at least once
    next_start: float | None = 0.0  # monotonic time to (re)start at; None: not to start
    restarts: int = 0
    last_exit: str = ""
    kill_at: float | None = None  # SIGKILL the tree at this time if still alive
    rss: int = 0
    cpu: float = 0.0
    restart_asked: bool = False  # `swarm restart`: its next exit restarts it at once
    _attempt: int = 0
    _recent: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.worker_id = self.worker_id or self.name

    @property
    def name(self) -> str:
        return keys.slot_name(self.pool, self.index)

    @property
    def consumer(self) -> str:
        """The current process's consumer name (its claim value, its lease's name)."""
        return keys.consumer(self.worker_id, self.generation)

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def started(self, pid: int, now: float) -> None:
        self.pid = pid
        self.generation += 1
        self.started_at = now
        self.seen_beat = False
        self.next_start = None
        self.kill_at = None
        self.rss = 0
        self.cpu = 0.0
        if self.state not in (RETIRING, STOPPING):
            self.state = STARTING

    def exited(self, reason: str, now: float) -> float | None:
        """Record an exit; returns the backoff delay before the restart, or None if the
        slot will not be restarted (retired, stopping, or FATAL)."""
        self.pid = None
        self.kill_at = None
        self.last_exit = reason
        if self.state in (RETIRING, STOPPING, STOPPED):
            self.state = STOPPED
            return None
        if self.restart_asked:  # asked for: no backoff, and no count against the slot
            self.restart_asked = False
            self.state, self.next_start = RESTARTING, now
            return 0.0
        if now - self.started_at >= self.policy.reset_after:
            self._attempt = 0
        while self._recent and now - self._recent[0] > self.policy.window:
            self._recent.popleft()
        if len(self._recent) >= self.policy.max_restarts:
            self.state = FATAL
            self.next_start = None
            return None
        delay = self.backoff()
        self._attempt += 1
        self._recent.append(now)
        self.restarts += 1
        self.state = RESTARTING
        self.next_start = now + delay
        return delay

    def restart(self, now: float) -> bool:
        """`swarm restart`: True if the slot's process must be asked to stop (it then
        starts again at once); a slot that gave up (FATAL) or waits out its backoff
        starts now, its count of restarts forgotten."""
        if self.state in (RETIRING, STOPPING, STOPPED):
            return False
        self._attempt = 0
        self._recent.clear()
        if self.pid is None:
            self.state, self.next_start = RESTARTING, now
            return False
        self.restart_asked = True
        return True

    def backoff(self) -> float:
        """initial * 2**attempt, capped at max, with jitter in [50%, 100%] of that."""
        b = self.policy.backoff
        ceiling = min(b.max, b.initial * (2 ** min(self._attempt, 62)))
        return ceiling * random.uniform(0.5, 1.0)

    def due(self, now: float) -> bool:
        return self.pid is None and self.next_start is not None and now >= self.next_start
