"""The agent loop's requests and turns, with the real SDK against the fake API (which
bills prompt caching by the API's rules): each turn reads the last one's prefix and
writes only what is new; every stop reason means what it says."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic

from tests.harness.fake_api import (
    FakeAPI,
    pause_turn_reply,
    refusal_reply,
    text_reply,
    tool_use_reply,
    truncated_reply,
)
from workers.agent import MAX_CONTINUATIONS, Agent, Outcome
from workers.payload import Task
from workers.pricing import Usage
from workers.tools import Toolbox, ToolSettings

BIG = "x" * 3000  # a tool result of about 750 tokens


class Book:
    """A ledger that keeps each call's usage and the cache miss reasons it was told."""

    def __init__(self) -> None:
        self.usages: list[Usage] = []
        self.misses: list[str] = []

    async def begin(self, task_id: str, size: int, max_tokens: int, run: str = "") -> str:
        return "call"

    async def settle(self, call: Any, usage: Usage, miss_reason: str = "") -> int:
        self.usages.append(usage)
        self.misses.append(miss_reason)
        return 0

    async def withdraw(self, call: Any) -> None:
        pass

    async def lose(self, call: Any) -> None:
        pass


def run_task(api: FakeAPI, work: Path, book: Book, model: str = "test-model",
             description: str = "do it", max_turns: int = 20) -> Outcome:
    (work / "big.txt").write_text(BIG)

    async def go() -> Outcome:
        client = anthropic.AsyncAnthropic(base_url=api.url, api_key="test", max_retries=0)
        agent = Agent(client, model, max_turns, 1000, ledger=book)  # type: ignore[arg-type]
        box = Toolbox(work, ToolSettings(write=False, edit=False, list=False, grep=False))
        try:
            return await agent.run(Task(description), box, None, "t1")
        finally:
            box.jail.close()

    return asyncio.run(go())


def tool_turns(turns: int) -> Any:
    """Read big.txt ``turns`` times, then answer."""
    def script(request: dict[str, Any]) -> Any:
        done = sum(1 for m in request["messages"] if m["role"] == "assistant")
        if done < turns:
            return tool_use_reply("read_file", {"path": "big.txt"})
        return text_reply("all read")
    return script


def test_each_turn_reads_the_last_turn_and_writes_only_what_is_new(tmp_path: Path) -> None:
    with FakeAPI(script=tool_turns(8)) as api:
        book = Book()
        outcome = run_task(api, tmp_path, book)
        sent = api.received()
    assert outcome.status == "done" and outcome.calls == 9
    # every request: the shared prefix marked (one breakpoint on the system prompt) and
    # the conversation marked at the top level; at most 4 in all
    for request in sent:
        assert request["cache_control"] == {"type": "ephemeral"}
        assert request["system"][-1]["cache_control"] == {"type": "ephemeral"}
    totals = [u.input + u.cache_creation + u.cache_read for u in book.usages]
    minimum = api.cache_min("test-model")
    cached_from = next(i for i, total in enumerate(totals) if total >= minimum)
    for i in range(cached_from + 1, len(totals)):
        used = book.usages[i]
        assert used.cache_read == totals[i - 1], i  # the whole last turn, from the cache
        assert used.cache_creation == totals[i] - totals[i - 1], i  # only what is new
        assert used.input == 0, i
    billed = api.billed()
    assert billed["cache_read_input_tokens"] == sum(u.cache_read for u in book.usages)
    assert billed["cache_read_input_tokens"] > 0.6 * sum(totals[cached_from + 1:])
    # from the second turn on, the API is asked why a cache missed
    assert "diagnostics" not in sent[0]
    assert [r["diagnostics"]["previous_message_id"] is not None for r in sent[1:]] == \
        [True] * (len(sent) - 1)


def test_an_answer_cut_at_max_tokens_is_continued_and_joined(tmp_path: Path) -> None:
    def script(request: dict[str, Any]) -> Any:
        last = request["messages"][-1]
        if last["role"] == "user":
            return truncated_reply("The answer begins")
        return text_reply(" and ends here.")  # the prefill was 'The answer begins'

    with FakeAPI(script=script) as api:
        book = Book()
        outcome = run_task(api, tmp_path, book)
        sent = api.received()
    assert outcome.status == "done" and outcome.result == "The answer begins and ends here."
    assert not outcome.truncated and outcome.stop_reason == "end_turn"
    assert sent[1]["messages"][-1] == {"role": "assistant", "content": [
        {"type": "text", "text": "The answer begins"}]}


def test_an_answer_still_cut_after_the_continuations_is_marked_truncated(tmp_path: Path) -> None:
    with FakeAPI(script=lambda request: truncated_reply("more ")) as api:
        book = Book()
        outcome = run_task(api, tmp_path, book)
        sent = api.received()
    assert outcome.status == "done" and outcome.truncated
    assert outcome.stop_reason == "max_tokens" and outcome.calls == MAX_CONTINUATIONS + 1
    assert outcome.result == "moremoremore"  # each piece continues the last, trimmed
    # one assistant message holds the answer so far: the API takes one at a time
    assert [m["role"] for m in sent[-1]["messages"]] == ["user", "assistant"]
    assert sent[-1]["messages"][-1]["content"][0]["text"] == "moremore"
    # the last request changed the last message (it did not only append): the API says
    # so, and the miss is counted
    assert book.misses[-1] == "messages_changed"


def test_a_refusal_fails_the_task_with_the_models_words(tmp_path: Path) -> None:
    with FakeAPI(script=lambda r: refusal_reply("I cannot help with that.")) as api:
        outcome = run_task(api, tmp_path, Book())
    assert outcome.status == "failed" and outcome.stop_reason == "refusal"
    assert outcome.error == "the model refused: I cannot help with that."


def test_a_paused_turn_is_sent_back_and_goes_on(tmp_path: Path) -> None:
    def script(request: dict[str, Any]) -> Any:
        assistant = [m for m in request["messages"] if m["role"] == "assistant"]
        if not assistant:
            return pause_turn_reply("searching the web")
        return text_reply("found it")

    with FakeAPI(script=script) as api:
        outcome = run_task(api, tmp_path, Book())
        sent = api.received()
    assert outcome.status == "done" and outcome.result == "found it"
    assert sent[1]["messages"][-1]["role"] == "assistant"
    assert sent[1]["messages"][-1]["content"][0]["text"] == "searching the web"
