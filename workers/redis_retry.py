"""Riding out a Redis outage (a restart, a failover) inside a worker: the steps of a
task retry until Redis answers, so a blip never strands a task on a live worker. Every
step retried this way is idempotent (see the scripts)."""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar
from collections.abc import Awaitable, Callable

import redis

log = logging.getLogger("swarm.worker")
T = TypeVar("T")
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


async def until_redis(step: Callable[[], Awaitable[T]], what: str, patience: float = 120.0) -> T:
    delay, waited = 0.05, 0.0
    while True:
        try:
            return await step()
        except TRANSIENT as exc:
            if waited >= patience:
                raise
            if waited == 0:
                log.warning("%s: Redis unreachable (%s); retrying", what, exc)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 2.0)
