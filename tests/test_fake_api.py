"""The fake Messages API against the real SDK, sync and async."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Callable, Iterator

import anthropic
import pytest

from tests.harness.fake_api import (
    FakeAPI,
    Faults,
    Reply,
    count_input_tokens,
    error_reply,
    spend_limit_reply,
    text_reply,
    tool_use_reply,
)
from tests.harness.procs import checkout_env

USER = [{"role": "user", "content": "hello"}]


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


@pytest.fixture
def api(make_api: Callable[..., FakeAPI]) -> FakeAPI:
    return make_api()


def client(api: FakeAPI, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api.url, api_key="test", max_retries=retries)


def aclient(api: FakeAPI, retries: int = 0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=api.url, api_key="test", max_retries=retries)


def create(c: anthropic.Anthropic, text: str = "hello", model: str = "m",
           **kwargs: Any) -> Any:
    return c.messages.create(model=model, max_tokens=100,
                             messages=[{"role": "user", "content": text}], **kwargs)


def once_then(first: Reply, then: Reply | None = None, times: int = 1
              ) -> Callable[[dict[str, Any]], Reply | None]:
    """A script that answers ``first`` ``times`` times, then ``then`` (None: default)."""
    calls = Counter[str]()

    def script(request: dict[str, Any]) -> Reply | None:
        calls["n"] += 1
        return first if calls["n"] <= times else then

    return script


# --- messages ----------------------------------------------------------------------------

def test_default_text_reply(api: FakeAPI) -> None:
    response = create(client(api), "x" * 100 + " tail", model="claude-test")
    assert response.id.startswith("msg_") and response.type == "message"
    assert response.model == "claude-test" and response.role == "assistant"
    assert response.stop_reason == "end_turn" and response.stop_sequence is None
    assert [b.type for b in response.content] == ["text"]
    assert response.content[0].text == "done: " + "x" * 80
    assert response.usage.input_tokens == 105 // 4 + 1
    assert response.usage.output_tokens == len(response.content[0].text) // 4 + 1
    assert response.usage.cache_creation_input_tokens == 0
    assert response.usage.cache_read_input_tokens == 0


def test_scripted_usage_is_what_the_client_sees(api: FakeAPI) -> None:
    api.script = lambda req: text_reply("hi", input_tokens=7, output_tokens=3,
                                        cache_creation_input_tokens=11,
                                        cache_read_input_tokens=13)
    usage = create(client(api)).usage
    assert (usage.input_tokens, usage.output_tokens) == (7, 3)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (11, 13)


def test_default_input_tokens_count_system_and_all_messages() -> None:
    request = {"system": [{"type": "text", "text": "s" * 8}], "messages": [
        {"role": "user", "content": "u" * 10},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": "r" * 5}]}]}
    assert count_input_tokens(request) == (8 + 10 + len("n{}") + 5) // 4 + 1


def test_tool_use_round_trip(api: FakeAPI) -> None:
    api.script = once_then(tool_use_reply("read_file", {"path": "a.txt"}, text="let me look"),
                           text_reply("read it"))
    c = client(api)
    first = create(c, "read a.txt", tools=[{"name": "read_file", "input_schema": {
        "type": "object", "properties": {"path": {"type": "string"}}}}])
    assert first.stop_reason == "tool_use"
    text, use = first.content
    assert text.type == "text" and text.text == "let me look"
    assert isinstance(use, anthropic.types.ToolUseBlock)
    assert use.id.startswith("toolu_") and use.name == "read_file"
    assert use.input == {"path": "a.txt"}
    second = c.messages.create(model="m", max_tokens=100, messages=[
        {"role": "user", "content": "read a.txt"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                          for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "contents"}]}])
    assert second.content[0].text == "read it"
    assert api.received()[-1]["messages"][-1]["content"][0]["tool_use_id"] == use.id


@pytest.mark.parametrize("messages,problem", [
    ([{"role": "user", "content": ""}], "non-empty content"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "must be non-empty"),
    ([{"role": "user", "content": "a"},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x",
                                         "input": {}}]},
      {"role": "user", "content": "no result"}], "without tool_result"),
    ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9",
                                    "content": "r"}]}], "unexpected tool_use_id"),
])
def test_requests_the_real_api_rejects_get_400(api: FakeAPI, messages: list[Any],
                                               problem: str) -> None:
    with pytest.raises(anthropic.BadRequestError, match=problem):
        client(api, retries=3).messages.create(model="m", max_tokens=10, messages=messages)
    assert api.requests == 1 and api.billed()["responses"] == 0


def test_other_paths_are_404(api: FakeAPI) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client(api).models.list()


def test_base_url_from_the_environment(api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
    assert create(anthropic.Anthropic(api_key="anything")).content[0].text == "done: hello"


def test_api_key_check(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(api_key="right")
    good = anthropic.Anthropic(base_url=api.url, api_key="right", max_retries=0)
    assert create(good).stop_reason == "end_turn"
    with pytest.raises(anthropic.AuthenticationError):
        create(client(api, retries=2))


# --- errors and retries ------------------------------------------------------------------

def test_429_with_retry_after_is_retried_and_not_billed(api: FakeAPI) -> None:
    api.script = once_then(error_reply(429, message="slow down", retry_after=0.05), times=2)
    started = time.monotonic()
    response = create(client(api, retries=2))
    # retry-after-ms: 50 is obeyed (without it the SDK backs off 0.5 s, then 1 s)
    assert time.monotonic() - started < 0.45
    assert response.content[0].text == "done: hello"
    assert api.requests == 3 and api.errors() == {429: 2}
    billed = api.billed()
    assert billed["responses"] == 1 and billed["input_tokens"] == response.usage.input_tokens


def test_retry_after_zero_means_the_sdks_own_backoff(api: FakeAPI) -> None:
    api.script = once_then(error_reply(429, retry_after=0))
    started = time.monotonic()
    create(client(api, retries=1))
    assert time.monotonic() - started >= 0.3  # 0.5 s * jitter in [0.75, 1]


def test_401_is_not_retried(api: FakeAPI) -> None:
    api.script = lambda req: error_reply(401, "authentication_error", "invalid x-api-key")
    with pytest.raises(anthropic.AuthenticationError) as err:
        create(client(api, retries=3))
    assert err.value.status_code == 401 and err.value.api_message == "invalid x-api-key"
    assert err.value.request_id and err.value.request_id.startswith("req_")
    assert api.requests == 1 and api.errors() == {401: 1}


def test_529_raises_overloaded_once_retries_are_spent(api: FakeAPI) -> None:
    api.script = lambda req: error_reply(529)
    with pytest.raises(anthropic.OverloadedError) as err:
        create(client(api, retries=2))
    assert err.value.type == "overloaded_error"
    assert api.requests == 3 and api.errors() == {529: 3}
    assert api.billed()["responses"] == 0


def test_500_raises_internal_server_error(api: FakeAPI) -> None:
    api.script = lambda req: 1 / 0  # a broken script is a 500 too
    with pytest.raises(anthropic.InternalServerError):
        create(client(api))


def test_spend_limit_is_its_own_error_and_not_retried(api: FakeAPI) -> None:
    api.script = lambda req: spend_limit_reply("monthly limit")
    with pytest.raises(anthropic.EnforcedSpendLimitReachedError) as err:
        create(client(api, retries=4))
    assert isinstance(err.value, anthropic.RateLimitError)
    assert anthropic.types.EnforcedSpendLimitReachedError is anthropic.EnforcedSpendLimitReachedError
    assert err.value.error_code == "enforced_spend_limit_reached"
    assert err.value.api_message == "monthly limit"
    assert api.requests == 1  # x-should-retry: false


def test_should_retry_true_retries_a_4xx(api: FakeAPI) -> None:
    api.script = once_then(error_reply(400, should_retry=True, retry_after=0.01))
    assert create(client(api, retries=1)).stop_reason == "end_turn"
    assert api.requests == 2


# --- faults, latency, accounting ---------------------------------------------------------

def test_injected_faults_are_retried_reproducible_and_never_billed(
        make_api: Callable[..., FakeAPI]) -> None:
    outcomes = []
    for _ in range(2):
        api = make_api(faults=Faults(rate=0.4, statuses=(429, 529, 500), seed=7),
                       retry_after=0.001)
        c = client(api, retries=20)
        seen = Counter[str]()
        for i in range(30):
            usage = create(c, f"call {i}", model=f"m{i % 2}").usage
            seen.update(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
        billed = api.billed()
        assert billed["responses"] == 30
        assert (billed["input_tokens"], billed["output_tokens"]) == (
            seen["input_tokens"], seen["output_tokens"])
        errors = api.errors()
        assert sum(errors.values()) == api.requests - 30 > 0
        assert set(errors) <= {429, 529, 500}
        outcomes.append(errors)
    assert outcomes[0] == outcomes[1]


def test_billed_matches_what_clients_saw_per_model(api: FakeAPI) -> None:
    api.script = lambda req: text_reply(
        "x" * len(req["messages"][0]["content"]),
        cache_read_input_tokens=len(req["model"]), cache_creation_input_tokens=1)
    c = client(api)
    seen: dict[str, Counter[str]] = {}
    for i in range(12):
        model = ["alpha", "beta", "gamma-long"][i % 3]
        usage = create(c, "q" * (i * 7 + 1), model=model).usage
        seen.setdefault(model, Counter()).update(usage.model_dump(include={
            "input_tokens", "output_tokens", "cache_creation_input_tokens",
            "cache_read_input_tokens"}), responses=1)
    billed = api.billed()
    assert billed["by_model"] == {m: dict(c) for m, c in seen.items()}
    total = sum(seen.values(), Counter())
    assert {k: v for k, v in billed.items() if k not in ("by_model", "batch")} == dict(total)
    assert api.requests == len(api.received()) == 12


def test_latency_is_applied_concurrently(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(latency=0.5)

    async def main() -> float:
        c = aclient(api)
        started = time.monotonic()
        replies = await asyncio.gather(*(c.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": f"n{i}"}])
            for i in range(20)))
        elapsed = time.monotonic() - started
        assert sorted(r.content[0].text for r in replies) == sorted(
            f"done: n{i}" for i in range(20))
        await c.close()
        return elapsed

    elapsed = asyncio.run(main())
    assert 0.5 <= elapsed < 3.0
    assert api.billed()["responses"] == 20


def test_async_client_errors_and_tools(api: FakeAPI) -> None:
    api.script = once_then(error_reply(529, retry_after=0.01),
                           tool_use_reply("grep", {"pattern": "x"}, id="toolu_fixed"))

    async def main() -> Any:
        async with aclient(api, retries=1) as c:
            return await c.messages.create(model="m", max_tokens=10, messages=USER)

    response = asyncio.run(main())
    assert response.stop_reason == "tool_use" and response.content[0].id == "toolu_fixed"
    assert api.errors() == {529: 1} and api.billed()["responses"] == 1


def test_keep_alive_calls_do_not_stall(api: FakeAPI) -> None:
    c = client(api)
    create(c)  # connect
    started = time.monotonic()
    for _ in range(100):
        create(c)
    # Without TCP_NODELAY each call on a kept-alive connection waits ~40 ms.
    assert time.monotonic() - started < 3.0


def test_stop_closes_connections(make_api: Callable[..., FakeAPI]) -> None:
    api = make_api(latency=30)

    async def main() -> BaseException | None:
        c = aclient(api)
        call = asyncio.create_task(c.messages.create(model="m", max_tokens=10, messages=USER))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.to_thread(api.stop)
        assert time.monotonic() - started < 2
        try:
            await asyncio.wait_for(call, 5)
        except anthropic.APIConnectionError as exc:
            return exc
        return None

    assert isinstance(asyncio.run(main()), anthropic.APIConnectionError)


def test_runs_as_its_own_process() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.harness.fake_api", "--port", "0",
                             "--latency", "0.05"], stdout=subprocess.PIPE, text=True,
                            env=checkout_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ")
        c = anthropic.Anthropic(base_url=url, api_key="test", max_retries=0)
        usage = create(c).usage
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    billed = json.loads(out.strip().removeprefix("billed "))
    assert billed["responses"] == 1 and billed["input_tokens"] == usage.input_tokens
