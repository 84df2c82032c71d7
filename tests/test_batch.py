"""Batch pools end to end: tasks of several turns through the fake API's Message
Batches endpoints, the ledger against the fake's own bill at batch rates, a worker
killed with batches in flight and its successor collecting them, errored and expired
results, budgets reserved for a batch's worst case, and `swarm status`/`cost`."""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

import pytest

from launcher import costs
from tests.harness.fake_api import text_reply, tool_use_reply
from tests.harness.fake_batches import BatchFaults
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys

HAIKU = "claude-haiku-4-5"
TURNS = re.compile(r"in (\d+) turns")


def first_text(request: dict[str, Any]) -> str:
    content = request["messages"][0]["content"]
    return content if isinstance(content, str) else " ".join(
        b.get("text", "") for b in content if b.get("type") == "text")


def turns_script(request: dict[str, Any]):
    """A task 'NAME in N turns' writes a file on each of its first N-1 turns (its tools
    run in the worker between batches), then answers; the reply depends only on the
    request's own content."""
    task = first_text(request).split("\n")[0]
    wanted = int(m.group(1)) if (m := TURNS.search(task)) else 1
    turn = (len(request["messages"]) + 1) // 2
    name = re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-")
    if turn < wanted:
        return tool_use_reply("write_file", {"path": f"out/{name}-{turn}.txt",
                                             "content": f"turn {turn}"},
                              input_tokens=300 + turn, output_tokens=20)
    return text_reply(f"finished {task} after {turn} turns", input_tokens=500,
                      output_tokens=40)


def batch_pool(name: str = "bulk", workers: int = 1, extra: str = "") -> str:
    return pool(name, workers=workers, model=HAIKU, extra=(
        "batch: {window: 200ms, poll: 100ms, poll_max: 500ms}\n"
        "concurrency: 50\nworkdir: work\n" + extra))


def spec_of(pools: str, extra: str = "") -> str:
    return fast_spec(pools, extra=extra)


def findings_of(swarm, ids: list[str]) -> list[dict[str, Any]]:
    r = swarm.redis()
    return [json.loads(r.get(keys.finding(r.get(keys.task_result(i))))) for i in ids]


def finished(swarm, ids: list[str]) -> bool:
    return all(swarm.redis().mget([keys.task_result(i) for i in ids]))


def submit(swarm, texts: list[str], pool_name: str = "bulk") -> list[str]:
    from launcher.client import Swarm as Api

    return Api(swarm.name, swarm.redis()).submit_many(texts, pool=pool_name)


def assert_ledger_is_the_bill(swarm, fake_api) -> dict[str, int]:
    billed = fake_api.billed()["batch"]
    total = costs.read_counters(swarm.redis(), swarm.name)["total"]["*"]
    assert total["calls"] == billed["responses"]
    assert total["batch_calls"] == billed["responses"]
    for ours, theirs in (("input", "input_tokens"), ("output", "output_tokens"),
                         ("cache_write", "cache_creation_input_tokens"),
                         ("cache_read", "cache_read_input_tokens")):
        assert total.get(ours, 0) == billed[theirs], ours
    return total


@pytest.fixture
def work(make_swarm, tmp_path):
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def test_tasks_of_several_turns_run_through_batches(make_swarm, fake_api, work):
    fake_api.script = turns_script
    fake_api.batch_delay = 0.3
    swarm = make_swarm(spec_of(batch_pool()), env=api_env(fake_api)).start()
    ids = submit(swarm, [f"job {i} in {1 + i % 4} turns" for i in range(12)])
    wait_for(lambda: finished(swarm, ids), 60, "every task")
    found = findings_of(swarm, ids)
    assert [f["status"] for f in found] == ["done"] * 12
    for i, f in enumerate(found):
        n = 1 + i % 4
        assert f["turns"] == f["api_calls"] == n
        assert f["tool_calls"] == n - 1
        assert f["result"] == f"finished job {i} in {n} turns after {n} turns"
        assert len(f["files_changed"]) == n - 1
        assert all((work / p).read_text().startswith("turn") for p in f["files_changed"])
    # nothing went through the ordinary endpoint: every answer came from a batch
    assert fake_api.billed()["responses"] == 0
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["calls"] == sum(1 + i % 4 for i in range(12))
    # each of the 12 tasks' costs equals the sum the ledger holds for it
    assert sum(f["cost_nano_usd"] for f in found) == total["nano"] == total["batch_nano"]
    assert total["batch_std_nano"] == 2 * total["batch_nano"] or \
        abs(total["batch_std_nano"] - 2 * total["batch_nano"]) <= total["calls"]
    # nothing left in flight, reserved or open
    r = swarm.redis()
    assert r.hlen(keys.inflight("t")) == 0
    assert int(r.hget(keys.reserved("t"), "total") or 0) == 0
    assert r.zcard(keys.batches("t", "bulk")) == 0
    assert not r.keys("swarm:t:task:*:turn")
