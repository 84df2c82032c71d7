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


FINISHED = (TaskState.DONE, TaskState.FAILED, TaskState.DEAD)


class WorkerState(StrEnum):
    """What a worker says of itself with each beat."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    STOPPED = "stopped"
