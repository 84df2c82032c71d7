"""The metering proxy of CLI tasks (workers/api_proxy.py), with a real embedded Redis, the
fake Messages API and the real SDK as the client: every call it forwards is in the ledger
exactly as the API billed it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from tests.harness.fake_api import FakeAPI, Faults, stream_events, text_reply
from workers import keys
from workers.api_proxy import MeteredProxy, TaskMeter
from workers.stream_usage import UsageOfStream as _UsageOfStream
from workers.stream_usage import usage_of as _usage
from workers.ledger import Ledger
from workers.pricing import PriceBook, Usage
from workers.redis_target import RedisTarget

SWARM = "px"
HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-4-6"
REAL_KEY = "sk-ant-real-key-of-the-swarm"
SYSTEM = "You are a careful reviewer of code. " * 12  # about 110 tokens: cached (1h)


@pytest.fixture
def redis_target(tmp_path: Path) -> Iterator[RedisTarget]:
    """A real embedded Redis with nothing in it."""
    from launcher.redis_server import EmbeddedRedis
    from launcher.state import StateDir

    server = EmbeddedRedis(StateDir(tmp_path / "state"), tmp_path / "redis.log")
    target = server.start()
    try:
        yield target
    finally:
        server.stop()


@pytest.fixture
def make_fake() -> Iterator[Callable[..., FakeAPI]]:
    """The fake API, which answers only the swarm's real key; small cacheable prefixes."""
    made: list[FakeAPI] = []

    def make(**kw: Any) -> FakeAPI:
        api = FakeAPI(api_key=REAL_KEY, cache_min_tokens={HAIKU: 64, SONNET: 64}, **kw)
        made.append(api.start())
        return api

    yield make
    for api in made:
        api.stop()


@dataclass
class Rig:
    proxy: MeteredProxy
    redis: Any
    sent: list[httpx2.Request]  # what the proxy sent to the API

    def client(self, token: str, retries: int = 0) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.proxy.url, api_key=token,
                                        max_retries=retries)

    async def ledger(self, dim: str = "total", key: str = "*") -> dict[str, int]:
        counters = await self.redis.hgetall(keys.ledger(SWARM))
        prefix = f"{dim}|{key}|"
        return {k[len(prefix):]: int(v) for k, v in counters.items() if k.startswith(prefix)}

    async def inflight(self) -> dict[str, str]:
        return dict(await self.redis.hgetall(keys.inflight(SWARM)))


@asynccontextmanager
async def rig(target: RedisTarget, api: FakeAPI, *, models: tuple[str, ...] = (HAIKU, SONNET),
              upstream: str = "", credentials: dict[str, str] | None = None
              ) -> AsyncIterator[Rig]:
    redis = target.aio(max_connections=1024)  # as the worker sizes its pool
    sent: list[httpx2.Request] = []

    async def record(request: httpx2.Request) -> None:
        sent.append(request)

    http = httpx2.AsyncClient(limits=httpx2.Limits(max_connections=1000,
                                                   max_keepalive_connections=500),
                              event_hooks={"request": [record]})

    def ledger(model: str) -> Ledger | None:
        if model not in models:
            return None
        return Ledger(redis, SWARM, f"{SWARM}/h1/cli-1", f"{SWARM}/h1/cli-1#1", "cli", model,
                      PriceBook(), None)

    proxy = MeteredProxy(upstream or api.url, ledger, http,
                         **(credentials or {"api_key": REAL_KEY}))
    await proxy.start()
    try:
        yield Rig(proxy, redis, sent)
    finally:
        await proxy.stop()
        await http.aclose()
        await redis.aclose()


def request(i: int, model: str = HAIKU) -> dict[str, Any]:
    """A call whose system prompt is cached for an hour and its question for 5 minutes."""
    return {"model": model, "max_tokens": 512,
            "system": [{"type": "text", "text": SYSTEM,
                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": f"question {i} " * 30,
                 "cache_control": {"type": "ephemeral"}}]}]}


def usage_of(message: Any) -> Usage:
    return Usage.of(message.usage)


def counted(ledger: dict[str, int]) -> dict[str, int]:
    return {"responses": ledger.get("calls", 0), "input_tokens": ledger.get("input", 0),
            "output_tokens": ledger.get("output", 0),
            "cache_creation_input_tokens": ledger.get("cache_write", 0),
            "cache_read_input_tokens": ledger.get("cache_read", 0),
            "ephemeral_1h_input_tokens": ledger.get("cache_write_1h", 0)}


def billed(bill: dict[str, Any]) -> dict[str, int]:
    return {k: bill[k] for k in ("responses", "input_tokens", "output_tokens",
                                 "cache_creation_input_tokens", "cache_read_input_tokens",
                                 "ephemeral_1h_input_tokens")}


def as_usage(bill: dict[str, int]) -> Usage:
    return Usage(bill["input_tokens"], bill["output_tokens"],
                 bill["cache_creation_input_tokens"], bill["cache_read_input_tokens"],
                 bill["ephemeral_1h_input_tokens"])


def test_the_ledger_matches_the_apis_bill_to_the_token_through_faults_and_retries(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake(faults=Faults(rate=0.3, statuses=(429, 529, 500), seed=7))

    async def main() -> tuple[list[TaskMeter], Usage, dict[str, Any]]:
        async with rig(redis_target, api) as r:
            tokens = [r.proxy.open_task(f"t{n}", run="r1") for n in range(4)]
            seen = Usage()

            async def one(token: str, i: int) -> None:
                client = r.client(token, retries=10)
                model = (HAIKU, SONNET)[i % 2]
                if i % 3:
                    async with client.messages.stream(**request(i, model)) as stream:
                        message = await stream.get_final_message()
                else:
                    message = await client.messages.create(**request(i, model))
                assert getattr(message.content[0], "text", "").startswith("done: question")
                seen.add(usage_of(message))

            await asyncio.gather(*(one(t, i) for t in tokens for i in range(10)))
            meters = [r.proxy.close_task(t) for t in tokens]
            ledger = {"total": await r.ledger(), HAIKU: await r.ledger("model", HAIKU),
                      SONNET: await r.ledger("model", SONNET),
                      "run": await r.ledger("run", "r1"), "inflight": await r.inflight()}
            return meters, seen, ledger

    meters, seen, ledger = asyncio.run(main())
    bill = api.billed(detail=True)
    assert sum(api.errors().values()) > 5  # the faults happened, and the SDK retried
    assert bill["responses"] == 40 and bill["streamed"] == 24 and bill["cut"] == 0
    assert counted(ledger["total"]) == billed(bill) == counted(ledger["run"])
    for model in (HAIKU, SONNET):
        assert counted(ledger[model]) == billed(bill["by_model"][model])
    assert bill["cache_read_input_tokens"] and bill["ephemeral_1h_input_tokens"]
    assert seen == as_usage(bill)  # what the SDK itself made of the answers
    total = Usage()
    for meter in meters:
        total.add(meter.usage)
        assert meter.calls == 10 and sorted(meter.models) == [HAIKU, SONNET]
        assert meter.lost == meter.inflight == meter.refused == 0
    assert total == as_usage(bill)
    assert sum(m.nano or 0 for m in meters) == ledger["total"]["nano"] > 0
    assert ledger["inflight"] == {} and "lost_calls" not in ledger["total"]


def test_a_429_holds_the_whole_swarm_back_and_is_not_billed(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake(faults=Faults(rate=1.0, statuses=(429,)), retry_after=5)

    async def main() -> tuple[int, dict[str, int], dict[str, str]]:
        async with rig(redis_target, api) as r:
            client = r.client(r.proxy.open_task("t1"))
            with pytest.raises(anthropic.RateLimitError) as caught:
                await client.messages.create(**request(1))
            assert caught.value.response.headers["retry-after-ms"] == "5000"  # passed on
            return (await r.redis.pttl(keys.cooldown(SWARM, HAIKU)), await r.ledger(),
                    await r.inflight())

    cooldown, ledger, inflight = asyncio.run(main())
    assert 3000 < cooldown <= 5000
    assert api.errors() == {429: 1} and ledger == {} and inflight == {}


def test_an_unknown_or_closed_token_is_refused_and_nothing_reaches_the_api(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake()

    async def main() -> Rig:
        async with rig(redis_target, api) as r:
            closed = r.proxy.open_task("t1")
            r.proxy.close_task(closed)
            for token in ("swarm-guessed", closed, REAL_KEY):
                with pytest.raises(anthropic.AuthenticationError, match="not a task token"):
                    await r.client(token).messages.create(**request(1))
            bearer = anthropic.AsyncAnthropic(base_url=r.proxy.url, auth_token="swarm-guessed",
                                              max_retries=0)
            with pytest.raises(anthropic.AuthenticationError):
                await bearer.messages.create(**request(1))
            return r

    r = asyncio.run(main())
    assert api.requests == 0 and r.sent == []


def test_the_api_gets_the_real_key_and_never_the_tasks_token(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake()

    async def main(credentials: dict[str, str]) -> tuple[str, Rig]:
        async with rig(redis_target, api, credentials=credentials) as r:
            token = r.proxy.open_task("t1")
            client = r.client(token)
            for i in range(5):  # one after another: one kept-alive connection
                async with client.messages.stream(**request(i)) as stream:
                    await stream.get_final_message()
                await client.messages.create(**request(i))
            assert r.proxy.connections == 1
            return token, r

    for credentials, header, value in ((dict(api_key=REAL_KEY), "x-api-key", REAL_KEY),
                                       (dict(auth_token=REAL_KEY), "authorization",
                                        f"Bearer {REAL_KEY}")):
        token, r = asyncio.run(main(credentials))
        assert len(r.sent) == 10
        for sent in r.sent:
            assert sent.headers[header] == value
            assert not any(token in v for v in sent.headers.values())
            assert sent.headers["anthropic-version"] and sent.url.path == "/v1/messages"
    assert api.errors() == {} and api.billed()["responses"] == 20


def test_a_stream_cut_off_upstream_is_cut_off_for_the_client_and_counted_lost(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake(script=lambda req: text_reply("words " * 60, cut_after=4))

    async def main() -> tuple[TaskMeter, dict[str, int], dict[str, str]]:
        async with rig(redis_target, api) as r:
            token = r.proxy.open_task("t1")
            with pytest.raises((anthropic.APIError, httpx2.HTTPError)):
                async with r.client(token, retries=3).messages.stream(**request(1)) as stream:
                    await stream.get_final_message()
            return r.proxy.close_task(token), await r.ledger(), await r.inflight()

    meter, ledger, inflight = asyncio.run(main())
    assert api.billed(detail=True)["cut"] == 1 and api.requests == 1  # not retried
    assert ledger["lost_calls"] == 1 and ledger["lost_bound_nano"] > 0
    assert "calls" not in ledger and inflight == {}
    assert (meter.calls, meter.lost, meter.lost_bound_nano) == (0, 1, ledger["lost_bound_nano"])


def test_a_client_that_hangs_up_mid_stream_leaves_a_lost_call(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake(script=lambda req: text_reply("z" * 3200, stream_interval=0.02))

    async def main() -> tuple[float, dict[str, int], dict[str, str]]:
        async with rig(redis_target, api) as r:
            started = time.monotonic()
            async with r.client(r.proxy.open_task("t1")).messages.stream(
                    **request(1)) as stream:
                async for event in stream:
                    if event.type == "content_block_delta":
                        break
            while not (ledger := await r.ledger()).get("lost_calls"):
                await asyncio.sleep(0.02)
            return time.monotonic() - started, ledger, await r.inflight()

    elapsed, ledger, inflight = asyncio.run(main())
    assert elapsed < 2.0  # the whole stream takes over 4 s: it was dropped, not drained
    assert ledger["lost_calls"] == 1 and "calls" not in ledger and inflight == {}


def test_the_tasks_cap_refuses_its_calls_once_spent(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake()

    async def main() -> tuple[TaskMeter, str, dict[str, int]]:
        async with rig(redis_target, api) as r:
            token = r.proxy.open_task("t1", cap_nano=1)
            client = r.client(token, retries=3)
            await client.messages.create(**request(1))
            with pytest.raises(anthropic.BadRequestError) as caught:
                async with client.messages.stream(**request(2)) as stream:
                    await stream.get_final_message()
            other = r.client(r.proxy.open_task("t2", cap_nano=10**12))
            await other.messages.create(**request(3))  # another task's cap is its own
            return r.proxy.close_task(token), str(caught.value), await r.ledger()

    meter, error, ledger = asyncio.run(main())
    assert "spent its cost limit" in error
    assert (meter.calls, meter.refused) == (1, 1) and meter.nano and meter.nano > 1
    assert api.requests == 2 and ledger["calls"] == 2


def test_a_model_the_task_is_not_offered_is_refused_before_anything_is_sent(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake()

    async def main() -> dict[str, int]:
        async with rig(redis_target, api, models=(HAIKU,)) as r:
            client = r.client(r.proxy.open_task("t1"), retries=2)
            with pytest.raises(anthropic.BadRequestError, match="not offered to this task"):
                await client.messages.create(**request(1, SONNET))
            await client.messages.create(**request(1, HAIKU))
            return await r.ledger()

    ledger = asyncio.run(main())
    assert api.requests == 1 and ledger["calls"] == 1


def test_an_api_the_proxy_cannot_reach_is_a_502_and_no_call(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def main() -> tuple[dict[str, int], dict[str, str]]:
        async with rig(redis_target, api, upstream=closed) as r:
            client = r.client(r.proxy.open_task("t1"), retries=1)
            with pytest.raises(anthropic.InternalServerError, match="could not|call failed"):
                await client.messages.create(**request(1))
            return await r.ledger(), await r.inflight()

    ledger, inflight = asyncio.run(main())
    assert ledger == {} and inflight == {}  # withdrawn: it never left


def test_count_tokens_is_forwarded_unmetered_and_nothing_else_is_forwarded(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake()  # it has no count_tokens: its own 404 says it got the request

    async def main() -> tuple[Rig, dict[str, int], dict[str, str]]:
        async with rig(redis_target, api) as r:
            client = r.client(r.proxy.open_task("t1"))
            with pytest.raises(anthropic.NotFoundError, match="count_tokens: not found"):
                await client.messages.count_tokens(model=HAIKU, messages=request(1)["messages"])
            with pytest.raises(anthropic.NotFoundError, match="the proxy forwards only"):
                await client.models.list()
            with pytest.raises(anthropic.NotFoundError, match="the proxy forwards only"):
                await client.messages.batches.create(requests=[])
            return r, await r.ledger(), await r.inflight()

    r, ledger, inflight = asyncio.run(main())
    assert [s.url.path for s in r.sent] == ["/v1/messages/count_tokens"]
    assert ledger == {} and inflight == {} and api.requests == 0


def test_events_reach_the_client_as_they_arrive_not_when_the_stream_ends(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake(script=lambda req: text_reply("a" * 64, stream_interval=0.25))

    async def main() -> list[tuple[str, float]]:
        async with rig(redis_target, api) as r:
            client = r.client(r.proxy.open_task("t1"))
            await client.messages.create(**request(0))  # connected and warm
            started, seen = time.monotonic(), list[tuple[str, float]]()
            async with client.messages.stream(**request(1)) as stream:
                async for event in stream:
                    seen.append((event.type, time.monotonic() - started))
            return seen

    seen = asyncio.run(main())
    assert seen[0][0] == "message_start" and seen[0][1] < 1.0
    assert seen[-1][0] == "message_stop" and seen[-1][1] > 2.0


def test_hundreds_of_concurrent_streams_through_one_proxy(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake(latency=0.5, script=lambda req: text_reply("b" * 200))
    n = 300

    async def main() -> tuple[float, float, int, dict[str, int]]:
        async with rig(redis_target, api) as r:
            token = r.proxy.open_task("t1")
            client = anthropic.AsyncAnthropic(
                base_url=r.proxy.url, api_key=token, max_retries=0,
                http_client=httpx2.AsyncClient(limits=httpx2.Limits(max_connections=1000)))
            lag, stop = [0.0], asyncio.Event()

            async def ticker() -> None:  # how late the loop wakes a 10 ms sleeper
                while not stop.is_set():
                    before = time.monotonic()
                    await asyncio.sleep(0.01)
                    lag[0] = max(lag[0], time.monotonic() - before - 0.01)

            async def one(i: int) -> None:
                async with client.messages.stream(**request(i)) as stream:
                    await stream.get_final_message()

            ticking = asyncio.create_task(ticker())
            started = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(n)))
            elapsed = time.monotonic() - started
            stop.set()
            await ticking
            await client.close()
            return elapsed, lag[0], r.proxy.connections, counted(await r.ledger())

    elapsed, lag, connections, ledger = asyncio.run(main())
    print(f"{n} streams in {elapsed:.2f} s; loop lag at most {lag * 1000:.0f} ms; "
          f"{connections} connections")
    assert ledger == billed(api.billed(detail=True)) and ledger["responses"] == n
    assert elapsed < 30.0 and connections <= n  # one after another: 150 s


def test_stop_ends_the_streams_in_flight_and_counts_them_lost(
        redis_target: RedisTarget, make_fake: Callable[..., FakeAPI]) -> None:
    api = make_fake(script=lambda req: text_reply("c" * 1600, stream_interval=0.05))

    async def main() -> tuple[float, dict[str, int], dict[str, str]]:
        async with rig(redis_target, api) as r:
            client = r.client(r.proxy.open_task("t1"))
            first = asyncio.Event()

            async def read() -> None:
                async with client.messages.stream(**request(1)) as stream:
                    async for _event in stream:
                        first.set()

            reading = asyncio.create_task(read())
            await first.wait()
            started = time.monotonic()
            await r.proxy.stop()
            took = time.monotonic() - started
            with pytest.raises((anthropic.APIError, httpx2.HTTPError)):
                await reading
            return took, await r.ledger(), await r.inflight()

    took, ledger, inflight = asyncio.run(main())
    assert took < 2.0 and ledger["lost_calls"] == 1 and inflight == {}


def test_the_stream_reader_merges_usage_as_the_sdk_does_whatever_the_chunking() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": HAIKU,
               "content": [{"type": "text", "text": "hello there " * 5}],
               "stop_reason": "end_turn", "stop_sequence": None, "stop_details": None,
               "diagnostics": {"cache_miss_reason": {"type": "tools_changed"}},
               "usage": {"input_tokens": 12, "output_tokens": 31,
                         "cache_creation_input_tokens": 300, "cache_read_input_tokens": 40,
                         "cache_creation": {"ephemeral_5m_input_tokens": 100,
                                            "ephemeral_1h_input_tokens": 200}}}
    events = stream_events(message)
    events[-2][1]["usage"]["input_tokens"] = 15  # a cumulative count may change at the end
    wire = "".join(f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n"
                   for name, data in events).encode()
    for size in (1, 7, len(wire)):
        reader = _UsageOfStream()
        for i in range(0, len(wire), size):
            reader.feed(wire[i:i + size])
        assert reader.done and reader.miss == "tools_changed"
        assert _usage(reader.usage or {}) == Usage(15, 31, 300, 40, 200)
    unfinished = _UsageOfStream()
    unfinished.feed(wire[:wire.index(b"event: message_stop")])
    assert not unfinished.done
