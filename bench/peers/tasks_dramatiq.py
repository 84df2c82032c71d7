"""Dramatiq's task (runs in /tmp/peer-venvs/dramatiq): ``dramatiq tasks_dramatiq``.
Broker options that differ from Dramatiq's defaults come from BENCH_DRAMATIQ (JSON),
e.g. ``{"heartbeat_timeout": 5000, "maintenance_chance": 1000000}``."""

from __future__ import annotations

import dramatiq
import peer_common as pc
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=pc.REDIS_URL, **pc.env_json("BENCH_DRAMATIQ"))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="call", queue_name="bench")
def call(text: str, enq: float, noop: bool = False) -> None:
    t0, t1 = pc.call_sync(text, noop)
    broker.client.rpush(pc.DONE_KEY, pc.marker(text, enq, t0, t1))
