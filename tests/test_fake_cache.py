"""The fake Messages API's prompt caching, diagnostics, streaming and stop reasons,
through the real SDK, to the token.

Texts are built ``4 * n`` characters long so token counts are plain arithmetic: the
prefix up to and including a block is ``1 + characters so far // 4`` tokens."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import anthropic
import pytest

from tests.harness.fake_api import (
    STREAM_CHUNK,
    FakeAPI,
    Reply,
    count_input_tokens,
    pause_turn_reply,
    refusal_reply,
    request_layout,
    stop_sequence_reply,
    text_reply,
    tool_use_reply,
    truncated_reply,
)
from tests.harness.procs import checkout_env

MODEL = "fake-model"  # not in CACHE_MIN_TOKENS: the default minimum applies
EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


def chars(tokens: int, tag: str = "x") -> str:
    """A text of exactly ``4 * tokens`` characters."""
    return (tag * (4 * tokens))[:4 * tokens]


def system(tokens: int, tag: str = "s", marker: dict[str, str] | None = EPHEMERAL
           ) -> list[dict[str, Any]]:
    block: dict[str, Any] = {"type": "text", "text": chars(tokens, tag)}
    if marker is not None:
        block["cache_control"] = marker
    return [block]


def tool(description_tokens: int, marker: dict[str, str] | None = None) -> dict[str, Any]:
    """A tool of ``6 + description_tokens`` tokens: "grep12" + description +
    '{"type": "object"}' (6 + 4n + 18 characters)."""
    definition: dict[str, Any] = {"name": "grep12", "description": chars(description_tokens, "d"),
                                  "input_schema": {"type": "object"}}
    if marker is not None:
        definition["cache_control"] = marker
    return definition


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_api() -> Iterator[Callable[..., FakeAPI]]:
    started: list[FakeAPI] = []

    def make(**kwargs: Any) -> FakeAPI:
        api = FakeAPI(**kwargs).start()
        started.append(api)
        return api

    yield make
    for api in started:
        api.stop()


def client(api: FakeAPI, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api.url, api_key="test", max_retries=retries)


def call(c: anthropic.Anthropic, messages: list[dict[str, Any]], model: str = MODEL,
         **kwargs: Any) -> Any:
    return c.messages.create(model=model, max_tokens=100, messages=messages, **kwargs)


def tokens(usage: Any) -> tuple[int, int, int]:
    """(input, cache_creation, cache_read)."""
    return (usage.input_tokens, usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens)


def split(usage: Any) -> tuple[int, int]:
    """(5m, 1h) of the cache write."""
    return (usage.cache_creation.ephemeral_5m_input_tokens,
            usage.cache_creation.ephemeral_1h_input_tokens)


# --- minimums ----------------------------------------------------------------------------

def test_minimum_cacheable_tokens_per_model() -> None:
    api = FakeAPI()
    assert api.cache_min("claude-haiku-4-5-20251001") == 4096
    assert api.cache_min("claude-opus-4-5") == 4096
    assert api.cache_min("claude-sonnet-4-5-20250929") == 1024
    assert api.cache_min("test-model") == 1024
    tuned = FakeAPI(cache_min_tokens={"test-": 50, "claude-haiku-4-5-x": 9},
                    default_cache_min=7)
    assert tuned.cache_min("test-model") == 50 and tuned.cache_min("other") == 7
    assert tuned.cache_min("claude-haiku-4-5") == 4096  # the defaults stay
    assert tuned.cache_min("claude-haiku-4-5-x1") == 9  # the longest prefix wins


def test_below_the_minimum_nothing_is_cached(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api()
    c = client(api)
    haiku = "claude-haiku-4-5"
    for _ in range(2):  # a 4095-token prefix: under haiku 4.5's 4096, silently uncached
        usage = call(c, user(chars(3, "q")), model=haiku, system=system(4094)).usage
        assert tokens(usage) == (4095 + 3, 0, 0) and split(usage) == (0, 0)
    assert api.cached() == []
    first = call(c, user(chars(3, "q")), model=haiku, system=system(4095)).usage
    assert tokens(first) == (3, 4096, 0)  # exactly the minimum is cached
    assert [(e["model"], e["ttl"]) for e in api.cached()] == [(haiku, 300.0)]


# --- explicit breakpoints, conversations, lookback ----------------------------------------

def test_system_breakpoint_writes_then_reads(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api()
    c = client(api)
    haiku = "claude-haiku-4-5"
    first = call(c, user(chars(3, "a")), model=haiku, system=system(5000)).usage
    assert tokens(first) == (3, 5001, 0) and split(first) == (5001, 0)
    second = call(c, user(chars(5, "b")), model=haiku, system=system(5000)).usage
    assert tokens(second) == (5, 0, 5001) and split(second) == (0, 0)
    billed = api.billed(detail=True)
    assert billed["by_model"][haiku] == {
        "responses": 2, "input_tokens": 8, "output_tokens": billed["output_tokens"],
        "cache_creation_input_tokens": 5001, "cache_read_input_tokens": 5001,
        "ephemeral_5m_input_tokens": 5001, "ephemeral_1h_input_tokens": 0,
        "streamed": 0, "cut": 0}
    # another model has its own cache
    other = call(c, user(chars(3, "a")), model="claude-haiku-4-5-20251001",
                 system=system(5000)).usage
    assert tokens(other) == (3, 5001, 0)


def test_marking_a_block_does_not_change_its_prefix(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(default_cache_min=100)
    c = client(api)
    assert tokens(call(c, user(chars(2)), system=system(200)).usage) == (2, 201, 0)
    # the same system, now unmarked, read through a breakpoint on the message
    later = [{"role": "user", "content": [{"type": "text", "text": chars(2),
                                           "cache_control": EPHEMERAL}]}]
    assert tokens(call(c, later, system=system(200, marker=None)).usage) == (0, 2, 201)


def test_top_level_cache_control_grows_a_conversation_turn_by_turn(
        make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(default_cache_min=100)
    api.script = lambda req: text_reply(chars(10, "r"))
    c = client(api)
    messages = user(chars(40, "a"))
    # system 200 tokens (1 + 800 // 4 = 201 with the preamble), first question 40
    answer = call(c, messages, system=chars(200), cache_control=EPHEMERAL)
    assert tokens(answer.usage) == (0, 241, 0)
    total = 241
    for turn, (question, tag) in enumerate([(30, "b"), (20, "c"), (45, "d")], start=2):
        messages = messages + [
            {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                              for b in answer.content]},
            {"role": "user", "content": chars(question, tag)}]
        answer = call(c, messages, system=chars(200), cache_control=EPHEMERAL)
        grown = total + 10 + question  # the answer (40 chars) and the new question
        # reads the previous turn's whole prefix, writes the answer and the question
        assert tokens(answer.usage) == (0, grown - total, total), turn
        assert count_input_tokens(api.received()[-1]) == grown
        total = grown
    # the same request again reads everything and writes nothing
    assert tokens(call(c, messages, system=chars(200), cache_control=EPHEMERAL).usage) == (
        0, 0, total)


def blocks(count: int, marks: set[int]) -> list[dict[str, Any]]:
    """One user message of ``count`` 2-token text blocks, cache_control on ``marks``:
    the prefix up to block k is 1 + 2 * (k + 1) tokens."""
    content: list[dict[str, Any]] = []
    for i in range(count):
        block: dict[str, Any] = {"type": "text", "text": f"blk-{i:04d}"}
        if i in marks:
            block["cache_control"] = EPHEMERAL
        content.append(block)
    return [{"role": "user", "content": content}]


def prefix(k: int) -> int:
    return 1 + 2 * (k + 1)


def test_the_lookback_is_20_blocks(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(default_cache_min=10)
    c = client(api)
    assert tokens(call(c, blocks(5, {4})).usage) == (0, prefix(4), 0)
    # 25 blocks after the cached one: looked up at 9..29, missed, all written anew
    assert tokens(call(c, blocks(30, {29})).usage) == (0, prefix(29), 0)
    # 21 blocks after: 5..25, still a miss (the entry at 29 is after it)
    assert tokens(call(c, blocks(26, {25})).usage) == (0, prefix(25), 0)
    # 20 blocks after: 4..24 reaches block 4
    assert tokens(call(c, blocks(25, {24})).usage) == (0, prefix(24) - prefix(4), prefix(4))


def test_a_second_breakpoint_within_the_lookback_finds_the_entry(
        make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(default_cache_min=10)
    c = client(api)
    call(c, blocks(5, {4}))
    usage = call(c, blocks(30, {10, 29})).usage
    assert tokens(usage) == (0, prefix(29) - prefix(4), prefix(4))
    # both breakpoints were written: a request ending at block 10 reads it all
    assert tokens(call(c, blocks(11, {10})).usage) == (0, 0, prefix(10))


def test_the_longest_hit_is_read_and_later_breakpoints_are_written(
        make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(default_cache_min=10)
    c = client(api)
    call(c, blocks(8, {3, 7}))
    usage = call(c, blocks(12, {3, 7, 11})).usage
    assert tokens(usage) == (0, prefix(11) - prefix(7), prefix(7))
    # content after the last breakpoint is plain input
    assert tokens(call(c, blocks(15, {3, 7, 11})).usage) == (
        prefix(14) - prefix(11), 0, prefix(11))


# --- TTLs --------------------------------------------------------------------------------

def test_entries_expire_after_their_ttl_and_hits_refresh_them(
        make_api: Callable[..., FakeAPI]) -> None:
    clock = Clock()
    api = make_api(default_cache_min=100, clock=clock)
    c = client(api)
    ask = lambda: tokens(call(c, user(chars(2)), system=system(200)).usage)  # noqa: E731
    assert ask() == (2, 201, 0)
    clock.now += 299
    assert ask() == (2, 0, 201)  # a hit: 300 s again from now
    clock.now += 299
    assert ask() == (2, 0, 201)  # alive only because the last hit refreshed it
    assert [round(e["expires_in"]) for e in api.cached()] == [300]
    clock.now += 300
    assert api.cached() == []
    assert ask() == (2, 201, 0)  # expired: written (and paid) again

    hour = lambda: tokens(call(c, user(chars(2)), system=system(200, "h", HOUR)).usage)  # noqa: E731
    assert hour() == (2, 201, 0)
    clock.now += 3599
    assert hour() == (2, 0, 201)
    clock.now += 3600
    assert hour() == (2, 201, 0)


def test_5m_and_1h_writes_are_billed_apart(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(default_cache_min=100)
    c = client(api)
    # tool 1 + 6 + 194 = 201 tokens (1h), system +100 = 301 (5m), question +50 = 351 (5m)
    kwargs: dict[str, Any] = {"tools": [tool(194, HOUR)], "system": system(100),
                              "cache_control": EPHEMERAL}
    first = call(c, user(chars(50, "u")), **kwargs).usage
    assert tokens(first) == (0, 351, 0) and split(first) == (150, 201)
    second = call(c, user(chars(60, "v")), **kwargs).usage
    assert tokens(second) == (0, 60, 301) and split(second) == (60, 0)
    billed = api.billed(detail=True)
    assert (billed["cache_creation_input_tokens"], billed["ephemeral_5m_input_tokens"],
            billed["ephemeral_1h_input_tokens"], billed["cache_read_input_tokens"]) == (
        411, 210, 201, 301)
    assert api.billed().keys() == {"responses", "input_tokens", "output_tokens",
                                   "cache_creation_input_tokens", "cache_read_input_tokens",
                                   "by_model", "batch"}
    assert sorted(e["ttl"] for e in api.cached()) == [300.0, 300.0, 300.0, 3600.0]


@pytest.mark.parametrize("kwargs,where", [
    ({"system": system(10), "messages": [{"role": "user", "content": [
        {"type": "text", "text": "q", "cache_control": HOUR}]}]},
     "messages.0.content.0.cache_control.ttl"),
    ({"system": system(10), "messages": user("q"), "cache_control": HOUR},
     "cache_control.ttl"),
    ({"tools": [tool(1, EPHEMERAL)], "system": system(10, marker=HOUR), "messages": user("q")},
     "system.0.cache_control.ttl"),
])
def test_a_1h_breakpoint_after_a_5m_one_is_a_400(make_api: Callable[..., FakeAPI],
                                                 kwargs: dict[str, Any], where: str) -> None:
    api = make_api()
    with pytest.raises(anthropic.BadRequestError) as err:
        client(api, retries=2).messages.create(model=MODEL, max_tokens=10, **kwargs)
    assert err.value.status_code == 400 and err.value.type == "invalid_request_error"
    assert err.value.api_message == (
        f"{where}: a ttl='1h' cache_control block must not come after a ttl='5m' "
        "cache_control block. Note that blocks are processed in the following order: "
        "`tools`, `system`, `messages`.")
    assert api.requests == 1 and api.billed()["responses"] == 0


def test_more_than_4_breakpoints_is_a_400(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api()
    c = client(api, retries=2)
    four = [{"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL}
            for i in range(4)]
    with pytest.raises(anthropic.BadRequestError) as err:
        call(c, [{"role": "user", "content": [*four, {"type": "text", "text": "q",
                                                      "cache_control": EPHEMERAL}]}])
    assert err.value.api_message == (
        "A maximum of 4 blocks with cache_control may be provided. Found 5.")
    with pytest.raises(anthropic.BadRequestError, match="Found 5"):  # top-level counts
        call(c, user("q"), system=four, cache_control=EPHEMERAL)
    assert api.billed()["responses"] == 0
    # four are fine, and the top-level one on an already marked last block is that one
    call(c, [{"role": "user", "content": four}], cache_control=EPHEMERAL)
    assert api.billed()["responses"] == 1


# --- concurrency -------------------------------------------------------------------------

def test_concurrent_writes_both_pay_and_a_later_call_reads(
        make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(latency=0.3, default_cache_min=100)

    async def main() -> list[Any]:
        async with anthropic.AsyncAnthropic(base_url=api.url, api_key="test",
                                            max_retries=0) as c:
            ask = lambda: c.messages.create(  # noqa: E731
                model=MODEL, max_tokens=10, system=system(200), messages=user(chars(2)))
            both = await asyncio.gather(ask(), ask())
            return [*both, await ask()]

    first, second, third = [r.usage for r in asyncio.run(main())]
    assert tokens(first) == tokens(second) == (2, 201, 0)
    assert tokens(third) == (2, 0, 201)
    billed = api.billed()
    assert (billed["cache_creation_input_tokens"], billed["cache_read_input_tokens"]) == (
        402, 201)


# --- explicit counts and the switch ------------------------------------------------------

def test_explicit_counts_bill_exactly_and_leave_the_cache_alone(
        make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(default_cache_min=100)
    c = client(api)
    api.script = lambda req: text_reply("x", input_tokens=7)
    assert tokens(call(c, user(chars(2)), system=system(200)).usage) == (7, 0, 0)
    api.script = lambda req: text_reply("x", cache_read_input_tokens=5)
    assert tokens(call(c, user(chars(2)), system=system(200)).usage) == (203, 0, 5)
    api.script = lambda req: text_reply("x", cache_creation_input_tokens=9,
                                        cache_creation_1h_input_tokens=4)
    usage = call(c, user(chars(2)), system=system(200)).usage
    assert tokens(usage) == (203, 9, 0) and split(usage) == (5, 4)
    assert api.cached() == []
    api.script = lambda req: text_reply("x")
    assert tokens(call(c, user(chars(2)), system=system(200)).usage) == (2, 201, 0)
    api.cache = False
    assert tokens(call(c, user(chars(2)), system=system(200)).usage) == (203, 0, 0)


def test_input_tokens_count_tools_system_and_messages() -> None:
    request = {"model": "m", "tools": [tool(4)], "system": chars(3), "messages": [
        {"role": "user", "content": [{"type": "text", "text": chars(2)},
                                     {"type": "text", "text": "abc"}]}]}
    # the tool: "grep12" + 16 + '{"type": "object"}' = 40 characters
    assert count_input_tokens(request) == 1 + (40 + 12 + 8 + 3) // 4
    assert request_layout(request).tokens == [11, 14, 16, 16]
    assert request_layout(request).paths == ["tools.0", "system.0", "messages.0.content.0",
                                             "messages.0.content.1"]


# --- diagnostics -------------------------------------------------------------------------

def test_diagnostics_say_why_the_prefix_changed(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(default_cache_min=100)
    api.script = lambda req: text_reply(chars(10, "r"))
    c = client(api)
    types = anthropic.types
    # tool 101 tokens, system +100 = 201, first question +50 = 251
    base: dict[str, Any] = {"tools": [tool(94)], "system": chars(100),
                            "cache_control": EPHEMERAL}
    first_turn = user(chars(50, "a"))

    def ask(messages: list[dict[str, Any]], previous: str | None, **change: Any) -> Any:
        return call(c, messages, **{**base, **change,
                                    "diagnostics": {"previous_message_id": previous}})

    r1 = ask(first_turn, None)
    assert r1.diagnostics is None  # opted in, nothing to compare yet
    conversation = first_turn + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                          for b in r1.content]},
        {"role": "user", "content": chars(10, "b")}]
    r2 = ask(conversation, r1.id)  # only appended: null
    assert r2.diagnostics is None and tokens(r2.usage) == (0, 20, 251)
    cached = 271  # what r2's last breakpoint holds

    reason = ask(conversation, r2.id, model="other-model").diagnostics.cache_miss_reason
    assert isinstance(reason, types.CacheMissModelChanged)
    assert reason.cache_missed_input_tokens == cached
    reason = ask(conversation, r2.id, tools=[tool(93)]).diagnostics.cache_miss_reason
    assert isinstance(reason, types.CacheMissToolsChanged)
    assert reason.cache_missed_input_tokens == cached
    reason = ask(conversation, r2.id, system=chars(100, "S")).diagnostics.cache_miss_reason
    assert isinstance(reason, types.CacheMissSystemChanged)
    assert reason.cache_missed_input_tokens == cached - 101  # the tool still matches
    edited = [{"role": "user", "content": chars(50, "A")}] + conversation[1:]
    reason = ask(edited, r2.id).diagnostics.cache_miss_reason
    assert isinstance(reason, types.CacheMissMessagesChanged)
    assert reason.cache_missed_input_tokens == cached - 201
    reason = ask(conversation, "msg_unknown").diagnostics.cache_miss_reason
    assert isinstance(reason, types.CacheMissPreviousMessageNotFound)
    assert reason.type == "previous_message_not_found"
    assert call(c, conversation, **base).diagnostics is None  # not asked for
    assert "diagnostics" not in json.dumps(api.received()[-1])
    # a stream carries them in message_start
    with c.messages.stream(model=MODEL, max_tokens=10, messages=conversation,
                           diagnostics={"previous_message_id": "msg_gone"}) as stream:
        final = stream.get_final_message()
    assert final.diagnostics is not None and final.diagnostics.cache_miss_reason is not None
    assert final.diagnostics.cache_miss_reason.type == "previous_message_not_found"


# --- streaming ---------------------------------------------------------------------------

REPLIES = {
    "text": lambda: text_reply("Ça va? " + "streamed text, in pieces. " * 5),
    "tool_use": lambda: tool_use_reply("grep", {"pattern": "é\u1234 \"quoted\" " * 4,
                                                "paths": ["a", "b"], "n": 3},
                                       id="toolu_fixed", text="let me look"),
}


def _raw(c: anthropic.Anthropic, **kwargs: Any) -> dict[str, Any]:
    """create(stream=True), accumulated by hand from the raw events."""
    events = list(c.messages.create(stream=True, **kwargs))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    start = events[0].message
    assert start.stop_reason is None and start.content == [] and start.usage.output_tokens == 1
    content: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for event in events:
        if event.type == "content_block_start":
            content.append(event.content_block.model_dump(exclude_none=True))
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            content[event.index]["text"] += event.delta.text
        elif event.type == "content_block_delta":
            partial[event.index] = partial.get(event.index, "") + event.delta.partial_json
        elif event.type == "content_block_stop" and event.index in partial:
            content[event.index]["input"] = json.loads(partial[event.index])
    delta = events[-2]
    usage = start.usage.model_copy()
    usage.output_tokens = delta.usage.output_tokens
    assert (delta.usage.input_tokens, delta.usage.cache_creation_input_tokens,
            delta.usage.cache_read_input_tokens) == tokens(start.usage)
    return {"content": content, "stop_reason": delta.delta.stop_reason,
            "usage": usage.model_dump()}


def _seen(message: Any) -> dict[str, Any]:
    return {"content": [b.model_dump(exclude_none=True) for b in message.content],
            "stop_reason": message.stop_reason, "usage": message.usage.model_dump()}


async def _async_stream(url: str, kwargs: dict[str, Any]) -> Any:
    async with anthropic.AsyncAnthropic(base_url=url, api_key="test") as c:
        async with c.messages.stream(**kwargs) as stream:
            return await stream.get_final_message()


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_streaming_gives_what_a_plain_call_gives(make_api: Callable[..., FakeAPI],
                                                 kind: str) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "system": system(200),
                              "messages": user(chars(3))}
    seen: dict[str, list[dict[str, Any]]] = {}
    for mode in ("create", "stream", "raw", "async"):
        api = make_api(default_cache_min=100, script=lambda req: REPLIES[kind]())
        c = client(api)
        runs = []
        for _ in range(2):  # the first writes the system prompt, the second reads it
            if mode == "create":
                runs.append(_seen(c.messages.create(**kwargs)))
            elif mode == "stream":
                with c.messages.stream(**kwargs) as stream:
                    runs.append(_seen(stream.get_final_message()))
            elif mode == "raw":
                runs.append(_raw(c, **kwargs))
            else:
                runs.append(_seen(asyncio.run(_async_stream(api.url, kwargs))))
        seen[mode] = runs
        billed = api.billed(detail=True)
        assert billed["streamed"] == (0 if mode == "create" else 2) and billed["cut"] == 0
    assert seen["create"][0]["usage"]["cache_creation_input_tokens"] == 201
    assert seen["create"][1]["usage"]["cache_read_input_tokens"] == 201
    assert seen["stream"] == seen["raw"] == seen["async"] == seen["create"]


@pytest.mark.parametrize("cut_after", [0, 4])
def test_a_stream_cut_off_raises_in_the_sdk_and_is_billed(
        make_api: Callable[..., FakeAPI], cut_after: int) -> None:
    api = make_api(default_cache_min=100)
    reply = text_reply(chars(50, "t"), cut_after=cut_after)
    api.script = lambda req: reply
    c = client(api, retries=2)
    received: list[str] = []
    with pytest.raises(Exception) as err:  # the SDK's transport's own error, see below
        with c.messages.stream(model=MODEL, max_tokens=100, system=system(200),
                               messages=user(chars(2))) as stream:
            for text in stream.text_stream:
                received.append(text)
    # not wrapped in an anthropic error, and not retried
    assert type(err.value).__name__ == "RemoteProtocolError"
    assert "incomplete chunked read" in str(err.value)
    assert not isinstance(err.value, anthropic.APIError)
    assert api.requests == 1
    # events: message_start, content_block_start, ping, the first delta | cut
    assert received == ([chars(50, "t")[:STREAM_CHUNK]] if cut_after == 4 else [])
    billed = api.billed(detail=True)
    assert (billed["responses"], billed["streamed"], billed["cut"]) == (1, 1, 1)
    assert (billed["input_tokens"], billed["cache_creation_input_tokens"],
            billed["output_tokens"]) == (2, 201, 51)  # all of it, output included
    # the cut reply's cache write was committed; the same connection pool still works
    api.script = lambda req: text_reply("ok")
    assert tokens(call(c, user(chars(2)), system=system(200)).usage) == (2, 0, 201)


def test_a_stream_can_be_spaced_out(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(script=lambda req: text_reply(chars(8), stream_interval=0.05))
    started = time.monotonic()
    with client(api).messages.stream(model=MODEL, max_tokens=10,
                                     messages=user("hi")) as stream:
        kinds = [event.type for event in stream]
    # 8 events (start, block start, ping, 2 deltas, block stop, delta, stop): 7 gaps
    assert time.monotonic() - started >= 0.3
    # the SDK drops the ping; the 2 text deltas are two events of their own
    assert kinds.count("text") == 2 and kinds[-1] == "message_stop"


# --- stop reasons ------------------------------------------------------------------------

@pytest.mark.parametrize("reply,stop_reason,stop_sequence,details", [
    (text_reply("done"), "end_turn", None, None),
    (tool_use_reply("grep", {"p": 1}), "tool_use", None, None),
    (truncated_reply("cut off mid-sen"), "max_tokens", None, None),
    (stop_sequence_reply("up to the", "END"), "stop_sequence", "END", None),
    (refusal_reply("I won't", category="cyber", explanation="policy"), "refusal", None,
     {"type": "refusal", "category": "cyber", "explanation": "policy"}),
    (pause_turn_reply("searching"), "pause_turn", None, None),
    (Reply(content=[], stop_reason="model_context_window_exceeded"),
     "model_context_window_exceeded", None, None),
])
def test_every_stop_reason(make_api: Callable[..., FakeAPI], reply: Reply, stop_reason: str,
                           stop_sequence: str | None, details: dict[str, Any] | None) -> None:
    api = make_api(script=lambda req: reply)
    c = client(api)
    plain = call(c, user("go"))
    with c.messages.stream(model=MODEL, max_tokens=100, messages=user("go")) as stream:
        streamed = stream.get_final_message()
    for message in (plain, streamed):
        assert message.stop_reason == stop_reason
        assert message.stop_sequence == stop_sequence
        got = message.stop_details.model_dump() if message.stop_details else None
        assert got == details
        assert [b.model_dump(exclude_none=True) for b in message.content] == reply.content


# --- as its own process ------------------------------------------------------------------

def test_the_process_caches_by_default() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.harness.fake_api", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=checkout_env())
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().removeprefix("listening on ")
        c = anthropic.Anthropic(base_url=url, api_key="test", max_retries=0)
        first = call(c, user(chars(2)), system=system(1100)).usage  # over 1024
        second = call(c, user(chars(2)), system=system(1100)).usage
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert tokens(first) == (2, 1101, 0) and tokens(second) == (2, 0, 1101)
    billed = json.loads(out.strip().removeprefix("billed "))
    assert (billed["cache_creation_input_tokens"], billed["cache_read_input_tokens"],
            billed["ephemeral_5m_input_tokens"], billed["input_tokens"]) == (1101, 1101, 1101, 4)
