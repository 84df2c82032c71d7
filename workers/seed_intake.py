"""The seed's way in: tasks announced with ``SET task:{id}`` and ``PUBLISH channel:tasks
{id}`` go into the pool's reliable queue; the ENQUEUE script makes the many listeners
(and swarms) agree.

Only a few workers per pool listen (``WorkerConfig.seed_listener``): every announcement
costs each listener a round trip, and `swarm submit` announces the tasks it has already
queued, so one listener per worker would cost every task one round trip per worker.
Announcements that arrive together are checked together. A task submitted to another
swarm (its payload's ``swarm``) is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from workers import keys, payload, scripts
from workers.config import WorkerConfig

BATCH = 500  # announcements checked in one round trip


class SeedIntake:
    def __init__(self, cfg: WorkerConfig, redis_client: Any, stopping: asyncio.Event) -> None:
        self.cfg = cfg
        self.redis = redis_client
        self.stopping = stopping
        self._enqueue = redis_client.register_script(scripts.ENQUEUE)

    async def listen(self) -> None:
        """Hear ``channel:tasks`` until stopped, resubscribing when Redis comes back."""
        while not self.stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.CHANNEL_TASKS)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=None)
                    batch: list[str] = []
                    while message is not None and len(batch) < BATCH:
                        if message.get("type") == "message":
                            batch.append(str(message["data"]))
                        message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                           timeout=0)
                    if batch:
                        await self.enqueue_announced(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis away: resubscribe shortly
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 1.0)
            finally:
                with contextlib.suppress(Exception):  # closing a dead connection
                    await pubsub.aclose()

    async def enqueue_announced(self, task_ids: list[str]) -> None:
        """Queue the announced tasks that no swarm knows yet (one round trip to look)."""
        ids = [t for t in task_ids if t and len(t) <= 256 and not any(c.isspace() for c in t)]
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.exists(keys.task_meta(self.cfg.swarm, task_id))
            pipe.get(keys.task(task_id))
        found = await pipe.execute()
        for task_id, known, raw in zip(ids, found[::2], found[1::2]):
            if known or raw is None:  # e.g. our own `swarm submit`: already queued
                continue
            if payload.owner(raw) not in (None, self.cfg.swarm):
                continue  # submitted to another swarm
            pool = payload.route(raw, self.cfg.default_pool, self.cfg.pools)
            k, a = scripts.enqueue_args(self.cfg.swarm, pool, task_id, "seed", time.time())
            await self._enqueue(keys=k, args=a)
