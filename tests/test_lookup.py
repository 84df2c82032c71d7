"""Workers that build on each other: they search the swarm's findings and cite what they
read, and they ask the librarian, whose archive is the cached prefix of its requests
and who answers identical questions in flight once. The seed's archive protocol works
for a plain Redis client. Real swarms against the fake Messages API, scripted by what
each request contains.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness import lead_script as ls
from tests.harness.fake_api import FakeAPI, Reply, text_reply, tool_use_reply
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys

pytestmark = pytest.mark.timeout(180)

HAIKU = "claude-haiku-4-5"
ARCHIVE_LINE = "Decision {n:04d}: the ledger keeps money in integer nano-dollars, always.\n"


def is_librarian(req: dict[str, Any]) -> bool:
    return "You are the swarm's librarian" in ls.system_text(req)


def archive(folder: Path, lines: int) -> None:
    (folder / "archive").mkdir(exist_ok=True)
    (folder / "archive" / "decisions.md").write_text(
        "".join(ARCHIVE_LINE.format(n=n) for n in range(lines)))


def api(swarm: Any) -> Any:
    from launcher.client import Swarm

    return Swarm(swarm.name, swarm.redis())


def test_a_worker_finds_and_cites_an_earlier_finding(make_swarm: Any,
                                                     fake_api: FakeAPI) -> None:
    def script(req: dict[str, Any]) -> Reply:
        task, shown = ls.task_text(req), ls.shown(req)
        if "measure the pump" in task:
            return text_reply("The pump delivers 42 litres a minute (measured twice).")
        if len(req["messages"]) == 1:
            return tool_use_reply("search_findings", {"query": "pump litres"})
        if "read_finding gives one whole" in ls.last_shown(req):
            fid = ls.FINDING.search(shown) or None
            found = fid.group(1) if fid else "finding_missing"
            return tool_use_reply("read_finding", {"finding_id": found})
        return text_reply("The tank fills in 10 minutes at the pump's 42 litres a minute.")

    fake_api.script = script
    swarm = make_swarm(fast_spec(pool("a", extra="concurrency: 4\n")), env=api_env(fake_api))
    swarm.start()
    client = api(swarm)
    first = client.wait(client.submit("measure the pump"), timeout=60)
    second = client.wait(client.submit("how long does the 420 litre tank take to fill?"),
                         timeout=60)
    assert second["status"] == "done", second
    assert second["citations"] == [first["finding_id"]]
    assert second["tool_calls"] == 2
    # the same search from the Python API
    hits = client.search_findings("PUMP litres")
    assert [h["finding_id"] for h in hits][:2] == [second["finding_id"], first["finding_id"]]
    assert client.finding(first["finding_id"])["result"].startswith("The pump delivers 42")
    assert client.search_findings("zebra") == []


def librarian_spec(extra_worker: str = "", librarian_workers: int = 1,
                   librarian_extra: str = "") -> str:
    return fast_spec(
        pool("a", workers=2, extra="concurrency: 25\n" + extra_worker)
        + pool("lib", workers=librarian_workers, model=HAIKU, extra=(
            "role: librarian\narchive: ['archive/*.md']\nconcurrency: 8\n"
            + librarian_extra)))


def test_fifty_workers_asking_the_same_question_cost_one_answer(
        make_swarm: Any, fake_api: FakeAPI, tmp_path: Path) -> None:
    archive(tmp_path, 400)  # ~29,000 characters: ~7,000 tokens, over Haiku's 4,096
    asked = threading.Event()

    async def script(req: dict[str, Any]) -> Reply:
        if is_librarian(req):
            question = ls.task_text(req)
            if "SAME" in question:  # it answers once all fifty have asked
                await asyncio.to_thread(asked.wait, 30)
                return text_reply("Integer nano-dollars (decision 0007).")
            return text_reply(f"Answer to: {question}")
        task = ls.task_text(req)
        if len(req["messages"]) == 1:
            return tool_use_reply("ask_librarian", {"question": (
                "SAME: how is money kept?" if task.startswith("same") else task)})
        return text_reply("librarian said: " + ls.last_shown(req))

    fake_api.script = script
    swarm = make_swarm(librarian_spec(), env=api_env(fake_api))
    swarm.start()
    client = api(swarm)
    ids = client.submit_many([f"same question {i}" for i in range(50)])
    def questions() -> int:
        return len([k for k in swarm.redis().keys(keys.archive_query("*"))
                    if not k.endswith(":claimed")])

    wait_for(lambda: questions() >= 50, 60, "fifty questions written")
    asked.set()
    findings = [client.wait(i, timeout=60) for i in ids]
    odd = [f["result"] for f in findings
           if f["result"] != "librarian said: Integer nano-dollars (decision 0007)."]
    assert not odd, odd[:3]
    librarian_calls = [r for r in fake_api.received() if is_librarian(r)]
    assert len(librarian_calls) == 1
    # later, different questions: the archive was written to the cache once, then read
    more = client.submit_many([f"question about decision {n}" for n in range(5)])
    for task_id in more:
        assert client.wait(task_id, timeout=60)["status"] == "done"
    billed = fake_api.billed(detail=True)["by_model"][HAIKU]
    assert billed["responses"] == 6
    assert billed["ephemeral_1h_input_tokens"] > 6000  # the archive, written once ...
    assert billed["ephemeral_1h_input_tokens"] < 2 * 7500
    assert billed["cache_read_input_tokens"] >= 5 * 6000  # ... and read by every later one


def test_a_slow_or_absent_librarian_never_hangs_the_workers(
        make_swarm: Any, fake_api: FakeAPI, tmp_path: Path) -> None:
    archive(tmp_path, 10)

    def script(req: dict[str, Any]) -> Reply:
        if is_librarian(req):
            return text_reply("too late", delay=30)
        if len(req["messages"]) == 1:
            return tool_use_reply("ask_librarian", {"question": "anything?"})
        return text_reply("went on: " + ls.last_shown(req)[:60])

    fake_api.script = script
    spec = librarian_spec(extra_worker="tools: {librarian_timeout: 1s}\n")
    swarm = make_swarm(spec, env=api_env(fake_api))
    swarm.start()
    client = api(swarm)
    started = time.monotonic()
    finding = client.wait(client.submit("ask it"), timeout=30)
    assert finding["status"] == "done"
    assert finding["result"].startswith("went on: The librarian did not answer within 1s")
    assert time.monotonic() - started < 25  # not the librarian's 30 s
    # with no librarian running at all, the same
    swarm.cli("scale", "lib", "0")
    finding = client.wait(client.submit("ask it again"), timeout=30)
    assert finding["result"].startswith("went on: The librarian did not answer within 1s")


def test_the_seeds_archive_query_from_a_plain_client(make_swarm: Any, fake_api: FakeAPI,
                                                     tmp_path: Path) -> None:
    archive(tmp_path, 10)
    fake_api.script = lambda req: text_reply(f"archive says: {ls.task_text(req)}")
    swarm = make_swarm(librarian_spec(), env=api_env(fake_api))
    swarm.start()
    plain = swarm.redis()
    pubsub = plain.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("channel:responses")
    try:
        query_id = str(uuid.uuid4())
        plain.set(f"query:archive:{query_id}", "What is decision 3?")  # nothing announced
        got = None
        deadline = time.monotonic() + 30
        while got is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message and message["data"] == query_id:
                got = message
        assert got is not None, "no announcement on channel:responses"
        assert plain.get(f"response:archive:{query_id}") == "archive says: What is decision 3?"
        # JSON questions too
        other = str(uuid.uuid4())
        plain.set(f"query:archive:{other}", json.dumps({"question": "And decision 4?"}))
        wait_for(lambda: plain.get(f"response:archive:{other}"), 30, "the JSON question")
        assert plain.get(f"response:archive:{other}") == "archive says: And decision 4?"
    finally:
        pubsub.close()
    refused = swarm.cli("submit", "--pool", "lib", "a task")
    assert refused.returncode == 2 and "is a librarian pool" in refused.stderr
