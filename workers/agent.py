"""The Claude agent loop of one task: call, run the tools asked for, call again, until
the model ends its turn or ``max_turns``. A plain manual loop rather than the SDK's tool
runner, so that every turn's usage passes through our hands to be recorded.

Each turn pays for what is new only: the shared prefix (tools, the system prompt, the
shared context) carries a breakpoint with the pool's cache TTL, and the request's
top-level ``cache_control`` marks the conversation's last block, so each turn reads the
last turn's prefix from the cache and writes what was added (two breakpoints of the
API's four). Nothing in the prefix varies between workers or tasks.

Every stop reason means what it says: ``tool_use`` runs the tools; ``pause_turn`` sends
the turn back to go on; ``max_tokens`` continues the answer (the partial one is sent
back as the start of the model's own turn) up to ``MAX_CONTINUATIONS`` times, then the
finding says it is truncated; ``refusal`` fails the task with the model's words.

Retries of 429/529/5xx are the SDK's own (``max_retries``, honouring retry-after);
what reaches here has already been retried, or must not be (401, 400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast

import anthropic

from workers.api_call import Caller, CallFailed
from workers.ledger import Ledger
from workers.payload import Task
from workers.prefix_gate import PrefixGate
from workers.pricing import Usage
from workers.prompt import system_blocks
from workers.tools import HandBack, Toolbox, ToolError

MAX_CONTINUATIONS = 2  # of an answer cut off at max_tokens
CONVERSATION_CACHE = {"type": "ephemeral"}  # 5 minutes: the turns come seconds apart

FINDING_ID = re.compile(r"\bfinding_[0-9a-f]{8,32}\b")

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
    status: str  # done | failed | handed_back (the worker says it needs deeper reasoning)
    result: str
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    calls: int = 0
    files_changed: list[str] = field(default_factory=list)
    citations: list[str] = field(default_factory=list)
    nano: int | None = 0  # what the calls cost, as the ledger priced them (None: unknown)
    stop_reason: str | None = None  # the last call's
    truncated: bool = False  # the answer was cut off at max_tokens, and left so
    tool_calls: int = 0  # tools the model ran: evidence of work done (0: it looked at nothing)
    partial: str | None = None  # a lead's run that ended at this limit
    extra: dict[str, Any] = field(default_factory=dict)  # more for the finding (a run's)


class Agent:
    def __init__(self, client: anthropic.AsyncAnthropic | None, model: str, max_turns: int,
                 max_tokens: int, missing_key: str | None = None, ledger: Ledger | None = None,
                 max_cost_nano: int | None = None, cache_ttl: str = "5m",
                 gate: PrefixGate | None = None, caller: Any = None) -> None:
        self.client = client
        self.model = model
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.missing_key = missing_key
        self.max_cost_nano = max_cost_nano
        self.cache_ttl = cache_ttl
        # the batch pool's caller (workers/batch_caller.py), or the ordinary one
        self.caller = caller or (Caller(client, ledger, max_tokens, gate) if client else None)

    async def run(self, task: Task, toolbox: Toolbox, context: str | None,
                  task_id: str = "", run_context: str | None = None) -> Outcome:
        outcome = Outcome("failed", "")
        if self.caller is None:
            outcome.error = self.missing_key or "no API client"
            return outcome
        with api_errors(outcome):
            await self._turns(task, toolbox, context, task_id, outcome, run_context)
        outcome.files_changed = sorted(toolbox.files_changed)
        outcome.citations = sorted(set(FINDING_ID.findall(task.description + outcome.result))
                                   | toolbox.findings_read)
        return outcome

    async def _turns(self, task: Task, toolbox: Toolbox, context: str | None, task_id: str,
                     outcome: Outcome, run_context: str | None = None) -> None:
        assert self.caller is not None
        messages: list[dict[str, Any]] = [{"role": "user", "content": _user_text(task)}]
        tools = toolbox.definitions()
        base = self.base_request(tools, context, run_context)
        run = str(task.extra.get("run") or "")
        cap, cap_name = _cap(self.max_cost_nano, task.extra.get("max_cost_nano"))
        previous: str | None = None  # the last message's id
        pieces: list[str] = []  # an answer cut off at max_tokens, being continued
        continued, start = 0, 1
        saved = await self.caller.resume(task_id) if self.caller.durable else None
        if saved:  # its worker died or stopped while a request was out: go on from there
            messages, start = saved["messages"], int(saved["turn"])
            previous, pieces, continued = saved["previous"], saved["pieces"], saved["continued"]
            restore(outcome, toolbox, saved)
        for turn in range(start, self.max_turns + 1):
            request = {**base, "messages": messages}
            if previous is not None:  # the API then says why a cache missed
                request["diagnostics"] = {"previous_message_id": previous}
            progress = None if not self.caller.durable else {
                "turn": turn, "previous": previous, "pieces": pieces, "continued": continued,
                **progress_of(outcome, toolbox)}
            answer = await self.caller.call(task_id, request, first=turn == 1, run=run,
                                            progress=progress)
            message, previous = answer.message, answer.message.id
            outcome.usage.add(answer.usage)
            outcome.calls += 1
            outcome.nano = (None if answer.nano is None or outcome.nano is None
                            else outcome.nano + answer.nano)
            outcome.turns, outcome.stop_reason = turn, message.stop_reason
            text = text_of(message.content)
            content = as_params(message.content)
            if message.stop_reason == "tool_use":
                over = over_budget(outcome, cap, cap_name)
                if over:
                    outcome.result, outcome.error = text, over
                    return
                assistant_turn(messages, content)
                try:
                    results = await run_tools(message.content, toolbox, outcome)
                except HandBack as back:
                    outcome.status, outcome.result = "handed_back", back.reason
                    outcome.error = f"handed back: {back.reason}"
                    return
                messages.append({"role": "user", "content": results})
                pieces, continued = [], 0
            elif message.stop_reason == "pause_turn":  # the API paused a long turn: go on
                assistant_turn(messages, content)
            elif message.stop_reason == "max_tokens" and continued < MAX_CONTINUATIONS \
                    and _ends_in_text(content):
                continued += 1
                pieces.append(_raw_text(message.content).rstrip())
                # the answer so far, as the start of the model's own turn (one message)
                messages[len(messages) - (1 if continued > 1 else 0):] = [
                    {"role": "assistant", "content": [{"type": "text", "text": "".join(pieces)}]}]
            elif message.stop_reason == "refusal":
                outcome.result = text
                outcome.error = f"the model refused: {text[:300] or '(no words)'}"
                return
            else:  # end_turn, stop_sequence, or max_tokens for good
                outcome.status = "done"
                outcome.result = ("".join(pieces) + _raw_text(message.content)).strip() \
                    if pieces else text
                outcome.truncated = message.stop_reason == "max_tokens"
                return
        outcome.result = text
        outcome.error = f"stopped after max_turns ({self.max_turns}) without finishing"

    def base_request(self, tools: list[dict[str, Any]], context: str | None,
                     run_context: str | None = None) -> dict[str, Any]:
        """What every turn of a task sends besides its messages: the shared prefix with
        its breakpoint, and the top-level marker that caches the conversation."""
        return {"model": self.model, "max_tokens": self.max_tokens,
                "system": system_blocks(context, self.cache_ttl, run_context=run_context),
                "cache_control": CONVERSATION_CACHE, **({"tools": tools} if tools else {})}


class api_errors:
    """Turns what the API and the stream can raise into the outcome's error (the
    account's spend limit goes on up: the whole swarm must stop)."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def __enter__(self) -> api_errors:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        outcome = self.outcome
        if isinstance(exc, SPEND_LIMIT_ERRORS):
            # the spend-limit errors are RateLimitError (a 429), an APIStatusError
            raise SpendLimitReached(_api_message(cast(anthropic.APIStatusError, exc))) from None
        if isinstance(exc, anthropic.AuthenticationError):
            outcome.error = f"API authentication failed (401): {_api_message(exc)}"
        elif isinstance(exc, anthropic.PermissionDeniedError):
            outcome.error = f"API permission denied (403): {_api_message(exc)}"
        elif isinstance(exc, anthropic.BadRequestError):
            outcome.error = f"API rejected the request (400): {_api_message(exc)}"
        elif isinstance(exc, anthropic.APIStatusError):
            outcome.error = f"API error {exc.status_code} after retries: {_api_message(exc)}"
        elif isinstance(exc, anthropic.APIConnectionError):
            outcome.error = f"cannot reach the API: {exc}"
        elif isinstance(exc, CallFailed):
            outcome.error = str(exc)
        else:
            return False
        outcome.status = "failed"
        return True


def progress_of(outcome: Outcome, toolbox: Toolbox) -> dict[str, Any]:
    """What a task has done so far, for a successor to go on from (batch pools)."""
    return {"usage": vars(outcome.usage), "calls": outcome.calls, "nano": outcome.nano,
            "tool_calls": outcome.tool_calls, "files": sorted(toolbox.files_changed)}


def restore(outcome: Outcome, toolbox: Toolbox, saved: dict[str, Any]) -> None:
    outcome.usage = Usage(**saved["usage"])
    outcome.calls, outcome.nano = int(saved["calls"]), saved["nano"]
    outcome.tool_calls = int(saved["tool_calls"])
    outcome.turns = int(saved["turn"]) - 1
    toolbox.files_changed.update(saved["files"])


def over_budget(outcome: Outcome, cap: int | None, name: str) -> str | None:
    """Why the task must stop for its own cost limit, or None."""
    if cap is None or outcome.nano is None or outcome.nano < cap:
        return None
    return f"task cost limit reached: ${outcome.nano / 1e9:.6f} of {name} ${cap / 1e9:g}"


def _cap(pool_cap: int | None, run_cap: Any) -> tuple[int | None, str]:
    """The task's cost limit and its name: its pool's, or what its run reserved for it
    if that is lower."""
    if isinstance(run_cap, int) and not isinstance(run_cap, bool) and run_cap > 0 and (
            pool_cap is None or run_cap < pool_cap):
        return run_cap, "what its run reserved for it,"
    return pool_cap, "max_cost_usd"


def _user_text(task: Task) -> str:
    text = task.description
    if task.files:
        text += "\n\nFiles:\n" + "\n".join(f"- {f}" for f in task.files)
    earlier = task.extra.get("handed_back")
    if isinstance(earlier, list) and earlier:
        text += "\n\nHanded back before by a worker of another pool, who said:\n" + "\n".join(
            f"- ({e.get('pool')}) {e.get('reason')}" for e in earlier if isinstance(e, dict))
    return text


def as_params(content: list[Any]) -> list[dict[str, Any]]:
    return [block.model_dump(exclude_none=True) for block in content]


def text_of(content: list[Any]) -> str:
    return "\n".join(b.text for b in content if getattr(b, "type", "") == "text").strip()


def assistant_turn(messages: list[dict[str, Any]], content: list[dict[str, Any]]) -> None:
    """Append the model's turn; a turn that continues one already sent back (a paused
    turn, an answer cut off at max_tokens) is joined to it: the API takes one
    assistant message at a time."""
    if messages and messages[-1]["role"] == "assistant":
        messages[-1] = {"role": "assistant", "content": [*messages[-1]["content"], *content]}
    else:
        messages.append({"role": "assistant", "content": content})


def _raw_text(content: list[Any]) -> str:
    """The text blocks as they are (a continued answer is joined without gaps)."""
    return "".join(b.text for b in content if getattr(b, "type", "") == "text")


def _ends_in_text(content: list[dict[str, Any]]) -> bool:
    return bool(content) and content[-1].get("type") == "text" and \
        bool(str(content[-1].get("text", "")).strip())




async def run_tools(content: list[Any], toolbox: Toolbox,
                    outcome: Outcome | None = None) -> list[dict[str, Any]]:
    """Run the tool calls of one answer, in order; their results for the next turn. A
    ``hand_back`` call ends the task (``HandBack`` goes up)."""
    results = []
    for block in content:
        if getattr(block, "type", "") != "tool_use":
            continue
        if outcome is not None:
            outcome.tool_calls += 1
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
