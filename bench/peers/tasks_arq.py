"""arq's task (runs in /tmp/peer-venvs/arq): ``arq tasks_arq.WorkerSettings``.
Settings that differ from arq's defaults come from BENCH_ARQ (JSON), e.g.
``{"max_jobs": 256, "poll_delay": 0.05}``; none given = arq's defaults."""

from __future__ import annotations

import peer_common as pc
from arq.connections import RedisSettings


async def startup(ctx: dict) -> None:
    ctx["anthropic"] = pc.async_client()


async def call(ctx: dict, text: str, enq: float, noop: bool = False) -> None:
    t0, t1 = await pc.call_async(text, noop)
    await ctx["redis"].rpush(pc.DONE_KEY, pc.marker(text, enq, t0, t1))


WorkerSettings = type("WorkerSettings", (), {
    "functions": [call],
    "on_startup": startup,
    "redis_settings": RedisSettings.from_dsn(pc.REDIS_URL),
    **pc.env_json("BENCH_ARQ"),
})
