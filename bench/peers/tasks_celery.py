"""Celery's task (runs in /tmp/peer-venvs/celery): ``celery -A tasks_celery worker``.
Configuration that differs from Celery's defaults comes from BENCH_CELERY (JSON, Celery
setting names), e.g. ``{"task_acks_late": true}``; none given = Celery's defaults."""

from __future__ import annotations

import threading

import peer_common as pc
from celery import Celery

app = Celery("bench", broker=pc.REDIS_URL)
app.conf.update(pc.env_json("BENCH_CELERY"))

_redis = None
_lock = threading.Lock()


def _marker_client():
    global _redis
    if _redis is None:
        with _lock:
            if _redis is None:
                import redis

                _redis = redis.Redis.from_url(pc.REDIS_URL)
    return _redis


@app.task(name="call")
def call(text: str, enq: float, noop: bool = False) -> None:
    t0, t1 = pc.call_sync(text, noop)
    _marker_client().rpush(pc.DONE_KEY, pc.marker(text, enq, t0, t1))
