"""A shared prefix written once, not once per task.

When many tasks start at once over the same large prefix (tools, the system prompt, the
shared context), each first request would find the cache cold and pay to write the same
prefix: a write is readable only once the response that made it has been sent. So the
first request over a prefix that may be cold goes alone (it takes a lock in Redis, for the
whole swarm, every host), and the others wait for its answer, then read what it wrote.
The prefix is then marked warm until about when the cache would forget it (its TTL,
refreshed by every answer that read it); while it is warm nobody waits.

A prefix too short to be cached at all costs the wave one call's wait, once per TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from workers import keys
from workers.pricing import Usage

LOCK_MS = 60_000  # the first request's own time, at most; then the others go anyway
# (sooner if the lock's holder, a worker process, loses its lease: it died)
MARGIN_S = 30.0  # the warm mark ends this much before the cache would forget the prefix
POLL_S = 0.05


def prefix_hash(request: dict[str, Any]) -> str:
    """What the cache keys the shared prefix by: the model, the tools and the system
    prompt (their cache markers included: they do not vary)."""
    prefix = {k: request.get(k) for k in ("model", "tools", "system")}
    return hashlib.sha256(json.dumps(prefix, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Ticket:
    """A first request's pass through the gate; ``leave`` after its answer."""

    gate: PrefixGate
    prefix: str
    holds_lock: bool

    async def leave(self, usage: Usage | None) -> None:
        """After the answer (None: the call failed): mark the prefix known (cached, or
        too short to be cached: "0") so that nobody waits for it, and let the others go."""
        redis = self.gate.redis
        if usage is not None:
            cached = "1" if usage.cache_creation or usage.cache_read else "0"
            await redis.set(keys.warm_prefix(self.gate.swarm, self.prefix), cached,
                            px=int(self.gate.warm_s * 1000))
        if self.holds_lock:
            await redis.delete(keys.warming_prefix(self.gate.swarm, self.prefix))


class PrefixGate:
    def __init__(self, redis: Any, swarm: str, owner: str, cache_ttl_s: float) -> None:
        self.redis = redis
        self.swarm = swarm
        self.owner = owner
        self.warm_s = max(1.0, cache_ttl_s - MARGIN_S)
        self.waited = 0.0  # seconds this process held requests back, for the curious

    async def enter(self, request: dict[str, Any]) -> Ticket:
        """Let the request go: at once if the prefix is warm (its answer refreshes the
        mark) or if this request takes the lock; else once the lock holder answered."""
        prefix = prefix_hash(request)
        warm = keys.warm_prefix(self.swarm, prefix)
        lock = keys.warming_prefix(self.swarm, prefix)
        if await self.redis.exists(warm):
            return Ticket(self, prefix, holds_lock=False)
        if await self.redis.set(lock, self.owner, nx=True, px=LOCK_MS):
            return Ticket(self, prefix, holds_lock=True)
        started = time.monotonic()
        while time.monotonic() - started < LOCK_MS / 1000:
            found_warm, holder = await self.redis.exists(warm), await self.redis.get(lock)
            if found_warm or holder is None:
                break
            if not await self.redis.exists(keys.lease(self.swarm, holder)):
                break  # its worker died (or its host lost power): nothing will be written
            await asyncio.sleep(POLL_S)
        self.waited += time.monotonic() - started
        return Ticket(self, prefix, holds_lock=False)
