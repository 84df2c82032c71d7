"""What a worker process is doing, as its beat tells Redis: its state, the tasks in
hand, its counts, and the pause it last read. The task runner changes it; the worker's
heartbeat sends it. (A small object both can hold, so neither imports the other.)"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from workers import keys
from workers.config import WorkerConfig
from workers.states import WorkerState

log = logging.getLogger("swarm.worker")


class Report:
    def __init__(self, cfg: WorkerConfig, redis: Any) -> None:
        self.cfg = cfg
        self.redis = redis
        self.state = WorkerState.STARTING
        self.busy: dict[str, None] = {}  # task ids in hand, in start order
        self.done = 0
        self.failed = 0
        self.paused: str | None = None  # the pause reason read with the last beat
        self.stopping = asyncio.Event()

    def task_started(self, task_id: str) -> None:
        self.busy[task_id] = None
        self.state = WorkerState.BUSY

    def task_ended(self, task_id: str, done: bool | None = None) -> None:
        """A task left our hands; ``done`` counts it (None: it was not finished here)."""
        self.busy.pop(task_id, None)
        if not self.busy and self.state == WorkerState.BUSY:
            self.state = WorkerState.IDLE
        if done is not None:
            if done:
                self.done += 1
            else:
                self.failed += 1

    async def pause(self, reason: str, pool: str | None = None) -> None:
        """Stop the whole swarm (or one pool) from taking new work; every worker reads
        the flag with its next beat. Tasks in flight finish."""
        self.paused = reason
        log.error("pausing %s: %s", f"pool {pool}" if pool else "the swarm", reason)
        await self.redis.set(keys.paused(self.cfg.swarm, pool), reason)

    def fields(self, now: str) -> dict[str, str | int]:
        """The worker's row (``swarm:{name}:worker:{id}``), as of ``now``."""
        return {
            "state": str(self.state),
            "task": next(iter(self.busy), ""),
            "in_flight": len(self.busy),
            "done": self.done,
            "failed": self.failed,
            "pid": os.getpid(),
            "generation": self.cfg.generation,
            "beat": now,
        }
