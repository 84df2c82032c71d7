"""Prompt caching and streaming through a real swarm, against the fake API that bills
caching by the API's rules: a wave of tasks writes its shared prefix once, a 1-hour TTL
is written and priced as such, `swarm cost` and `swarm show` say what caching read and
saved, a pool that needs streaming streams, and a stream cut off is a call lost."""

from __future__ import annotations

import json
from typing import Any

from tests.harness.fake_api import Reply, text_reply, truncated_reply
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys
from workers.pricing import PriceBook, Usage

HAIKU = "claude-haiku-4-5"
CONTEXT = "Background the whole swarm shares. " * 700  # ~6,100 tokens: over Haiku's 4,096


def done(swarm: Any, ids: list[str]) -> bool:
    return all(swarm.redis().mget([keys.task_result(i) for i in ids]))


def cost(swarm: Any, *args: str) -> dict[str, Any]:
    said = swarm.cli("cost", "--json", *args)
    assert said.returncode == 0, said.stderr
    return json.loads(said.stdout)  # type: ignore[no-any-return]


def total_row(report: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in report["rows"] if r["kind"] == "total")


def test_a_wave_of_tasks_writes_its_shared_prefix_once(make_swarm: Any, fake_api: Any) -> None:
    fake_api.script = lambda request: text_reply("ok")
    fake_api.latency = 0.3
    spec = fast_spec(pool("a", workers=2, model=HAIKU, extra="concurrency: 4\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    swarm.redis().set(keys.CONTEXT_ACTIVE, CONTEXT)
    from launcher.client import Swarm as Api

    ids = Api("t", swarm.redis()).submit_many([f"task {i}" for i in range(8)])
    wait_for(lambda: done(swarm, ids), 60, "the wave")
    tasks = {r["key"]: r for r in cost(swarm, "--by", "task")["rows"]}
    reads = sorted(tasks[i]["cache_read"] for i in ids)
    # one task wrote the shared prefix; the seven others read it
    assert reads[0] == 0 and all(r > 4096 for r in reads[1:]), reads
    billed = fake_api.billed()
    wrote = billed["cache_creation_input_tokens"]
    assert wrote < reads[1] + 8 * 100, "the shared prefix was written more than once"
    total = total_row(cost(swarm))
    assert total["cache_read"] == billed["cache_read_input_tokens"] == sum(reads)
    assert total["cache_write"] == wrote


def test_a_one_hour_ttl_is_written_and_priced_as_one_hour(make_swarm: Any, fake_api: Any) -> None:
    fake_api.script = lambda request: text_reply("ok")
    spec = fast_spec(pool("a", model=HAIKU, extra="cache_ttl: 1h\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    swarm.redis().set(keys.CONTEXT_ACTIVE, CONTEXT)
    done_text = swarm.cli("submit", "one task", "--wait", "--json", "--timeout", "30")
    assert done_text.returncode == 0, done_text.stderr
    billed = fake_api.billed(detail=True)
    assert billed["ephemeral_1h_input_tokens"] > 4096  # the shared prefix, for an hour
    assert billed["ephemeral_5m_input_tokens"] < 100  # the conversation's new part only
    total = total_row(cost(swarm))
    assert total["cache_write_1h"] == billed["ephemeral_1h_input_tokens"]
    usage = Usage(billed["input_tokens"], billed["output_tokens"],
                  billed["cache_creation_input_tokens"], billed["cache_read_input_tokens"],
                  billed["ephemeral_1h_input_tokens"])
    assert round(total["cost_usd"] * 1e9) == PriceBook().nano(HAIKU, usage)
    sent = fake_api.received()[0]
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


def test_cost_and_show_say_what_caching_read_saved_and_missed(make_swarm: Any,
                                                              fake_api: Any) -> None:
    def script(request: dict[str, Any]) -> Any:
        last = request["messages"][-1]
        if last["role"] == "assistant" and last["content"][0]["text"].count("part") == 2:
            return text_reply(" and the end.")  # continuing the answer cut twice
        return truncated_reply("A long part")

    fake_api.script = script
    spec = fast_spec(pool("a", model=HAIKU))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    swarm.redis().set(keys.CONTEXT_ACTIVE, CONTEXT)
    first = json.loads(swarm.cli("submit", "one", "--wait", "--json", "--timeout", "30").stdout)
    second = json.loads(swarm.cli("submit", "two", "--wait", "--json", "--timeout", "30").stdout)
    assert second["result"] == "A long partA long part and the end."
    assert second["stop_reason"] == "end_turn" and second["truncated"] is False
    total = total_row(cost(swarm))
    billed = fake_api.billed()
    side = billed["input_tokens"] + billed["cache_creation_input_tokens"] + \
        billed["cache_read_input_tokens"]
    assert total["cache_hit_ratio"] == round(billed["cache_read_input_tokens"] / side, 3)
    assert total["cache_hit_ratio"] > 0.5 and total["cache_saved_usd"] > 0
    # the second continuation of each answer changed the message the first one had
    # added (the API takes one assistant message): the API said why the cache missed
    assert total["cache_misses"] == {"messages_changed": 2}
    table = swarm.cli("cost").stdout
    assert "CACHE HIT" in table and "CACHE SAVED" in table
    shown = swarm.cli("show", second["task_id"]).stdout
    assert "cache:" in shown and "% of input read from the cache, saved $" in shown
    assert first["task_id"] != second["task_id"]


def test_a_pool_that_needs_streaming_streams_and_a_cut_stream_is_lost(make_swarm: Any,
                                                                      fake_api: Any) -> None:
    def script(request: dict[str, Any]) -> Any:
        if "cut" in str(request["messages"][0]["content"]):
            return Reply(content=[{"type": "text", "text": "half an answer " * 50}],
                         cut_after=3)
        return text_reply("a long answer")

    fake_api.script = script
    spec = fast_spec(pool("a", model=HAIKU, extra="max_tokens: 64000\nmax_attempts: 1\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    whole = json.loads(swarm.cli("submit", "write at length", "--wait", "--json",
                                 "--timeout", "30").stdout)
    assert whole["status"] == "done" and whole["result"] == "a long answer"
    assert all(r.get("stream") is True for r in fake_api.received())
    cut = swarm.cli("submit", "cut me off", "--wait", "--json", "--timeout", "30")
    finding = json.loads(cut.stdout)
    assert finding["status"] == "failed"
    assert finding["error"].startswith("the answer was cut off mid-stream")
    total = total_row(cost(swarm))
    billed = fake_api.billed(detail=True)
    assert billed["streamed"] == 2 and billed["cut"] == 1
    assert total["calls"] == 1 and total["lost_calls"] == 1  # the cut call: lost, not free
