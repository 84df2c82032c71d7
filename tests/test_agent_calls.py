"""The agent's calls as the ledger sees them, with the real SDK against the fake API:
a call that never left is withdrawn, one whose fate is unknown is counted lost."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from tests.harness.fake_api import FakeAPI, text_reply
from workers.agent import Agent
from workers.payload import Task
from workers.tools import Toolbox, ToolSettings


class Book:
    """A ledger that only remembers what the agent told it."""

    def __init__(self) -> None:
        self.said: list[str] = []

    async def begin(self, task_id: str, size: int, max_tokens: int, run: str = "") -> str:
        self.said.append("begin")
        return "call"

    async def settle(self, call: Any, usage: Any, miss_reason: str = "") -> int:
        self.said.append("settle")
        return 0

    async def withdraw(self, call: Any) -> None:
        self.said.append("withdraw")

    async def lose(self, call: Any) -> None:
        self.said.append("lose")


def run(api_url: str, description: str, book: Book, timeout: float = 10.0) -> Any:
    async def go() -> Any:
        client = anthropic.AsyncAnthropic(base_url=api_url, api_key="test", max_retries=0,
                                          timeout=timeout)
        agent = Agent(client, "test-model", 3, 100, ledger=book)  # type: ignore[arg-type]
        return await agent.run(Task(description), Toolbox(".", ToolSettings(read=False,
                               write=False, edit=False, list=False, grep=False)), None, "t1")

    return asyncio.run(go())


def test_a_request_that_cannot_be_sent_is_withdrawn_not_lost() -> None:
    with FakeAPI(script=lambda req: text_reply("hi")) as api:
        book = Book()
        with pytest.raises(UnicodeEncodeError):
            run(api.url, "text with a lone surrogate \udcff", book)
        assert book.said == ["begin", "withdraw"]
        assert api.billed()["responses"] == 0
        book = Book()
        assert run(api.url, "fine text", book).status == "done"
        assert book.said == ["begin", "settle"]


def test_a_call_cut_off_by_its_timeout_is_counted_lost() -> None:
    with FakeAPI(script=lambda req: text_reply("late", delay=5)) as api:
        book = Book()
        outcome = run(api.url, "slow", book, timeout=0.5)
        assert outcome.status == "failed" and "cannot reach the API" in outcome.error
        assert book.said == ["begin", "lose"]
