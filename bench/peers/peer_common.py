"""Shared by the peers' task modules (tasks_*.py). Runs inside each peer's own venv
(/tmp/peer-venvs/<peer>), never in swarm's: only the standard library, ``anthropic`` and
``redis`` are used here.

The work unit is the same as a swarm task's: ONE Messages API call through the real SDK,
with the request swarm's worker sends for a task with no tools (its system prompt with a
cache breakpoint, the task text as the user message), to the fake API. The client is
built once per worker process and reused (the SDK's own client class, with the same
connection limits swarm's worker uses). When the call returns the task appends a marker
``[text, enqueued, started, finished, pid]`` to the list ``bench:done``; the harness
times everything from those markers.
"""

from __future__ import annotations

import json
import os
import threading
import time

DONE_KEY = "bench:done"
REQUEST = json.loads(os.environ.get("BENCH_REQUEST", "{}"))  # model, max_tokens, system
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

_lock = threading.Lock()
_sync = None
_async = None


def request(text: str) -> dict:
    return {**REQUEST, "messages": [{"role": "user", "content": text}]}


def _limits():
    import httpx2

    return httpx2.Limits(max_connections=max(1000, CONCURRENCY * 2),
                         max_keepalive_connections=max(100, CONCURRENCY))


def sync_client():
    """One ``anthropic.Anthropic`` per process (thread-safe creation). A client built
    before a fork (RQ's preloading parent) is inherited by the forked child."""
    global _sync
    if _sync is None:
        with _lock:
            if _sync is None:
                import anthropic

                _sync = anthropic.Anthropic(
                    max_retries=4, http_client=anthropic.DefaultHttpxClient(limits=_limits()))
    return _sync


def async_client():
    global _async
    if _async is None:
        import anthropic

        _async = anthropic.AsyncAnthropic(
            max_retries=4, http_client=anthropic.DefaultAsyncHttpxClient(limits=_limits()))
    return _async


def call_sync(text: str, noop: bool) -> tuple[float, float]:
    t0 = time.time()
    if not noop:
        sync_client().messages.create(**request(text))
    return t0, time.time()


async def call_async(text: str, noop: bool) -> tuple[float, float]:
    t0 = time.time()
    if not noop:
        await async_client().messages.create(**request(text))
    return t0, time.time()


def marker(text: str, enq: float, t0: float, t1: float) -> str:
    return json.dumps([text, enq, t0, t1, os.getpid()])


def env_json(name: str) -> dict:
    return json.loads(os.environ.get(name) or "{}")
