"""A run's record against the real embedded Redis, without a swarm: hand-outs are
idempotent and keep the limits atomically, a task's end releases its reservation exactly
once, citations are checked against the run's own findings, and workers cannot
delegate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.redis_server import EmbeddedRedis
from launcher.state import StateDir
from workers import keys, ledger_format, scripts
from workers.lead_tools import NAMES
from workers.redis_target import RedisTarget
from workers.run_book import RunBook
from workers.tools import Toolbox, ToolError, ToolSettings

pytestmark = pytest.mark.timeout(60)
SWARM = "rb"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[RedisTarget]:
    server = EmbeddedRedis(StateDir(tmp_path / "state"), tmp_path / "redis.log")
    found = server.start()
    try:
        yield found
    finally:
        server.stop()


def run(target: RedisTarget, body: Any) -> Any:
    async def go() -> Any:
        client = target.aio()
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


async def begun(client: Any, run_id: str = "run_a", **limits: int) -> RunBook:
    book = RunBook(client, SWARM, run_id)
    await book.begin("the goal", "lead", run_id, {"budget_nano": 0, "max_tasks": 0,
                                                    "max_in_flight": 0, **limits})
    return book


def payload(task_id: str) -> dict[str, Any]:
    return {"description": f"do {task_id}", "run": "run_a", "swarm": SWARM}


def test_a_hand_out_asked_again_is_the_same_hand_out(target: RedisTarget) -> None:
    async def body(client: Any) -> Any:
        book = await begun(client)
        first = await book.hand_out("run_a.1.1", "cheap", 500, 0, payload("run_a.1.1"))
        again = await book.hand_out("run_a.1.1", "cheap", 500, 0, payload("run_a.1.1"))
        view = await book.view()
        queued = await client.xlen(keys.queue(SWARM, "cheap"))
        return first, again, view, queued

    first, again, view, queued = run(target, body)
    assert (first[0], again[0]) == ("ok", "again")
    assert (view.handed, view.reserved, queued) == (1, 500, 1)


def test_limits_refuse_with_their_reason_and_only_real_limits_are_recorded(
        target: RedisTarget) -> None:
    async def body(client: Any) -> Any:
        book = await begun(client, max_tasks=3, max_in_flight=2, budget_nano=10_000)
        verdicts = [await book.hand_out(f"run_a.1.{i}", "cheap", 1_000, 2_000,
                                        payload(f"run_a.1.{i}")) for i in range(1, 4)]
        limits = [(await book.view()).limit]
        # the ledger says the run spent 7,000: 7,000 + 1,000 reserved + 1,000 + 2,000 kept
        # is over 10,000, but only because of the task in flight: no limit of the run yet
        spent = ledger_format.field("run", "run_a", "nano")
        await client.hset(keys.ledger(SWARM), spent, 7_000)
        await finish(client, "run_a.1.1")
        verdicts.append(await book.hand_out("run_a.1.4", "cheap", 1_000, 2_000,
                                            payload("run_a.1.4")))
        limits.append((await book.view()).limit)
        # 7,500 spent: 7,500 + 1,000 + 2,000 is over whatever ends: the run's limit
        await client.hset(keys.ledger(SWARM), spent, 7_500)
        verdicts.append(await book.hand_out("run_a.1.5", "cheap", 1_000, 2_000,
                                            payload("run_a.1.5")))
        return verdicts, limits, await book.view()

    verdicts, limits, view = run(target, body)
    assert [v[0] for v in verdicts] == ["ok", "ok", "refused", "refused", "refused"]
    assert verdicts[2][1].startswith("max_in_flight: 2 tasks are in flight")
    assert verdicts[3][1].startswith("budget: spent $0.000007 + reserved for tasks in flight "
                                     "$0.000001")
    assert verdicts[3][1].endswith("wait for their findings, then hand it out again")
    assert limits == ["", ""]  # waiting for a slot or for reservations is no limit
    assert verdicts[4][1].startswith("budget: spent $0.000008")
    assert view.limit == verdicts[4][1]
    assert (view.handed, view.finished, view.reserved, view.spent) == (2, 1, 1_000, 7_500)


async def finish(client: Any, task_id: str, finding: str = "finding_00000001") -> int:
    await client.set(keys.task_claimed(task_id), "w#1")
    k, a = scripts.finish_args(SWARM, "cheap", task_id, "0-1", finding,
                               json.dumps({"finding_id": finding}), "done", "", "", 0.0,
                               "run_a", "child")
    return int(await client.eval(scripts.FINISH, len(k), *k, *a))


def test_a_task_end_releases_its_reservation_once_and_tells_the_lead(
        target: RedisTarget) -> None:
    async def body(client: Any) -> Any:
        book = await begun(client)
        await book.hand_out("run_a.1.1", "cheap", 700, 0, payload("run_a.1.1"))
        recorded = [await finish(client, "run_a.1.1", "finding_0000000a"),
                    await finish(client, "run_a.1.1", "finding_0000000b")]
        events = await client.xrange(keys.run_events(SWARM, "run_a"))
        foreign = await book.foreign(["finding_0000000a", "finding_0000000b", "finding_c0ffee00"])
        return recorded, await book.view(), events, foreign

    recorded, view, events, foreign = run(target, body)
    assert recorded == [1, 0]
    assert (view.reserved, view.finished) == (0, 1)
    assert [e[1] for e in events] == [{"task": "run_a.1.1", "finding": "finding_0000000a",
                                       "status": "done"}]
    assert foreign == ["finding_0000000b", "finding_c0ffee00"]


def test_workers_cannot_delegate(tmp_path: Path) -> None:
    toolbox = Toolbox(tmp_path, ToolSettings())
    names = {d["name"] for d in toolbox.definitions()}
    assert names and not names & NAMES
    with pytest.raises(ToolError, match="unknown tool: hand_out"):
        asyncio.run(toolbox.run("hand_out", {"tasks": [{"objective": "x", "output": "y"}]}))
