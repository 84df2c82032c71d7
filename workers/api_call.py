"""One metered call of the agent loop: registered in the ledger before it is sent,
settled with the usage of the final message, withdrawn if it never left or the API
answered with an error (not billed), counted as lost if its fate is unknown.

It streams where the SDK requires it: the SDK refuses a non-streaming request whose
``max_tokens`` could take over ten minutes (it says so before sending anything), and from
then on this process streams every call of its model. A stream cut off mid-way is a call
whose fate is unknown: lost, with its upper bound.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import anthropic

from workers.ledger import Ledger
from workers.prefix_gate import PrefixGate
from workers.pricing import Usage

STREAMING_REQUIRED = "Streaming is required"  # the SDK's words when it refuses


class CallFailed(Exception):
    """A call that failed in a way the task reports as its error."""


class CutOff(CallFailed):
    """A streamed answer broke off mid-way (its call is counted lost)."""


@dataclass
class Answer:
    """A response and what the ledger made of it."""

    message: Any  # anthropic.types.Message
    usage: Usage
    nano: int | None  # its cost (None: the model has no price, or no ledger)


class Caller:
    def __init__(self, client: anthropic.AsyncAnthropic, ledger: Ledger | None,
                 max_tokens: int, gate: PrefixGate | None = None) -> None:
        self.client = client
        self.ledger = ledger
        self.max_tokens = max_tokens
        self.gate = gate
        self.streaming = False  # set for good once the SDK asks for it

    durable = False  # a batch pool's caller keeps each task's progress (batch_caller)

    async def resume(self, task_id: str) -> dict[str, Any] | None:
        return None

    async def call(self, task_id: str, request: dict[str, Any], first: bool,
                   run: str = "", progress: dict[str, Any] | None = None) -> Answer:
        """Send ``request``. The first call of a task over a shared prefix that may be
        cold goes through the prefix gate (one writes, the others then read)."""
        ticket = await self.gate.enter(request) if first and self.gate else None
        try:
            answer = await self._metered(task_id, request, run)
        except BaseException:
            if ticket is not None:
                await asyncio.shield(ticket.leave(None))
            raise
        if ticket is not None:
            await ticket.leave(answer.usage)
        return answer

    async def _metered(self, task_id: str, request: dict[str, Any], run: str) -> Answer:
        ledger = self.ledger
        call = None
        if ledger is not None:
            size = len(json.dumps(request, default=str))
            call = await ledger.begin(task_id, size, self.max_tokens, run)
        sent = [False]  # the request has left (a stream is open, or create was called)
        try:
            message = await self._send(request, sent)
        except anthropic.APIStatusError:
            if ledger is not None and call is not None:
                await ledger.withdraw(call)  # an error answer: not billed
            raise
        except (anthropic.APIError, asyncio.CancelledError):
            # cut off, timed out, or an answer we could not read: it may have been billed
            if ledger is not None and call is not None:
                await asyncio.shield(ledger.lose(call))
            raise
        except Exception as exc:
            if not sent[0]:  # it never left (e.g. text that cannot be encoded): not a call
                if ledger is not None and call is not None:
                    await ledger.withdraw(call)
                raise
            # a stream broken mid-way: the SDK lets httpx's own error through, unretried
            if ledger is not None and call is not None:
                await asyncio.shield(ledger.lose(call))
            raise CutOff(f"the answer was cut off mid-stream: {exc}") from exc
        used = Usage.of(message.usage)
        nano = None
        if ledger is not None and call is not None:
            nano = await ledger.settle(call, used, miss_reason(message))
        return Answer(message, used, nano)

    async def _send(self, request: dict[str, Any], sent: list[bool]) -> Any:
        if not self.streaming:
            try:
                return await self.client.messages.create(**request)
            except ValueError as exc:  # raised before anything was sent
                if STREAMING_REQUIRED not in str(exc):
                    raise
                self.streaming = True
        async with self.client.messages.stream(**request) as stream:
            sent[0] = True
            return await stream.get_final_message()


def miss_reason(message: Any) -> str:
    """Why the API says this request missed the cache (its cache_miss_reason type), or ''."""
    diagnostics = getattr(message, "diagnostics", None)
    reason = getattr(diagnostics, "cache_miss_reason", None) if diagnostics else None
    return str(getattr(reason, "type", "") or "") if reason is not None else ""
