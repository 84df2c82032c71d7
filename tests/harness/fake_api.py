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
Only ``POST /v1/messages`` exists; it does not stream. Requests are checked the way the
real API checks the things a client gets wrong (empty content, a tool_use without its
tool_result right after, a tool_result without its tool_use): those get a 400.

A reply is billed (counted in ``billed()``) when it is produced, whether or not the
client is still there to read it; errors, injected faults included, are never billed.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import json
import math
import random
import signal
import socket
import sys
import threading
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Iterator, Union

Request = dict[str, Any]
Script = Callable[[Request], Union["Reply", None, Awaitable[Union["Reply", None]]]]

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens")


@dataclass
class Reply:
    """What the script answers to one request: a message, or an error if status >= 400.

    ``input_tokens``/``output_tokens`` None means computed from the request/content.
    ``retry_after`` None means the server's default (for 429 and 529 only).
    ``should_retry`` sets the ``x-should-retry`` header the SDK obeys.
    """

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
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


def error_reply(status: int, error_type: str | None = None, message: str | None = None, *,
                retry_after: float | None = None, error_code: str | None = None,
                should_retry: bool | None = None, delay: float = 0.0) -> Reply:
    """An error response; ``error_code`` goes to ``error.details.error_code``."""
    return Reply(status=status, error_type=error_type or ERROR_TYPES.get(status, "api_error"),
                 message=message or f"fake {status}", retry_after=retry_after,
                 error_code=error_code, should_retry=should_retry, delay=delay)


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


# --- the default script and token counts -------------------------------------------------

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


def count_input_tokens(request: Request) -> int:
    """Characters of all system and message text // 4 + 1."""
    chars = sum(len(t) for t in _texts(request.get("system", "")))
    chars += sum(len(t) for m in request.get("messages", []) for t in _texts(m.get("content")))
    return chars // 4 + 1


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
    if req.get("stream"):
        return "stream: the fake API does not stream"
    for i, msg in enumerate(messages):
        if problem := _check_message(i, msg, messages):
            return problem
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


def _http_response(status: int, headers: dict[str, str], body: bytes, keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", f"content-length: {len(body)}",
             f"connection: {'keep-alive' if keep else 'close'}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- the server --------------------------------------------------------------------------

class FakeAPI:
    """The fake Messages API. ``script``, ``latency``, ``jitter``, ``faults`` and
    ``retry_after`` may be changed while it runs; each request reads them.

    ``retry_after`` (seconds, fractional ok) is sent as ``retry-after`` (rounded up) and
    ``retry-after-ms`` on 429/529 replies without their own, and on every injected
    fault; None sends no header. ``api_key``, if set, must come as
    ``Authorization: Bearer`` (what the SDK sends) or ``x-api-key``, else 401."""

    def __init__(self, latency: float = 0.0, script: Script | None = None, *,
                 jitter: float = 0.0, faults: Faults | None = None,
                 retry_after: float | None = 0.05, api_key: str | None = None,
                 keep_requests: int = 10_000, seed: int = 0) -> None:
        self.latency, self.jitter = latency, jitter
        self.script: Script = script or default_script
        self.faults = faults
        self.retry_after = retry_after  # default for 429/529 replies; None: no header
        self.api_key = api_key  # if set, other keys get a 401
        self.url, self.port = "", 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._received: deque[Request] = deque(maxlen=keep_requests or None)
        self._requests = 0
        self._errors: Counter[int] = Counter()
        self._billed: dict[str, Counter[str]] = {}
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

    def billed(self) -> dict[str, Any]:
        """``{"responses": n, <usage fields>: sums, "by_model": {model: same}}``."""
        with self._lock:
            by_model = {m: dict(c) for m, c in self._billed.items()}
        total: Counter[str] = Counter()
        for counts in by_model.values():
            total.update(counts)
        keys = ("responses",) + USAGE_FIELDS
        return {**{k: total.get(k, 0) for k in keys},
                "by_model": {m: {k: c.get(k, 0) for k in keys} for m, c in by_model.items()}}

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
        status, out_headers, payload = await self._respond(method, target, headers, body)
        conn = headers.get("connection", "").lower()
        keep = conn == "keep-alive" if version == "HTTP/1.0" else conn != "close"
        writer.write(_http_response(status, out_headers, payload, keep))
        await writer.drain()
        return keep

    async def _respond(self, method: str, target: str, headers: dict[str, str],
                       body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method != "POST" or target.split("?", 1)[0] != "/v1/messages":
            return self._error(error_reply(404, message=f"{method} {target}: not found"))
        try:
            req = json.loads(body)
        except ValueError:
            return self._error(error_reply(400, message="body is not valid JSON"))
        with self._lock:
            self._requests += 1
            self._received.append(req)
        reply = await self._reply_for(req, headers)
        await asyncio.sleep(self._delay(reply))
        return self._error(reply) if reply.is_error else self._message(req, reply)

    async def _reply_for(self, req: Request, headers: dict[str, str]) -> Reply:
        if self.api_key is not None and self.api_key not in _keys_sent(headers):
            return error_reply(401, message="invalid x-api-key")
        if problem := check_request(req):
            return error_reply(400, message=problem)
        if self.faults is not None and (status := self.faults.pick()) is not None:
            return error_reply(status, message=f"injected {status}",
                               retry_after=self.retry_after)
        try:
            reply = self.script(req)
            if inspect.isawaitable(reply):
                reply = await reply
        except Exception:  # noqa: BLE001 - a broken script is a 500, shown on stderr
            traceback.print_exc()
            return error_reply(500, message="the fake API's script raised")
        return reply if reply is not None else default_script(req)

    def _delay(self, reply: Reply) -> float:
        jitter = self._rng.uniform(0, self.jitter) if self.jitter > 0 else 0.0
        return max(0.0, self.latency + jitter + reply.delay)

    def _request_id(self) -> str:
        return f"req_fake_{next(self._ids):012d}"

    def _message(self, req: Request, reply: Reply) -> tuple[int, dict[str, str], bytes]:
        usage = {
            "input_tokens": _or(reply.input_tokens, count_input_tokens(req)),
            "output_tokens": _or(reply.output_tokens, count_output_tokens(reply.content)),
            "cache_creation_input_tokens": reply.cache_creation_input_tokens,
            "cache_read_input_tokens": reply.cache_read_input_tokens,
        }
        body = {"id": _new_id("msg_"), "type": "message", "role": "assistant",
                "model": req["model"], "content": reply.content,
                "stop_reason": reply.stop_reason, "stop_sequence": None, "usage": usage}
        with self._lock:
            counts = self._billed.setdefault(req["model"], Counter())
            counts["responses"] += 1
            counts.update(usage)
        return 200, self._headers(), json.dumps(body).encode()

    def _error(self, reply: Reply) -> tuple[int, dict[str, str], bytes]:
        error: dict[str, Any] = {"type": reply.error_type or ERROR_TYPES.get(reply.status,
                                                                            "api_error"),
                                 "message": reply.message}
        if reply.error_code:
            error["details"] = {"error_code": reply.error_code}
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
        body = {"type": "error", "error": error, "request_id": headers["request-id"]}
        return reply.status, headers, json.dumps(body).encode()

    def _headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "request-id": self._request_id()}


def _keys_sent(headers: dict[str, str]) -> set[str]:
    """The SDK sends ``Authorization: Bearer KEY``; curl users send ``x-api-key``."""
    auth = headers.get("authorization", "")
    return {headers.get("x-api-key", ""), auth.removeprefix("Bearer ").strip()} - {""}


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


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
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> FakeAPI:
    faults = None
    if args.fault_rate > 0:
        statuses = tuple(int(s) for s in args.fault_statuses.split(",") if s.strip())
        faults = Faults(args.fault_rate, statuses, args.seed)
    api = FakeAPI(args.latency, jitter=args.jitter, faults=faults,
                  retry_after=args.retry_after, keep_requests=1000, seed=args.seed)
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
    print("billed " + json.dumps(api.billed()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
