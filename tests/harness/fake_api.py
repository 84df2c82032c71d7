"""A fake Anthropic Messages API for tests and benchmarks.

In a test, in-process on a background thread::

    with FakeAPI(latency=0.1, script=lambda req: text_reply("hi")) as api:
        client = anthropic.Anthropic(base_url=api.url, api_key="test")
        ...
        api.billed()  # what it charged, per model and in total

As its own process (benchmarks)::

    python -m tests.harness.fake_api --port 0 --latency 1.0   # from the checkout
    # prints "listening on http://127.0.0.1:PORT", serves until SIGTERM/SIGINT,
    # then prints "billed {json}"

It is raw HTTP/1.1 on asyncio streams (keep-alive, Content-Length or chunked bodies,
TCP_NODELAY), so a thousand concurrent slow calls cost a thousand sleeping coroutines.
Only ``POST /v1/messages`` and the Message Batches endpoints (below) exist. Requests are
checked the way the real API checks the things a client gets wrong (empty content, a
tool_use without its tool_result right after, a tool_result without its tool_use, more
than 4 cache breakpoints, a 1h breakpoint after a 5m one, a thinking budget not below
``max_tokens``, thinking enabled while the tool loop's first assistant message does not
start with a thinking block): those get a 400. Fields it does not model are accepted
and ignored, as the real API accepts them: Claude Code's ``metadata``,
``context_management``, ``thinking.display``, a tool's ``defer_loading`` (counted like
any tool here) and the ``?beta=true`` query on its ``POST /v1/messages?beta=true``; the
headers (``anthropic-version``, ``anthropic-beta``...) are not checked but ``api_key``'s.

A reply is billed (counted in ``billed()``) when it is produced, whether or not the
client is still there to read it; errors, injected faults included, are never billed.

Tokens. The request is a sequence of blocks in prefix order: each tool definition (its
name + description + the JSON of its input_schema), then the system prompt (a string is
one block, a list is its blocks), then every message's content blocks (a string content
is one block; text is its text, tool_use its name + the JSON of its input, tool_result
the text of its content; blocks without text, e.g. images, are 0 characters). The
prefix up to and including block k counts ``1 + (characters of blocks 0..k) // 4``
tokens, so a block's tokens are the difference between its prefix and the one before
(a deterministic function of the prefix), and the request's input is
``count_input_tokens(request)`` = ``1 + all characters // 4`` (the 1 is the request's own
preamble). Output tokens are ``characters of the reply's content // 4 + 1``.

Prompt caching, per model, by the API's documented rules:

* Breakpoints: any tool definition, system block or message content block carrying
  ``cache_control``, and the request's top-level ``cache_control``, which marks the last
  block of the request (the last block of the last message). At most 4 (else a 400 "A
  maximum of 4 blocks with cache_control may be provided. Found N."); TTL "5m" (the
  default) or "1h", and a 1h breakpoint may not come after a 5m one (400).
* An entry is the hash of the prefix up to and including a block: the model, then the
  canonical JSON of each block with its section and position, without the
  ``cache_control`` markers (so marking a block does not change its prefix). A string
  content and a list with one text block of the same text are the same prefix.
* Reads: for each breakpoint the cache is looked up at that block and at the 20 block
  boundaries before it; the longest live entry found (over all breakpoints) is read:
  ``cache_read_input_tokens`` is the tokens of that prefix.
* Writes: each breakpoint whose prefix has at least the model's minimum cacheable
  tokens (``FakeAPI(cache_min_tokens=..., default_cache_min=...)``; 4096 for
  claude-opus-4-5*/claude-haiku-4-5*, 1024 for claude-sonnet-4-5*, 2048 for the
  claude-3 haikus, else 1024) is written if it has no live entry; below the minimum
  nothing is cached and nothing says so. ``cache_creation_input_tokens`` is the tokens
  after the read prefix up to the last breakpoint written; each span between written
  breakpoints counts for the TTL of the breakpoint it ends at
  (``usage.cache_creation.ephemeral_5m_input_tokens``/``ephemeral_1h_input_tokens``).
  ``input_tokens`` is the rest (what follows the last written or read prefix). A
  breakpoint at or before the read prefix, missing from the cache, is written free.
* Lookups happen when the request arrives (before the latency); writes become readable
  as the last bytes of the response that wrote them are sent (or as its stream is cut,
  or its sending fails): two concurrent requests with the same new prefix both write
  and both pay for it. A hit refreshes the entry read, and the entries of the request's
  breakpoints inside the read prefix, for their own TTL; an entry expires TTL seconds
  after its last write or refresh, by ``FakeAPI(clock=...)`` (default
  ``time.monotonic``), so tests can expire entries without sleeping.
* A Reply giving any input-side count (``input_tokens``, ``cache_creation_input_tokens``,
  ``cache_read_input_tokens``, ``cache_creation_1h_input_tokens``) is billed exactly that
  (``input_tokens`` defaulting to the whole count, the others to 0): nothing is looked
  up, written or refreshed for it.

Simplifications: the prefix hash covers the model, tools, system and messages only
(``tool_choice``, ``thinking``, images' sizes... do not invalidate anything); the
top-level ``cache_control`` landing on a block that has its own is one breakpoint, the
block's; every model shares one clock and a TTL is exactly 300 s or 3600 s; there is no
cache hierarchy between entries other than the lookback.

Diagnostics: a request carrying ``diagnostics: {"previous_message_id": ID}`` gets
``diagnostics`` in its response: null when ID is null or when the previous request's
model, tools and system are the same and its messages are a prefix of this one's;
otherwise ``{"cache_miss_reason": {"type": ..., "cache_missed_input_tokens": N}}`` with
the first of model_changed, tools_changed, system_changed, messages_changed that
applies, N being the tokens the previous request could cache (its last breakpoint at or
above the minimum) beyond the prefix the two requests share; an unknown ID (the last
``keep_requests`` message ids are remembered) gives ``previous_message_not_found``.

Streaming (``"stream": true``): server-sent events on a chunked response, as the API
sends them: ``message_start`` (the message with empty content, the input-side usage,
``output_tokens`` 1), then per content block ``content_block_start`` (text "", tool_use
input {}, thinking "") / ``content_block_delta`` (``text_delta``, ``input_json_delta``
(first an empty one), ``thinking_delta`` + ``signature_delta``; ``STREAM_CHUNK``
characters each) / ``content_block_stop``, a ``ping`` after the first block starts,
``message_delta`` (stop_reason, stop_sequence, stop_details, and the cumulative usage)
and ``message_stop``. The latency is the time to the first byte; ``Reply.stream_interval``
spaces the events. ``Reply.cut_after=N`` closes the connection after N events (0: right
after the headers) without ending the chunked body, as a dropped connection does; such a
reply is billed in full, input and output (the fake generated all of it; the client
only saw the start), and its cache writes are committed when it is cut.

Message Batches (``/v1/messages/batches``, in tests/harness/fake_batches.py): create,
retrieve, list, cancel, delete and results (JSONL at the batch's ``results_url``, which
points back at the fake), in the shapes the SDK's ``client.messages.batches`` parses. A
batch's N entries are answered one after another in request order, entry i falling due
``batch_delay * (i + 1) / N`` seconds after creation by ``clock``, and answered when a
batch endpoint is next called (so a test moves its clock, or polls a small real delay);
the batch ends (``processing_status`` "ended", ``results_url`` set, ``request_counts``
filled in) with its last entry. An entry is answered like an ordinary request: checked
(a 400 becomes an ``errored`` result with an invalid_request_error; so does
``stream: true``), then the same ``script``; an error Reply gives ``errored`` (its type
and message), ``expired_reply()`` gives ``expired``. A success is a Message with
``usage.service_tier`` "batch", its prompt caching computed as above, its lookups and
writes made at once (so a later entry of the same batch reads what an earlier one
wrote), and billed at batch rates: in ``billed()["batch"]``, not in the standard totals;
errored, expired and canceled entries are never billed. ``cancel`` makes the batch
"canceling" and ends it ``batch_cancel_delay`` seconds later, entries not due by then
being ``canceled``; entries due more than 24 h after creation are ``expired``.
``FakeAPI(batch_faults=BatchFaults(errored=p, expired=q, seed=s))`` makes entries errored
(an api_error, the script not called) or expired, reproducibly. The results come in an
order of their own (shuffled per batch, as the real API does not promise the requests'
order) unless ``batch_shuffle=False``. ``faults`` and ``latency`` do not apply to the
batch endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import itertools
import json
import math
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Iterator, Union
from urllib.parse import parse_qsl

from tests.harness.fake_batches import PREFIX as BATCHES_PREFIX
from tests.harness.fake_batches import BatchError, Batches, BatchFaults

Request = dict[str, Any]
Script = Callable[[Request], Union["Reply", None, Awaitable[Union["Reply", None]]]]

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens")
TTL_FIELDS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
DETAIL_FIELDS = TTL_FIELDS + ("streamed", "cut")
TTLS = {"5m": 300.0, "1h": 3600.0}
MAX_BREAKPOINTS = 4
LOOKBACK = 20  # block boundaries checked before each breakpoint
CACHE_MIN_TOKENS = {"claude-opus-4-5": 4096, "claude-haiku-4-5": 4096,
                    "claude-sonnet-4-5": 1024, "claude-3-5-haiku": 2048,
                    "claude-3-haiku": 2048}
DEFAULT_CACHE_MIN = 1024
STREAM_CHUNK = 16  # characters per text/json/thinking delta
BATCH_EXPIRED = "batch_expired"  # the error_type of expired_reply()


@dataclass
class Reply:
    """What the script answers to one request: a message, or an error if status >= 400.

    ``output_tokens`` None means computed from the content. The input side
    (``input_tokens``, ``cache_creation_input_tokens``, ``cache_read_input_tokens``,
    ``cache_creation_1h_input_tokens``) all None means computed from the request and the
    cache; any of them set means billed exactly as given (the rest 0, ``input_tokens``
    the whole count), without touching the cache.
    ``stop_sequence``/``stop_details`` go into the message as given.
    ``cut_after`` (streams only): close the connection after that many events.
    ``stream_interval``: seconds between a stream's events.
    ``retry_after`` None means the server's default (for 429 and 529 only).
    ``should_retry`` sets the ``x-should-retry`` header the SDK obeys.
    """

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_1h_input_tokens: int | None = None
    stop_sequence: str | None = None
    stop_details: dict[str, Any] | None = None
    cut_after: int | None = None
    stream_interval: float = 0.0
    delay: float = 0.0
    status: int = 200
    error_type: str | None = None
    message: str = ""
    retry_after: float | None = None
    error_code: str | None = None
    should_retry: bool | None = None

    @property
    def is_error(self) -> bool:
        return self.status >= 400

    @property
    def explicit_input(self) -> bool:
        """An input-side count was given: bill it, compute no caching."""
        return any(v is not None for v in (
            self.input_tokens, self.cache_creation_input_tokens,
            self.cache_read_input_tokens, self.cache_creation_1h_input_tokens))


def text_reply(text: str, input_tokens: int | None = None, output_tokens: int | None = None,
               **extra: Any) -> Reply:
    """A text answer ending the turn (``extra``: other Reply fields)."""
    return Reply(content=[{"type": "text", "text": text}], input_tokens=input_tokens,
                 output_tokens=output_tokens, **extra)


def tool_use_reply(name: str, input: dict[str, Any], id: str | None = None,
                   text: str | None = None, **extra: Any) -> Reply:
    """A request to run one tool (stop_reason tool_use), optionally after some text."""
    block = {"type": "tool_use", "id": id or _new_id("toolu_"), "name": name, "input": input}
    content = ([{"type": "text", "text": text}] if text else []) + [block]
    return Reply(content=content, stop_reason="tool_use", **extra)


def truncated_reply(text: str, **extra: Any) -> Reply:
    """An answer cut off at ``max_tokens`` (stop_reason max_tokens)."""
    return Reply(content=[{"type": "text", "text": text}], stop_reason="max_tokens", **extra)


def stop_sequence_reply(text: str, sequence: str, **extra: Any) -> Reply:
    """An answer that stopped at one of the request's ``stop_sequences``."""
    return Reply(content=[{"type": "text", "text": text}], stop_reason="stop_sequence",
                 stop_sequence=sequence, **extra)


def refusal_reply(text: str = "", category: str | None = None,
                  explanation: str | None = None, **extra: Any) -> Reply:
    """A refusal (stop_reason refusal, ``stop_details`` of type refusal), after the text
    produced before the classifiers intervened, if any."""
    content = [{"type": "text", "text": text}] if text else []
    return Reply(content=content, stop_reason="refusal", stop_details={
        "type": "refusal", "category": category, "explanation": explanation}, **extra)


def pause_turn_reply(text: str = "", content: list[dict[str, Any]] | None = None,
                     **extra: Any) -> Reply:
    """A long turn paused (stop_reason pause_turn): the client sends it back to go on."""
    blocks = content if content is not None else (
        [{"type": "text", "text": text}] if text else [])
    return Reply(content=blocks, stop_reason="pause_turn", **extra)


def error_reply(status: int, error_type: str | None = None, message: str | None = None, *,
                retry_after: float | None = None, error_code: str | None = None,
                should_retry: bool | None = None, delay: float = 0.0) -> Reply:
    """An error response; ``error_code`` goes to ``error.details.error_code``."""
    return Reply(status=status, error_type=error_type or ERROR_TYPES.get(status, "api_error"),
                 message=message or f"fake {status}", retry_after=retry_after,
                 error_code=error_code, should_retry=should_retry, delay=delay)


def expired_reply() -> Reply:
    """In a batch, the entry ``expired``; to an ordinary request, a 500."""
    return error_reply(500, BATCH_EXPIRED, "the batch entry expired")


def spend_limit_reply(message: str = "You have reached your specified API usage limits.",
                      should_retry: bool = False) -> Reply:
    """The 429 the SDK raises as ``anthropic.EnforcedSpendLimitReachedError``."""
    return error_reply(429, "rate_limit_error", message, should_retry=should_retry,
                       error_code="enforced_spend_limit_reached")


@dataclass
class Faults:
    """Inject an error instead of the script's reply with probability ``rate``."""

    rate: float = 0.0
    statuses: tuple[int, ...] = (429, 529, 500)
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def pick(self) -> int | None:
        if self.rate <= 0 or not self.statuses or self.rng.random() >= self.rate:
            return None
        return self.rng.choice(self.statuses)


# --- the request as blocks: tokens, prefix hashes, breakpoints ----------------------------

def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        if value.get("type") == "tool_use":
            yield value.get("name", "") + json.dumps(value.get("input", {}), sort_keys=True)
        for key in ("text", "content"):
            if key in value:
                yield from _texts(value[key])


def _tool_text(tool: dict[str, Any]) -> str:
    schema = tool.get("input_schema")
    if schema is None:  # a server tool: its definition
        schema = {k: v for k, v in tool.items() if k not in ("name", "description",
                                                               "cache_control")}
    return (str(tool.get("name", "")) + str(tool.get("description", ""))
            + json.dumps(schema, sort_keys=True))


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def _digest(value: Any) -> str:
    return hashlib.sha256(_canonical(value)).hexdigest()


def _unmarked(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control"}


def _system_blocks(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"type": "text", "text": system}] if system else []
    return [b for b in system if isinstance(b, dict)] if isinstance(system, list) else []


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


@dataclass
class Layout:
    """A request as the cache sees it: per block (in prefix order) its path (as the API
    names it in errors), the hash of the prefix up to and including it, and that
    prefix's tokens; the breakpoints as (block index, ttl, path)."""

    model: str
    paths: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    breakpoints: list[tuple[int, str, str]] = field(default_factory=list)
    marks: int = 0  # cache_control markers, the top-level one included
    tools_hash: str = ""
    system_hash: str = ""
    message_hashes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.tokens[-1] if self.tokens else 1

    def upto(self, k: int) -> int:
        """Tokens of the prefix up to and including block k (0 for k < 0)."""
        return self.tokens[k] if k >= 0 else 0


def request_layout(request: Request) -> Layout:
    """The request's blocks, prefix hashes, prefix tokens and breakpoints."""
    model = str(request.get("model", ""))
    layout = Layout(model)
    items: list[tuple[str, list[Any], str, Any]] = []  # path, key, text, cache_control
    raw_tools = request.get("tools")
    tools = [t for t in raw_tools if isinstance(t, dict)] if isinstance(raw_tools, list) else []
    for i, tool in enumerate(tools):
        items.append((f"tools.{i}", ["tools", i, _unmarked(tool)], _tool_text(tool),
                      tool.get("cache_control")))
    system = _system_blocks(request.get("system"))
    for i, block in enumerate(system):
        items.append((f"system.{i}", ["system", i, _unmarked(block)],
                      "".join(_texts(block)), block.get("cache_control")))
    messages = request.get("messages")
    for i, msg in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(msg, dict):
            continue
        blocks = _content_blocks(msg.get("content"))
        layout.message_hashes.append(_digest([msg.get("role"), [_unmarked(b) for b in blocks]]))
        for j, block in enumerate(blocks):
            items.append((f"messages.{i}.content.{j}",
                          ["messages", i, msg.get("role"), j, _unmarked(block)],
                          "".join(_texts(block)), block.get("cache_control")))
    layout.tools_hash = _digest([_unmarked(t) for t in tools])
    layout.system_hash = _digest([_unmarked(b) for b in system])
    chain, chars = hashlib.sha256(_canonical(["model", model])).digest(), 0
    for k, (path, key, text, marker) in enumerate(items):
        chain = hashlib.sha256(chain + _canonical(key)).digest()
        chars += len(text)
        layout.paths.append(path)
        layout.hashes.append(chain.hex())
        layout.tokens.append(1 + chars // 4)
        if marker is not None:
            layout.marks += 1
            layout.breakpoints.append((k, _ttl_name(marker), path))
    top = request.get("cache_control")
    if top is not None and items:
        if not layout.breakpoints or layout.breakpoints[-1][0] != len(items) - 1:
            layout.breakpoints.append((len(items) - 1, _ttl_name(top), "cache_control"))
            layout.marks += 1
    return layout


def _ttl_name(marker: Any) -> str:
    ttl = marker.get("ttl") if isinstance(marker, dict) else None
    return ttl if isinstance(ttl, str) else "5m"


def count_input_tokens(request: Request) -> int:
    """The request's input tokens: 1 + the characters of all tools, system and message
    blocks // 4 (see the module's docstring for what a block's characters are)."""
    return request_layout(request).total


def count_output_tokens(content: list[dict[str, Any]]) -> int:
    return sum(len(t) for t in _texts(content)) // 4 + 1


def last_user_text(request: Request) -> str:
    users = [m for m in request.get("messages", []) if m.get("role") == "user"]
    return " ".join(_texts(users[-1].get("content"))) if users else ""


def default_script(request: Request) -> Reply:
    return text_reply(f"done: {last_user_text(request)[:80]}")


def _new_id(prefix: str) -> str:
    return prefix + "%024x" % random.getrandbits(96)


# --- request checks (a few of the real API's) --------------------------------------------

def check_request(req: Any) -> str | None:
    """Why the real API would answer 400, or None."""
    if not isinstance(req, dict):
        return "body must be a JSON object"
    if not isinstance(req.get("model"), str) or not req["model"]:
        return "model: field required"
    if not isinstance(req.get("max_tokens"), int) or req["max_tokens"] < 1:
        return "max_tokens: field required"
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, msg in enumerate(messages):
        if problem := _check_message(i, msg, messages):
            return problem
    if "tools" in req and req["tools"] is not None and not (
            isinstance(req["tools"], list) and all(isinstance(t, dict) for t in req["tools"])):
        return "tools: Input should be a valid list of tools"
    if "system" in req and req["system"] is not None and not isinstance(
            req["system"], (str, list)):
        return "system: Input should be a valid string or list of blocks"
    if problem := _check_thinking(req):
        return problem
    return _check_cache_control(req)


def _check_thinking(req: Request) -> str | None:
    """Extended thinking, as the API checks it. Claude Code sends ``thinking: {"type":
    "enabled", "budget_tokens": max_tokens - 1, "display": ...}`` on every call, and
    passes the thinking blocks it got back; the API then insists that the assistant
    message opening the trailing tool loop (the one after the last user message that is
    not a tool_result) starts with a thinking block: a client dropping them gets a 400.
    Other fields of ``thinking`` (``display``...) are not checked."""
    thinking = req.get("thinking")
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        return "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'"
    if kind != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= req["max_tokens"]:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    messages = req["messages"]

    def tool_results(i: int) -> bool:
        return messages[i].get("role") == "user" and any(
            b.get("type") == "tool_result" for b in _blocks(messages[i]))

    if len(messages) < 2 or not tool_results(len(messages) - 1):
        return None
    first = len(messages) - 2  # the tool_use before it (checked by _check_message)
    while first >= 2 and tool_results(first - 1):
        first -= 2
    blocks = _blocks(messages[first])
    found = blocks[0].get("type") if blocks else "text"
    if found in ("thinking", "redacted_thinking"):
        return None
    return (f"messages.{first}.content.0.type: Expected `thinking` or `redacted_thinking`, "
            f"but found `{found}`. When `thinking` is enabled, a final `assistant` message "
            "must start with a thinking block (preceeding the lastmost set of `tool_use` and "
            "`tool_result` blocks). We recommend you include thinking blocks from previous "
            "turns. To avoid this requirement, disable `thinking`.")


def _check_cache_control(req: Request) -> str | None:
    markers: list[tuple[str, Any]] = [("cache_control", req.get("cache_control"))]
    markers += [(f"tools.{i}", t.get("cache_control"))
                for i, t in enumerate(req.get("tools") or [])]
    markers += [(f"system.{i}", b.get("cache_control"))
                for i, b in enumerate(_system_blocks(req.get("system")))]
    markers += [(f"messages.{i}.content.{j}", b.get("cache_control"))
                for i, m in enumerate(req["messages"])
                for j, b in enumerate(_content_blocks(m.get("content")))]
    if all(marker is None for _path, marker in markers):
        return None
    for path, marker in markers:
        if marker is None:
            continue
        where = "cache_control" if path == "cache_control" else f"{path}.cache_control"
        if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
            return f"{where}.type: Input should be 'ephemeral'"
        if marker.get("ttl") not in (None, "5m", "1h"):
            return f"{where}.ttl: Input should be '5m' or '1h'"
    layout = request_layout(req)
    if layout.marks > MAX_BREAKPOINTS:
        return (f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {layout.marks}.")
    seen_5m = False
    for _k, ttl, path in layout.breakpoints:
        if ttl == "1h" and seen_5m:
            where = "cache_control" if path == "cache_control" else f"{path}.cache_control"
            return (f"{where}.ttl: a ttl='1h' cache_control block must not come after a "
                    "ttl='5m' cache_control block. Note that blocks are processed in the "
                    "following order: `tools`, `system`, `messages`.")
        seen_5m = seen_5m or ttl == "5m"
    return None


def _blocks(msg: Any) -> list[dict[str, Any]]:
    content = msg.get("content") if isinstance(msg, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _check_message(i: int, msg: Any, messages: list[Any]) -> str | None:
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        return f"messages.{i}: role must be user or assistant"
    content, last = msg.get("content"), i == len(messages) - 1
    if not content and not (last and msg["role"] == "assistant"):
        return f"messages.{i}: all messages must have non-empty content"
    if any(b.get("type") == "text" and not b.get("text") for b in _blocks(msg)):
        return f"messages.{i}: text content blocks must be non-empty"
    uses = {b.get("id") for b in _blocks(msg) if b.get("type") == "tool_use"}
    if uses and not last:
        answered = {b.get("tool_use_id") for b in _blocks(messages[i + 1])
                    if b.get("type") == "tool_result"}
        if missing := uses - answered:
            return (f"messages.{i + 1}: tool_use ids were found without tool_result blocks "
                    f"immediately after: {', '.join(sorted(map(str, missing)))}")
    results = {b.get("tool_use_id") for b in _blocks(msg) if b.get("type") == "tool_result"}
    if results:
        before = _blocks(messages[i - 1]) if i else []
        offered = {b.get("id") for b in before if b.get("type") == "tool_use"}
        if stray := results - offered:
            return (f"messages.{i}: unexpected tool_use_id found in tool_result blocks: "
                    f"{', '.join(sorted(map(str, stray)))}")
    return None


# --- the prompt cache --------------------------------------------------------------------

@dataclass
class _Entry:
    expires: float
    ttl: float


@dataclass
class _Served:
    """What diagnostics need of a served message's request."""

    model: str
    tools_hash: str
    system_hash: str
    message_hashes: list[str]
    hashes: list[str]
    cacheable: int  # tokens up to its last breakpoint at or above the minimum; 0 if none


@dataclass
class _InputSide:
    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0
    writes: list[tuple[str, float]] = field(default_factory=list)  # (hash, ttl s)

    def usage(self) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens,
                "cache_creation_input_tokens": self.cache_creation_input_tokens,
                "cache_read_input_tokens": self.cache_read_input_tokens,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": (self.cache_creation_input_tokens
                                                  - self.ephemeral_1h_input_tokens),
                    "ephemeral_1h_input_tokens": self.ephemeral_1h_input_tokens}}


# --- HTTP/1.1 ----------------------------------------------------------------------------

class _BadHTTP(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader
                        ) -> tuple[str, str, str, dict[str, str], bytes] | None:
    """(method, target, version, headers, body); None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise _BadHTTP("headers too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise _BadHTTP("bad request line") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return method, target, version, headers, await _read_chunked(reader)
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadHTTP("bad content-length") from None
    return method, target, version, headers, await reader.readexactly(length)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def _reason(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _http_head(status: int, headers: dict[str, str], keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}",
             f"connection: {'keep-alive' if keep else 'close'}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _http_response(status: int, headers: dict[str, str], body: bytes, keep: bool) -> bytes:
    return _http_head(status, {"content-length": str(len(body)), **headers}, keep) + body


@dataclass
class _Response:
    """What to send: a body, or server-sent events. ``sent`` (given "was cut") runs once,
    right before the last bytes go to the transport (before the close of a cut stream;
    or when sending failed): no client can see the response before it ran, and the
    loop serves no other request in between."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    events: list[tuple[str, dict[str, Any]]] | None = None
    cut_after: int | None = None
    interval: float = 0.0
    sent: Callable[[bool], None] | None = None

    def finish(self, cut: bool = False) -> None:
        sent, self.sent = self.sent, None
        if sent is not None:
            sent(cut)


# --- the server --------------------------------------------------------------------------

class FakeAPI:
    """The fake Messages API. ``script``, ``latency``, ``jitter``, ``faults``,
    ``retry_after``, ``cache``, ``cache_min_tokens``, ``default_cache_min`` and ``clock``
    may be changed while it runs; each request reads them.

    ``retry_after`` (seconds, fractional ok) is sent as ``retry-after`` (rounded up) and
    ``retry-after-ms`` on 429/529 replies without their own, and on every injected
    fault; None sends no header. ``api_key``, if set, must come as
    ``Authorization: Bearer`` (what the SDK sends) or ``x-api-key``, else 401.

    ``cache`` (default on) computes prompt caching; off, every request bills its whole
    input as ``input_tokens``. ``cache_min_tokens`` maps model-name prefixes to the
    minimum cacheable prefix (merged over ``CACHE_MIN_TOKENS``; the longest matching
    prefix wins), ``default_cache_min`` is for other models. ``clock`` (seconds, default
    ``time.monotonic``) times the cache entries."""

    def __init__(self, latency: float = 0.0, script: Script | None = None, *,
                 jitter: float = 0.0, faults: Faults | None = None,
                 retry_after: float | None = 0.05, api_key: str | None = None,
                 keep_requests: int = 10_000, seed: int = 0, cache: bool = True,
                 cache_min_tokens: dict[str, int] | None = None,
                 default_cache_min: int = DEFAULT_CACHE_MIN,
                 clock: Callable[[], float] = time.monotonic, batch_delay: float = 1.0,
                 batch_cancel_delay: float = 0.0,
                 batch_faults: BatchFaults | None = None, batch_shuffle: bool = True) -> None:
        self.latency, self.jitter = latency, jitter
        self.script: Script = script or default_script
        self.faults = faults
        self.retry_after = retry_after  # default for 429/529 replies; None: no header
        self.api_key = api_key  # if set, other keys get a 401
        self.cache = cache
        self.cache_min_tokens = {**CACHE_MIN_TOKENS, **(cache_min_tokens or {})}
        self.default_cache_min = default_cache_min
        self.clock = clock
        self.batch_delay, self.batch_cancel_delay = batch_delay, batch_cancel_delay
        self.batch_faults = batch_faults
        self.batch_shuffle = batch_shuffle  # results in an order of their own, per batch
        self.batches = Batches(self)
        self.url, self.port = "", 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._received: deque[Request] = deque(maxlen=keep_requests or None)
        self._keep = keep_requests
        self._requests = 0
        self._errors: Counter[int] = Counter()
        self._billed: dict[str, Counter[str]] = {}
        self._batch_billed: dict[str, Counter[str]] = {}
        self._entries: dict[str, dict[str, _Entry]] = {}  # model -> prefix hash -> entry
        self._served: OrderedDict[str, _Served] = OrderedDict()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._conns: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    # --- life --------------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeAPI:
        """Serve on a background thread; returns once it is listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(self.serve(port, ready.set))
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=main, name="fake-api", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure or not self.url:
            raise RuntimeError(f"fake API did not start: {failure}")
        return self

    def stop(self) -> None:
        """Close every connection and the listener; waits for the thread. Idempotent."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> FakeAPI:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def serve(self, port: int = 0, on_ready: Callable[[], None] | None = None) -> None:
        """Serve on 127.0.0.1:``port`` until ``request_stop()`` (or stop());
        ``on_ready`` is called once it listens."""
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", port,
                                            backlog=4096, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            if on_ready is not None:
                on_ready()
            await self._stopping.wait()
        finally:
            server.close()
            for task, writer in list(self._conns.items()):
                task.cancel()
                writer.close()
            await asyncio.gather(*self._conns, return_exceptions=True)

    def request_stop(self) -> None:
        """From the server's own loop (signal handlers)."""
        if self._stopping is not None:
            self._stopping.set()

    # --- accounting (any thread) -------------------------------------------------------

    def billed(self, detail: bool = False) -> dict[str, Any]:
        """``{"responses": n, <usage fields>: sums, "by_model": {model: same}}``; with
        ``detail``, also ``ephemeral_5m_input_tokens``/``ephemeral_1h_input_tokens`` (the
        TTL split of ``cache_creation_input_tokens``), ``streamed`` (responses that were
        streams) and ``cut`` (streams cut off). ``batch`` is the same (without streams)
        for the answers of batch entries, billed at batch rates, and counted nowhere else."""
        with self._lock:
            standard = {m: dict(c) for m, c in self._billed.items()}
            batch = {m: dict(c) for m, c in self._batch_billed.items()}
        keys = ("responses",) + USAGE_FIELDS + (DETAIL_FIELDS if detail else ())
        batch_keys = ("responses",) + USAGE_FIELDS + (TTL_FIELDS if detail else ())
        return {**_sums(standard, keys), "batch": _sums(batch, batch_keys)}

    def received(self) -> list[Request]:
        """The parsed bodies of the requests to /v1/messages (the last ``keep_requests``)."""
        with self._lock:
            return list(self._received)

    @property
    def requests(self) -> int:
        """How many requests to /v1/messages arrived (errors and faults included)."""
        with self._lock:
            return self._requests

    def errors(self) -> dict[int, int]:
        """Error responses returned, per status (injected faults included)."""
        with self._lock:
            return dict(self._errors)

    def cached(self, model: str | None = None) -> list[dict[str, Any]]:
        """The live cache entries (``model``, ``ttl`` s, ``expires_in`` s by ``clock``)."""
        now = self.clock()
        with self._lock:
            return [{"model": m, "ttl": e.ttl, "expires_in": e.expires - now}
                    for m, entries in self._entries.items() if model in (None, m)
                    for e in entries.values() if e.expires > now]

    def clear_cache(self) -> None:
        with self._lock:
            self._entries.clear()

    def cache_min(self, model: str) -> int:
        """The minimum cacheable prefix of ``model``, in tokens."""
        best = max((p for p in self.cache_min_tokens if model.startswith(p)), key=len,
                   default=None)
        return self.default_cache_min if best is None else self.cache_min_tokens[best]

    # --- the cache (the server's thread) -----------------------------------------------

    def _input_side(self, reply: Reply, layout: Layout) -> _InputSide:
        """What the request's input is billed, reading (and refreshing) the cache now;
        the writes are returned, to be made once the response is sent."""
        if reply.explicit_input:
            return _InputSide(_or(reply.input_tokens, layout.total),
                              reply.cache_creation_input_tokens or 0,
                              reply.cache_read_input_tokens or 0,
                              reply.cache_creation_1h_input_tokens or 0)
        if not self.cache or not layout.breakpoints:
            return _InputSide(layout.total)
        now, minimum = self.clock(), self.cache_min(layout.model)
        with self._lock:
            entries = self._entries.setdefault(layout.model, {})

            def live(k: int) -> _Entry | None:
                entry = entries.get(layout.hashes[k])
                return entry if entry is not None and entry.expires > now else None

            read = -1
            for k, _ttl, _path in layout.breakpoints:
                for j in range(k, max(-1, k - LOOKBACK - 1), -1):
                    if j <= read:
                        break
                    if live(j) is not None:
                        read = j
                        break
            if read >= 0:
                for k in {read} | {k for k, _t, _p in layout.breakpoints if k <= read}:
                    if (entry := live(k)) is not None:
                        entry.expires = now + entry.ttl
            writes = [(k, ttl) for k, ttl, _p in layout.breakpoints
                      if layout.upto(k) >= minimum and live(k) is None]
        side = _InputSide(0, writes=[(layout.hashes[k], TTLS[ttl]) for k, ttl in writes])
        side.cache_read_input_tokens = done = layout.upto(read)
        for k, ttl in writes:
            if k > read:
                span = layout.upto(k) - done
                side.cache_creation_input_tokens += span
                side.ephemeral_1h_input_tokens += span if ttl == "1h" else 0
                done = layout.upto(k)
        side.input_tokens = layout.total - done
        return side

    def _commit(self, model: str, writes: list[tuple[str, float]]) -> None:
        if not writes:
            return
        now = self.clock()
        with self._lock:
            entries = self._entries.setdefault(model, {})
            for digest, ttl in writes:
                entries[digest] = _Entry(now + ttl, ttl)
            if len(entries) > 100_000:
                for digest in [d for d, e in entries.items() if e.expires <= now]:
                    del entries[digest]

    def _diagnostics(self, req: Request, layout: Layout) -> dict[str, Any] | None:
        previous = req["diagnostics"].get("previous_message_id")
        if previous is None:
            return None
        with self._lock:
            before = self._served.get(previous)
        if before is None:
            return {"cache_miss_reason": {"type": "previous_message_not_found"}}
        if before.model != layout.model:
            kind = "model_changed"
        elif before.tools_hash != layout.tools_hash:
            kind = "tools_changed"
        elif before.system_hash != layout.system_hash:
            kind = "system_changed"
        elif before.message_hashes != layout.message_hashes[:len(before.message_hashes)]:
            kind = "messages_changed"
        else:
            return None
        common = 0
        for mine, theirs in zip(layout.hashes, before.hashes):
            if mine != theirs:
                break
            common += 1
        missed = max(0, before.cacheable - layout.upto(common - 1))
        return {"cache_miss_reason": {"type": kind, "cache_missed_input_tokens": missed}}

    def _remember(self, message_id: str, layout: Layout) -> None:
        minimum = self.cache_min(layout.model)
        cacheable = max((layout.upto(k) for k, _t, _p in layout.breakpoints
                         if layout.upto(k) >= minimum), default=0)
        with self._lock:
            self._served[message_id] = _Served(layout.model, layout.tools_hash,
                                               layout.system_hash, layout.message_hashes,
                                               layout.hashes, cacheable)
            while self._keep and len(self._served) > self._keep:
                self._served.popitem(last=False)

    # --- per connection ----------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, _BadHTTP, ValueError):
            pass
        except asyncio.CancelledError:  # stop(): end quietly (3.11 logs a cancelled
            pass                        # connection task as an error)
        finally:
            self._conns.pop(task, None)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        """One request and its response; False when the connection should end."""
        request = await _read_request(reader)
        if request is None:
            return False
        method, target, version, headers, body = request
        response = await self._respond(method, target, headers, body)
        conn = headers.get("connection", "").lower()
        keep = conn == "keep-alive" if version == "HTTP/1.0" else conn != "close"
        try:
            if response.events is None:
                data = _http_response(response.status, response.headers, response.body, keep)
                response.finish()
                writer.write(data)
                await writer.drain()
                return keep
            return await self._stream(writer, response, keep) and keep
        finally:
            response.finish()  # sending failed

    async def _stream(self, writer: asyncio.StreamWriter, response: _Response,
                      keep: bool) -> bool:
        """Send the events as a chunked body; False if cut off (the connection closed)."""
        headers = {**response.headers, "content-type": "text/event-stream",
                   "cache-control": "no-cache", "transfer-encoding": "chunked"}
        writer.write(_http_head(response.status, headers, keep))
        await writer.drain()
        events = response.events or []
        for n, (name, data) in enumerate(events):
            if response.cut_after is not None and n >= response.cut_after:
                response.finish(cut=True)
                writer.close()
                return False
            if n and response.interval > 0:
                await asyncio.sleep(response.interval)
            event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            chunk = b"%x\r\n%s\r\n" % (len(event), event)
            if n == len(events) - 1:
                response.finish()
                chunk += b"0\r\n\r\n"
            writer.write(chunk)
            await writer.drain()
        return True

    async def _respond(self, method: str, target: str, headers: dict[str, str],
                       body: bytes) -> _Response:
        path, _, query = target.partition("?")
        if path == BATCHES_PREFIX or path.startswith(BATCHES_PREFIX + "/"):
            return await self._batch_endpoint(method, path, query, headers, body)
        if method != "POST" or path != "/v1/messages":
            return self._error(error_reply(404, message=f"{method} {target}: not found"))
        try:
            req = json.loads(body)
        except ValueError:
            return self._error(error_reply(400, message="body is not valid JSON"))
        with self._lock:
            self._requests += 1
            self._received.append(req)
        reply = await self._reply_for(req, headers)
        if reply.is_error:
            await asyncio.sleep(self._delay(reply))
            return self._error(reply)
        layout = request_layout(req)
        side = self._input_side(reply, layout)
        diagnostics = (self._diagnostics(req, layout)
                       if isinstance(req.get("diagnostics"), dict) else ...)
        await asyncio.sleep(self._delay(reply))
        return self._message(req, reply, layout, side, diagnostics)

    async def _reply_for(self, req: Request, headers: dict[str, str]) -> Reply:
        if self.api_key is not None and self.api_key not in _keys_sent(headers):
            return error_reply(401, message="invalid x-api-key")
        if problem := check_request(req):
            return error_reply(400, message=problem)
        if self.faults is not None and (status := self.faults.pick()) is not None:
            return error_reply(status, message=f"injected {status}",
                               retry_after=self.retry_after)
        return await self._scripted(req)

    async def _scripted(self, req: Request) -> Reply:
        try:
            reply = self.script(req)
            if inspect.isawaitable(reply):
                reply = await reply
        except Exception:  # noqa: BLE001 - a broken script is a 500, shown on stderr
            traceback.print_exc()
            return error_reply(500, message="the fake API's script raised")
        return reply if reply is not None else default_script(req)

    # --- batches -----------------------------------------------------------------------

    async def _batch_endpoint(self, method: str, path: str, query: str,
                              headers: dict[str, str], body: bytes) -> _Response:
        if self.api_key is not None and self.api_key not in _keys_sent(headers):
            return self._error(error_reply(401, message="invalid x-api-key"))
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError:
            return self._error(error_reply(400, message="body is not valid JSON"))
        try:
            answer, jsonl = await self.batches.handle(method, path, dict(parse_qsl(query)),
                                                      parsed)
        except BatchError as exc:
            return self._error(error_reply(exc.status, message=exc.message))
        if isinstance(answer, bytes):
            return _Response(200, {**self._headers(), "content-type": "application/x-jsonl"},
                             answer)
        return _Response(200, self._headers(), json.dumps(answer).encode())

    async def _batch_result(self, params: Request) -> dict[str, Any]:
        """One batch entry's result (succeeded, errored or expired), billed at batch
        rates, its cache reads and writes made now."""
        problem = check_request(params)
        if problem is None and params.get("stream"):
            problem = "stream: streaming is not supported in a batch"
        reply = error_reply(400, message=problem) if problem else await self._scripted(params)
        if reply.error_type == BATCH_EXPIRED:
            return {"type": "expired"}
        if reply.is_error:
            return {"type": "errored", "error": self._error_body(reply, self._request_id())}
        layout = request_layout(params)
        side = self._input_side(reply, layout)
        diagnostics = (self._diagnostics(params, layout)
                       if isinstance(params.get("diagnostics"), dict) else ...)
        body = self._message_body(params, reply, layout, side, diagnostics)
        body["usage"]["service_tier"] = "batch"
        self._bill(params["model"], body["usage"], batch=True)
        self._commit(layout.model, side.writes)
        return {"type": "succeeded", "message": body}

    def _delay(self, reply: Reply) -> float:
        jitter = self._rng.uniform(0, self.jitter) if self.jitter > 0 else 0.0
        return max(0.0, self.latency + jitter + reply.delay)

    def _request_id(self) -> str:
        return f"req_fake_{next(self._ids):012d}"

    def _message(self, req: Request, reply: Reply, layout: Layout, side: _InputSide,
                 diagnostics: Any) -> _Response:
        body = self._message_body(req, reply, layout, side, diagnostics)
        streamed = bool(req.get("stream"))
        self._bill(req["model"], body["usage"], streamed=streamed)

        def sent(cut: bool) -> None:
            self._commit(layout.model, side.writes)
            if cut:
                with self._lock:
                    self._billed[req["model"]]["cut"] += 1

        if not streamed:
            return _Response(200, self._headers(), json.dumps(body).encode(), sent=sent)
        return _Response(200, self._headers(), events=stream_events(body), sent=sent,
                         cut_after=reply.cut_after, interval=reply.stream_interval)

    def _bill(self, model: str, usage: dict[str, Any], *, batch: bool = False,
              streamed: bool = False) -> None:
        with self._lock:
            counts = (self._batch_billed if batch else self._billed).setdefault(
                model, Counter())
            counts["responses"] += 1
            counts.update({k: usage[k] for k in USAGE_FIELDS})
            counts.update(usage["cache_creation"])
            counts["streamed"] += streamed

    def _message_body(self, req: Request, reply: Reply, layout: Layout, side: _InputSide,
                      diagnostics: Any) -> dict[str, Any]:
        usage = side.usage()
        usage["output_tokens"] = _or(reply.output_tokens, count_output_tokens(reply.content))
        message_id = _new_id("msg_")
        body: dict[str, Any] = {
            "id": message_id, "type": "message", "role": "assistant", "model": req["model"],
            "content": reply.content, "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence, "stop_details": reply.stop_details,
            "usage": usage}
        if diagnostics is not ...:
            body["diagnostics"] = diagnostics
        self._remember(message_id, layout)
        return body

    def _error_body(self, reply: Reply, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"type": reply.error_type or ERROR_TYPES.get(reply.status,
                                                                            "api_error"),
                                 "message": reply.message}
        if reply.error_code:
            error["details"] = {"error_code": reply.error_code}
        return {"type": "error", "error": error, "request_id": request_id}

    def _error(self, reply: Reply) -> _Response:
        headers = self._headers()
        retry_after = reply.retry_after
        if retry_after is None and reply.status in (429, 529):
            retry_after = self.retry_after
        if retry_after is not None:
            headers["retry-after"] = str(max(0, math.ceil(retry_after)))
            headers["retry-after-ms"] = str(max(0, round(retry_after * 1000)))
        if reply.should_retry is not None:
            headers["x-should-retry"] = "true" if reply.should_retry else "false"
        with self._lock:
            self._errors[reply.status] += 1
        body = self._error_body(reply, headers["request-id"])
        return _Response(reply.status, headers, json.dumps(body).encode())

    def _headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "request-id": self._request_id()}


def _keys_sent(headers: dict[str, str]) -> set[str]:
    """The SDK sends ``Authorization: Bearer KEY``; curl users send ``x-api-key``."""
    auth = headers.get("authorization", "")
    return {headers.get("x-api-key", ""), auth.removeprefix("Bearer ").strip()} - {""}


def _sums(by_model: dict[str, dict[str, int]], keys: tuple[str, ...]) -> dict[str, Any]:
    total: Counter[str] = Counter()
    for counts in by_model.values():
        total.update(counts)
    return {**{k: total.get(k, 0) for k in keys},
            "by_model": {m: {k: c.get(k, 0) for k in keys} for m, c in by_model.items()}}


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


# --- streaming ---------------------------------------------------------------------------

def _chunks(text: str, size: int = STREAM_CHUNK) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def _block_events(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A content block as its ``content_block_start`` block and its deltas."""
    kind = block.get("type")
    if kind == "text":
        return ({**block, "text": ""},
                [{"type": "text_delta", "text": t} for t in _chunks(block.get("text", ""))])
    if kind in ("tool_use", "server_tool_use"):
        partial = json.dumps(block.get("input", {}))
        return ({**block, "input": {}},
                [{"type": "input_json_delta", "partial_json": p} for p in [""] + _chunks(
                    partial)])
    if kind == "thinking":
        deltas = [{"type": "thinking_delta", "thinking": t}
                  for t in _chunks(block.get("thinking", ""))]
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return {**block, "thinking": "", "signature": ""}, deltas
    return block, []


def stream_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A message as the API streams it: ``[(event name, data), ...]``."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "stop_details": None, "usage": {**usage,
                                             "output_tokens": min(1, usage["output_tokens"])}}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        first, deltas = _block_events(block)
        events.append(("content_block_start", {"type": "content_block_start",
                                               "index": index, "content_block": first}))
        if index == 0:
            events.append(("ping", {"type": "ping"}))
        events += [("content_block_delta", {"type": "content_block_delta", "index": index,
                                            "delta": delta}) for delta in deltas]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    if not message["content"]:
        events.append(("ping", {"type": "ping"}))
    events.append(("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"],
                  "stop_sequence": message["stop_sequence"],
                  "stop_details": message["stop_details"]},
        "usage": {k: usage[k] for k in USAGE_FIELDS}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


# --- as its own process ------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per response")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra 0..J seconds")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-statuses", default="429,529,500")
    parser.add_argument("--retry-after", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true", help="no prompt caching")
    parser.add_argument("--batch-delay", type=float, default=1.0,
                        help="seconds from a batch's creation to its end")
    parser.add_argument("--cache-min", type=int, default=DEFAULT_CACHE_MIN,
                        help="minimum cacheable tokens of models not in CACHE_MIN_TOKENS")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> FakeAPI:
    faults = None
    if args.fault_rate > 0:
        statuses = tuple(int(s) for s in args.fault_statuses.split(",") if s.strip())
        faults = Faults(args.fault_rate, statuses, args.seed)
    api = FakeAPI(args.latency, jitter=args.jitter, faults=faults,
                  retry_after=args.retry_after, keep_requests=1000, seed=args.seed,
                  cache=not args.no_cache, default_cache_min=args.cache_min,
                  batch_delay=args.batch_delay)
    await serve_until_stopped(api, args.port)
    return api


async def serve_until_stopped(api: FakeAPI, port: int) -> None:
    """Serve on ``port`` until SIGTERM or SIGINT; prints ``listening on URL`` once ready."""
    loop = asyncio.get_running_loop()

    def ready() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, api.request_stop)
        print(f"listening on {api.url}", flush=True)

    await api.serve(port, ready)


def main(argv: list[str] | None = None) -> int:
    api = asyncio.run(_main(_parse_args(argv)))
    print("billed " + json.dumps(api.billed(detail=True)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
