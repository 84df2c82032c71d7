"""The Claude agent loop of one task: call, run the tools asked for, call again, until
``end_turn`` or ``max_turns``. A plain manual loop rather than the SDK's beta tool
runner, so that every turn's usage passes through our hands to be recorded.

Retries of 429/529/5xx are the SDK's own (``max_retries``, honouring retry-after);
what reaches here has already been retried, or must not be (401, 400).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, cast

import anthropic

from workers.ledger import Ledger
from workers.payload import Task
from workers.pricing import Usage
from workers.prompt import system_blocks
from workers.tools import Toolbox, ToolError

_FINDING_ID = re.compile(r"\bfinding_[0-9a-f]{8,32}\b")

# The API's spend-limit errors are 429s the SDK raises as subclasses of RateLimitError.
def _spend_limit_errors() -> tuple[type[BaseException], ...]:
    import anthropic.types

    names = ("EnforcedSpendLimitReachedError", "ContractSpendLimitReachedError",
             "LinkedOrganizationSpendLimitReachedError")
    found = (getattr(anthropic, n, None) or getattr(anthropic.types, n, None) for n in names)
    return tuple(cls for cls in found if isinstance(cls, type))


SPEND_LIMIT_ERRORS = _spend_limit_errors()


class SpendLimitReached(Exception):
    """The account cannot spend more: the whole swarm must stop taking work."""


@dataclass
class Outcome:
    status: str  # done | failed
    result: str
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    calls: int = 0
    files_changed: list[str] = field(default_factory=list)
    citations: list[str] = field(default_factory=list)
    nano: int | None = 0  # what the calls cost, as the ledger priced them (None: unknown)


class Agent:
    def __init__(self, client: anthropic.AsyncAnthropic | None, model: str, max_turns: int,
                 max_tokens: int, missing_key: str | None = None, ledger: Ledger | None = None,
                 max_cost_nano: int | None = None) -> None:
        self.client = client
        self.model = model
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.missing_key = missing_key
        self.ledger = ledger
        self.max_cost_nano = max_cost_nano

    async def _call(self, task_id: str, outcome: Outcome, **request: Any) -> Any:
        """One API call: registered in the ledger before it is sent, settled when the
        response arrives, withdrawn if the API answered with an error (not billed),
        counted as lost if we never learn its fate."""
        assert self.client is not None
        ledger = self.ledger
        call = None
        if ledger is not None:
            size = len(json.dumps(request, default=str))
            call = await ledger.begin(task_id, size, self.max_tokens)
        try:
            response = await self.client.messages.create(**request)
        except anthropic.APIStatusError:
            if ledger is not None and call is not None:
                await ledger.withdraw(call)
            raise
        except (anthropic.APIError, asyncio.CancelledError):
            # cut off, timed out, or an answer we could not read: it may have been billed
            if ledger is not None and call is not None:
                await asyncio.shield(ledger.lose(call))
            raise
        except Exception:
            # failed before it was sent (e.g. text that cannot be encoded): not a call
            if ledger is not None and call is not None:
                await ledger.withdraw(call)
            raise
        used = Usage.of(response.usage)
        outcome.usage.add(used)
        outcome.calls += 1
        if ledger is not None and call is not None:
            nano = await ledger.settle(call, used)
            outcome.nano = None if nano is None or outcome.nano is None else outcome.nano + nano
        return response

    async def run(self, task: Task, toolbox: Toolbox, context: str | None,
                  task_id: str = "") -> Outcome:
        outcome = Outcome("failed", "")
        if self.client is None:
            outcome.error = self.missing_key or "no API client"
            return outcome
        messages: list[dict[str, Any]] = [{"role": "user", "content": _user_text(task)}]
        tools = toolbox.definitions()
        try:
            for turn in range(1, self.max_turns + 1):
                response = await self._call(
                    task_id, outcome, model=self.model, max_tokens=self.max_tokens,
                    system=system_blocks(context), messages=messages,
                    **({"tools": tools} if tools else {}),
                )
                outcome.turns = turn
                text = _text_of(response.content)
                if response.stop_reason != "tool_use":
                    outcome.status, outcome.result = "done", text
                    break
                over = self._over_budget(outcome)
                if over:
                    outcome.result, outcome.error = text, over
                    break
                messages.append({"role": "assistant", "content": _as_params(response.content)})
                messages.append({"role": "user",
                                 "content": await _run_tools(response.content, toolbox)})
            else:
                outcome.result = text
                outcome.error = f"stopped after max_turns ({self.max_turns}) without finishing"
        except SPEND_LIMIT_ERRORS as exc:
            # the spend-limit errors are RateLimitError (a 429), an APIStatusError
            raise SpendLimitReached(_api_message(cast(anthropic.APIStatusError, exc))) from None
        except anthropic.AuthenticationError as exc:
            outcome.error = f"API authentication failed (401): {_api_message(exc)}"
        except anthropic.PermissionDeniedError as exc:
            outcome.error = f"API permission denied (403): {_api_message(exc)}"
        except anthropic.BadRequestError as exc:
            outcome.error = f"API rejected the request (400): {_api_message(exc)}"
        except anthropic.APIStatusError as exc:
            outcome.error = f"API error {exc.status_code} after retries: {_api_message(exc)}"
        except anthropic.APIConnectionError as exc:
            outcome.error = f"cannot reach the API: {exc}"
        outcome.files_changed = sorted(toolbox.files_changed)
        outcome.citations = sorted(set(_FINDING_ID.findall(task.description + outcome.result)))
        return outcome


    def _over_budget(self, outcome: Outcome) -> str | None:
        """Why the task must stop for its own cost limit, or None."""
        if self.max_cost_nano is None or outcome.nano is None:
            return None
        if outcome.nano < self.max_cost_nano:
            return None
        return (f"task cost limit reached: ${outcome.nano / 1e9:.6f} of max_cost_usd "
                f"${self.max_cost_nano / 1e9:g}")


def _user_text(task: Task) -> str:
    if not task.files:
        return task.description
    return task.description + "\n\nFiles:\n" + "\n".join(f"- {f}" for f in task.files)


def _as_params(content: list[Any]) -> list[dict[str, Any]]:
    return [block.model_dump(exclude_none=True) for block in content]


def _text_of(content: list[Any]) -> str:
    return "\n".join(b.text for b in content if getattr(b, "type", "") == "text").strip()


async def _run_tools(content: list[Any], toolbox: Toolbox) -> list[dict[str, Any]]:
    results = []
    for block in content:
        if getattr(block, "type", "") != "tool_use":
            continue
        try:
            text, is_error = await toolbox.run(block.name, dict(block.input or {})), False
        except ToolError as exc:
            text, is_error = str(exc), True
        results.append({"type": "tool_result", "tool_use_id": block.id, "content": text,
                        **({"is_error": True} if is_error else {})})
    return results


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]
