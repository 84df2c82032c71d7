"""The fake API's Message Batches endpoints, through the real SDK: create, retrieve,
results, cancel, list, delete; scripted answers, batch billing, faults, caching."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from tests.harness.fake_api import (
    BatchFaults,
    FakeAPI,
    Reply,
    error_reply,
    expired_reply,
    text_reply,
)

pytestmark = pytest.mark.timeout(30)
MODEL = "fake-model"  # the default cache minimum (1024 tokens) applies
EPHEMERAL = {"type": "ephemeral"}


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


def client(api: FakeAPI) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api.url, api_key="test", max_retries=0)


def echo(request: dict[str, Any]) -> Reply:
    """Answers "re: <the last user text>"."""
    content = request["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[-1]["text"]
    return text_reply(f"re: {text}")


def entry(custom_id: str, text: str, **params: Any) -> Any:
    """One request of a batch (Any: the SDK's TypedDict does not take our extra params)."""
    return {"custom_id": custom_id, "params": {
        "model": MODEL, "max_tokens": 100,
        "messages": [{"role": "user", "content": text}], **params}}


def results(c: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result for r in c.messages.batches.results(batch_id)}


def test_a_batch_ends_after_its_delay_and_answers_each_request_by_custom_id(
        make_api: Callable[..., FakeAPI]) -> None:
    clock = Clock()
    api = make_api(script=echo, clock=clock, batch_delay=60)
    c = client(api)
    batch = c.messages.batches.create(
        requests=[entry(f"q-{i}", f"question {i}") for i in range(5)])
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.ended_at is None and batch.cancel_initiated_at is None
    assert batch.request_counts.processing == 5 and batch.request_counts.succeeded == 0
    assert (batch.expires_at - batch.created_at).total_seconds() == 86_400
    clock.now += 59
    assert c.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        c.messages.batches.results(batch.id)
    clock.now += 1
    ended = c.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.results_url == f"{api.url}/v1/messages/batches/{batch.id}/results"
    assert ended.ended_at is not None
    assert (ended.ended_at - batch.created_at).total_seconds() == pytest.approx(60)
    assert ended.request_counts.model_dump() == {
        "processing": 0, "succeeded": 5, "errored": 0, "canceled": 0, "expired": 0}
    got = results(c, batch.id)
    assert sorted(got) == [f"q-{i}" for i in range(5)]
    for i in range(5):
        result = got[f"q-{i}"]
        assert result.type == "succeeded"
        assert result.message.content[0].text == f"re: question {i}"
        assert result.message.usage.service_tier == "batch"
    billed = api.billed()
    assert billed["responses"] == 0 and billed["by_model"] == {}  # nothing at standard rates
    usages = [r.message.usage for r in got.values()]
    assert billed["batch"]["responses"] == 5
    assert billed["batch"]["input_tokens"] == sum(u.input_tokens for u in usages)
    assert billed["batch"]["output_tokens"] == sum(u.output_tokens for u in usages)
    assert billed["batch"]["by_model"][MODEL]["responses"] == 5


def test_ordinary_and_batch_requests_are_billed_apart(make_api: Callable[..., FakeAPI]) -> None:
    clock = Clock()
    api = make_api(script=echo, clock=clock, batch_delay=1)
    c = client(api)
    plain = c.messages.create(model=MODEL, max_tokens=10,
                              messages=[{"role": "user", "content": "plain"}])
    assert plain.usage.service_tier is None
    batch = c.messages.batches.create(requests=[entry("a", "batched")])
    clock.now += 1
    assert c.messages.batches.retrieve(batch.id).processing_status == "ended"
    billed = api.billed(detail=True)
    assert billed["responses"] == 1 and billed["batch"]["responses"] == 1
    assert billed["input_tokens"] == plain.usage.input_tokens
    assert set(billed["batch"]) == {"responses", "input_tokens", "output_tokens",
                                    "cache_creation_input_tokens", "cache_read_input_tokens",
                                    "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens",
                                    "by_model"}


def test_waiting_on_the_real_clock(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(script=echo, batch_delay=0.2)
    c = client(api)
    batch = c.messages.batches.create(requests=[entry(f"r{i}", f"t{i}") for i in range(3)])
    deadline = time.monotonic() + 20
    while (status := c.messages.batches.retrieve(batch.id).processing_status) != "ended":
        assert status == "in_progress" and time.monotonic() < deadline
        time.sleep(0.02)
    assert {k: r.message.content[0].text for k, r in results(c, batch.id).items()} == {
        "r0": "re: t0", "r1": "re: t1", "r2": "re: t2"}


def test_errored_and_expired_entries_are_not_billed(make_api: Callable[..., FakeAPI]) -> None:
    def script(request: dict[str, Any]) -> Reply:
        text = request["messages"][-1]["content"]
        if text == "overloaded":
            return error_reply(529)
        if text == "late":
            return expired_reply()
        return echo(request)

    clock = Clock()
    api = make_api(script=script, clock=clock, batch_delay=1)
    c = client(api)
    batch = c.messages.batches.create(requests=[
        entry("ok", "fine"), entry("busy", "overloaded"), entry("slow", "late"),
        entry("bad", "x", max_tokens=0), entry("streamed", "s", stream=True)])
    clock.now += 1
    ended = c.messages.batches.retrieve(batch.id)
    assert ended.request_counts.model_dump() == {
        "processing": 0, "succeeded": 1, "errored": 3, "canceled": 0, "expired": 1}
    got = results(c, batch.id)
    assert got["ok"].type == "succeeded" and got["slow"].type == "expired"
    assert got["busy"].type == "errored"
    assert got["busy"].error.error.type == "overloaded_error"
    assert got["bad"].error.error.type == "invalid_request_error"
    assert "max_tokens" in got["bad"].error.error.message
    assert "stream" in got["streamed"].error.error.message
    assert api.billed()["batch"]["responses"] == 1
    assert api.errors() == {}  # entries' errors are results, not HTTP errors


def test_injected_entry_faults_are_reproducible(make_api: Callable[..., FakeAPI]) -> None:
    def run() -> dict[str, str]:
        clock = Clock()
        api = make_api(script=echo, clock=clock, batch_delay=1,
                       batch_faults=BatchFaults(errored=0.2, expired=0.2, seed=7))
        c = client(api)
        batch = c.messages.batches.create(requests=[entry(f"r{i}", f"t{i}")
                                                    for i in range(40)])
        clock.now += 1
        c.messages.batches.retrieve(batch.id)
        kinds = {k: r.type for k, r in results(c, batch.id).items()}
        assert api.billed()["batch"]["responses"] == list(kinds.values()).count("succeeded")
        return kinds

    first = run()
    assert set(first.values()) == {"succeeded", "errored", "expired"}
    assert run() == first


def test_cancel_ends_the_batch_with_its_unfinished_entries_canceled(
        make_api: Callable[..., FakeAPI]) -> None:
    clock = Clock()
    api = make_api(script=echo, clock=clock, batch_delay=40, batch_cancel_delay=5)
    c = client(api)
    batch = c.messages.batches.create(requests=[entry(f"r{i}", f"t{i}") for i in range(4)])
    clock.now += 10  # r0 is due at +10, r1 at +20...
    canceling = c.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None and canceling.results_url is None
    assert canceling.request_counts.processing == 4
    clock.now += 4
    assert c.messages.batches.retrieve(batch.id).processing_status == "canceling"
    clock.now += 1  # r1, due at +20, is never answered
    ended = c.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.request_counts.model_dump() == {
        "processing": 0, "succeeded": 1, "errored": 0, "canceled": 3, "expired": 0}
    assert {k: r.type for k, r in results(c, batch.id).items()} == {
        "r0": "succeeded", "r1": "canceled", "r2": "canceled", "r3": "canceled"}
    assert api.billed()["batch"]["responses"] == 1
    with pytest.raises(anthropic.BadRequestError, match="already ended"):
        c.messages.batches.cancel(batch.id)


def test_entries_due_after_the_24_hours_expire(make_api: Callable[..., FakeAPI]) -> None:
    clock = Clock()
    api = make_api(script=echo, clock=clock, batch_delay=2 * 86_400)
    c = client(api)
    batch = c.messages.batches.create(requests=[entry(f"r{i}", f"t{i}") for i in range(4)])
    clock.now += 86_400
    ended = c.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.ended_at == ended.expires_at
    assert {k: r.type for k, r in results(c, batch.id).items()} == {
        "r0": "succeeded", "r1": "succeeded", "r2": "expired", "r3": "expired"}


def test_prompt_caching_inside_batches(make_api: Callable[..., FakeAPI]) -> None:
    system = [{"type": "text", "text": "s" * 4 * 1200, "cache_control": EPHEMERAL}]  # 1201
    clock = Clock()
    api = make_api(script=echo, clock=clock, batch_delay=1)
    c = client(api)
    first = c.messages.batches.create(requests=[entry("w", "write it", system=system)])
    clock.now += 1
    c.messages.batches.retrieve(first.id)
    written = results(c, first.id)["w"].message.usage
    assert (written.cache_creation_input_tokens, written.cache_read_input_tokens) == (1201, 0)
    second = c.messages.batches.create(requests=[entry(f"r{i}", f"read {i}", system=system)
                                                 for i in range(3)])
    clock.now += 1
    c.messages.batches.retrieve(second.id)
    for result in results(c, second.id).values():
        usage = result.message.usage
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 1201)
        assert usage.service_tier == "batch"
    billed = api.billed(detail=True)["batch"]
    assert (billed["cache_creation_input_tokens"], billed["cache_read_input_tokens"],
            billed["ephemeral_5m_input_tokens"]) == (1201, 3 * 1201, 1201)
    # an ordinary request reads what the batches wrote
    plain = c.messages.create(model=MODEL, max_tokens=10, system=system,  # type: ignore[arg-type]
                              messages=[{"role": "user", "content": "plain"}])
    assert plain.usage.cache_read_input_tokens == 1201


def test_within_a_batch_later_entries_read_what_earlier_ones_wrote(
        make_api: Callable[..., FakeAPI]) -> None:
    system = [{"type": "text", "text": "p" * 4 * 1100, "cache_control": EPHEMERAL}]  # 1101
    clock = Clock()
    api = make_api(script=echo, clock=clock, batch_delay=3)
    c = client(api)
    batch = c.messages.batches.create(requests=[entry(f"r{i}", f"q {i}", system=system)
                                                for i in range(3)])
    clock.now += 3
    c.messages.batches.retrieve(batch.id)
    got = results(c, batch.id)
    assert [(got[k].message.usage.cache_creation_input_tokens,
             got[k].message.usage.cache_read_input_tokens) for k in ("r0", "r1", "r2")] == [
        (1101, 0), (0, 1101), (0, 1101)]


def test_list_pages_newest_first_and_delete(make_api: Callable[..., FakeAPI]) -> None:
    clock = Clock()
    api = make_api(script=echo, clock=clock, batch_delay=1)
    c = client(api)
    ids = [c.messages.batches.create(requests=[entry("a", f"t{i}")]).id for i in range(5)]
    page = c.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[:-3:-1] and page.has_more
    assert [b.id for b in c.messages.batches.list(limit=2)] == ids[::-1]  # auto-paging
    with pytest.raises(anthropic.BadRequestError, match="processing"):
        c.messages.batches.delete(ids[0])
    clock.now += 1
    assert c.messages.batches.delete(ids[0]).type == "message_batch_deleted"
    assert [b.id for b in c.messages.batches.list()] == ids[:0:-1]
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve(ids[0])


def test_bad_batches_are_400(make_api: Callable[..., FakeAPI]) -> None:
    c = client(make_api(script=echo))
    with pytest.raises(anthropic.BadRequestError, match="not unique"):
        c.messages.batches.create(requests=[entry("a", "x"), entry("a", "y")])
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        c.messages.batches.create(requests=[entry("no spaces", "x")])
    with pytest.raises(anthropic.BadRequestError, match="at least one"):
        c.messages.batches.create(requests=[])


def test_api_key_is_checked(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(script=echo, api_key="right")
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=api.url, api_key="wrong", max_retries=0
                            ).messages.batches.list()


def test_async_client_and_async_script(make_api: Callable[..., FakeAPI]) -> None:
    async def script(request: dict[str, Any]) -> Reply:
        await asyncio.sleep(0)
        return echo(request)

    clock = Clock()
    api = make_api(script=script, clock=clock, batch_delay=1)

    async def main() -> dict[str, str]:
        c = anthropic.AsyncAnthropic(base_url=api.url, api_key="test", max_retries=0)
        batch = await c.messages.batches.create(requests=[entry("a", "one"),
                                                          entry("b", "two")])
        clock.now += 1
        assert (await c.messages.batches.retrieve(batch.id)).processing_status == "ended"
        return {r.custom_id: r.result.message.content[0].text  # type: ignore[union-attr]
                async for r in await c.messages.batches.results(batch.id)}

    assert asyncio.run(main()) == {"a": "re: one", "b": "re: two"}


def test_concurrent_polls_answer_each_entry_once(make_api: Callable[..., FakeAPI]) -> None:
    async def slow(request: dict[str, Any]) -> Reply:
        await asyncio.sleep(0.01)
        return echo(request)

    clock = Clock()
    api = make_api(script=slow, clock=clock, batch_delay=1)
    c = client(api)
    batch = c.messages.batches.create(requests=[entry(f"r{i}", f"t{i}") for i in range(6)])
    clock.now += 1

    async def poll() -> list[str]:
        ac = anthropic.AsyncAnthropic(base_url=api.url, api_key="test", max_retries=0)
        done = await asyncio.gather(*(ac.messages.batches.retrieve(batch.id)
                                      for _ in range(4)))
        return [b.processing_status for b in done]

    assert asyncio.run(poll()) == ["ended"] * 4
    assert api.billed()["batch"]["responses"] == 6
    assert all(r.type == "succeeded" for r in results(c, batch.id).values())
