"""The states a task and a worker can be in, as Redis holds them and `swarm status`
shows them. The Lua scripts (workers/scripts.py) write the same strings."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"  # failed and dead-lettered (its attempts used up, or unrunnable)
    ELSEWHERE = "elsewhere"  # claimed by a worker outside this swarm
    HANDED_BACK = "handed_back"  # its worker said it needs deeper reasoning
    CANCELLED = "cancelled"  # by `swarm cancel`, before it ran or while it ran


FINISHED = (TaskState.DONE, TaskState.FAILED, TaskState.DEAD, TaskState.HANDED_BACK,
            TaskState.CANCELLED)


class RunState(StrEnum):
    """A run's state (`swarm runs`); partial: it ended at a limit, with what it had."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    PARTIAL = "partial"
    FAILED = "failed"


class WorkerState(StrEnum):
    """What a worker says of itself with each beat."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    STOPPED = "stopped"
