"""A metering reverse proxy on loopback for tasks run by the Claude Code CLI (which calls
ANTHROPIC_BASE_URL itself): each Messages API call is metered as workers/api_call.py
meters ours. A task's CLI uses its own token as API key; the proxy sends the real
credentials instead and forwards only POST /v1/messages (metered; streams passed on chunk
by chunk, their usage read on the fly) and POST /v1/messages/count_tokens (not metered).
Raw HTTP/1.1 on asyncio streams: keep-alive, Content-Length or chunked bodies."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import Callable
from copy import copy
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from typing import Any, cast

import httpx2

from workers.ledger import Call, Ledger
from workers.pricing import Usage
from workers.stream_usage import UsageOfStream, json_or_none, miss_reason, retry_after, usage_of

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
MAX_BODY = 64 * 2**20
TIMEOUT = httpx2.Timeout(600.0, connect=10.0)  # the SDK's own: ten minutes for an answer
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                  "transfer-encoding", "upgrade", "content-length"})  # and the framing
_REQUEST_DROP = _HOP | {"host", "expect", "accept-encoding", "x-api-key", "authorization"}
_RESPONSE_DROP = _HOP | {"content-encoding"}  # the body is passed on decoded
_NEVER_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)
_PHRASES = {s.value: s.phrase for s in HTTPStatus} | {529: "Overloaded"}


@dataclass
class TaskMeter:
    """What a task's calls used: ``calls`` settled, their ``usage``, cost (``nano``; None
    once a model had no price) and ``models``; ``lost`` calls (fate unknown, with their
    bound), ``refused`` calls (over the cap), and calls ``inflight`` when it was read."""

    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    nano: int | None = 0
    models: list[str] = field(default_factory=list)
    lost: int = 0
    lost_bound_nano: int = 0
    refused: int = 0
    inflight: int = 0


@dataclass
class _Task(TaskMeter):
    task_id: str = ""
    run: str = ""
    cap_nano: int | None = None
    spent: int = 0  # the priced calls' cost, what the cap is held against


class _Metered:
    """One registered call, accounted for once: settled, withdrawn, or else lost; settled
    or withdrawn before the client has the whole answer (it then sees meter and cap as is)."""

    def __init__(self, task: _Task, ledger: Ledger, call: Call) -> None:
        self.task, self.ledger, self.call = task, ledger, call
        self.done = False

    async def settle(self, usage: Usage, miss: str) -> None:
        self.done = True
        nano = await asyncio.shield(self.ledger.settle(self.call, usage, miss))
        task = self.task
        task.calls += 1
        task.usage.add(usage)
        task.nano = None if nano is None or task.nano is None else task.nano + nano
        task.spent += nano or 0
        if self.ledger.model not in task.models:
            task.models.append(self.ledger.model)

    async def withdraw(self) -> None:
        """An error answer, or it never left: not billed."""
        self.done = True
        await asyncio.shield(self.ledger.withdraw(self.call))

    async def lose(self) -> None:
        """Unless settled or withdrawn: its fate is unknown, counted lost with its bound."""
        if not self.done:
            self.done = True
            await self.ledger.lose(self.call)
            self.task.lost += 1
            self.task.lost_bound_nano += self.call.bound


@dataclass
class _Exchange:
    """One request from the CLI, and its connection to answer on."""

    method: str
    target: str  # path and query, as sent
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    keep: bool  # keep the connection open after the answer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> bool:
        head = _head(status, [*headers, ("content-length", str(len(body)))], self.keep)
        self.writer.write(head + body)
        await self.writer.drain()
        return self.keep

    async def error(self, status: int, kind: str, message: str) -> bool:
        """An error in the API's own shape, so the CLI reads it as it reads the API's."""
        body = json.dumps({"type": "error", "error": {"type": kind, "message": message}})
        return await self.send(status, [("content-type", "application/json")], body.encode())


OAUTH_BETA = "oauth-2025-04-20"


class MeteredProxy:
    """The proxy of one worker process. ``ledgers`` gives the Ledger of a model, called
    once per model (a dict's ``get`` will do; a model without one is refused). ``http``
    needs room for as many connections as calls run at once."""

    def __init__(self, upstream: str, ledgers: Callable[[str], Ledger | None],
                 http: httpx2.AsyncClient, *,
                 api_key: str | None = None, auth_token: str | None = None,
                 oauth: bool = False) -> None:
        if not (api_key or auth_token):
            raise ValueError("the proxy needs the real API key or auth token")
        # a Claude subscription's token (CLAUDE_CODE_OAUTH_TOKEN) goes as a bearer token
        # with the beta the API asks of OAuth callers, as Claude Code itself sends it
        self._beta = OAUTH_BETA if oauth else ""
        self.upstream = upstream.rstrip("/")
        self.http = http
        self._credentials = {"x-api-key": api_key} if api_key else {}
        if auth_token:
            self._credentials["authorization"] = f"Bearer {auth_token}"
        self._ledgers = ledgers
        self._made: dict[str, Ledger | None] = {}
        self._tasks: dict[str, _Task] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.url = ""
        self.connections = 0  # accepted so far

    async def start(self) -> str:
        """Listen on 127.0.0.1, a free port; returns the base URL for the CLI."""
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=1024)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        """Stop listening and end every connection (a call cut off is counted lost)."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def open_task(self, task_id: str, run: str = "", cap_nano: int | None = None) -> str:
        """A new secret for the CLI of ``task_id`` to use as its API key. Once the task's
        priced calls cost ``cap_nano``, its further calls are refused."""
        token = f"swarm-{secrets.token_urlsafe(32)}"
        self._tasks[token] = _Task(task_id=task_id, run=run, cap_nano=cap_nano)
        return token

    def close_task(self, token: str) -> TaskMeter:
        """Forget the token (its later requests get a 401); returns what its calls used
        so far (calls still in flight are metered in the ledger, not in this copy)."""
        task = self._tasks.pop(token)
        return TaskMeter(**{f.name: copy(getattr(task, f.name)) for f in fields(TaskMeter)})

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conns.add(task := cast("asyncio.Task[Any]", asyncio.current_task()))
        self.connections += 1
        try:
            while (ex := await _read_request(reader, writer)) is not None:
                if not await self._answer(ex):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, httpx2.HTTPError,  # a bad request; an answer cut off upstream
                asyncio.CancelledError):  # stop()
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _answer(self, ex: _Exchange) -> bool:
        """Answer one request; False when the connection should end."""
        task = self._task_of(ex.headers)
        if task is None:
            return await ex.error(401, "authentication_error",
                                  "invalid x-api-key: not a task token of this proxy")
        if ex.method == "POST" and ex.path == MESSAGES:
            return await self._message(task, ex)
        if ex.method == "POST" and ex.path == COUNT_TOKENS:  # not metered
            try:
                response = await self.http.send(self._upstream(ex))
            except httpx2.HTTPError as exc:
                return await ex.error(502, "api_error", f"the proxy's call failed: {exc!r}")
            return await ex.send(response.status_code, _headers_of(response), response.content)
        return await ex.error(404, "not_found_error", f"{ex.method} {ex.path}: the proxy "
                              f"forwards only POST {MESSAGES} and {COUNT_TOKENS}")

    def _task_of(self, headers: dict[str, str]) -> _Task | None:
        bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
        return self._tasks.get(headers.get("x-api-key", "")) or self._tasks.get(bearer)

    def _ledger(self, model: str) -> Ledger | None:
        if model not in self._made:
            self._made[model] = self._ledgers(model)
        return self._made[model]

    def _upstream(self, ex: _Exchange) -> httpx2.Request:
        headers = {k: v for k, v in ex.headers.items() if k not in _REQUEST_DROP}
        if self._beta:
            said = headers.get("anthropic-beta", "")
            headers["anthropic-beta"] = f"{said},{self._beta}" if said else self._beta
        return self.http.build_request("POST", self.upstream + ex.target, content=ex.body,
                                       headers={**headers, **self._credentials},
                                       timeout=TIMEOUT)

    async def _message(self, task: _Task, ex: _Exchange) -> bool:
        body = parsed if isinstance(parsed := json_or_none(ex.body), dict) else {}
        model, max_tokens = body.get("model"), body.get("max_tokens", 0)
        if not isinstance(model, str) or not isinstance(max_tokens, int):
            return await ex.error(400, "invalid_request_error",
                                  "the body must be a JSON object with a model and max_tokens")
        if task.cap_nano is not None and task.spent >= task.cap_nano:
            task.refused += 1
            return await ex.error(400, "invalid_request_error", "this task has spent its cost "
                                  f"limit (${task.cap_nano / 1e9:.6f}): the swarm forwards "
                                  "none of its calls any more")
        ledger = self._ledger(model)
        if ledger is None:
            return await ex.error(400, "invalid_request_error",
                                  f"model {model!r} is not offered to this task")
        metered = _Metered(task, ledger, await ledger.begin(task.task_id, len(ex.body),
                                                            max_tokens, task.run))
        task.inflight += 1
        try:
            return await self._forward(ex, metered)
        finally:
            await asyncio.shield(metered.lose())
            task.inflight -= 1

    async def _forward(self, ex: _Exchange, metered: _Metered) -> bool:
        try:
            response = await self.http.send(self._upstream(ex), stream=True)
        except httpx2.HTTPError as exc:
            if isinstance(exc, _NEVER_SENT):
                await metered.withdraw()  # it never left: not a call
            return await ex.error(502, "api_error", f"the proxy's call failed: {exc!r}")
        try:
            status = response.status_code
            if status < 400 and response.headers.get("content-type", "").startswith(
                    "text/event-stream"):
                return await _relay_stream(response, metered, ex)
            if status >= 400:  # an error answer: not billed; the CLI retries on its own
                if status == 429:
                    await metered.ledger.cool_down(retry_after(response.headers))
                await metered.withdraw()
            body = await response.aread()
            if status < 400 and isinstance(message := json_or_none(body), dict) and isinstance(
                    message.get("usage"), dict):
                await metered.settle(usage_of(message["usage"]), miss_reason(message))
            return await ex.send(status, _headers_of(response), body)
        finally:
            await response.aclose()


async def _relay_stream(response: httpx2.Response, metered: _Metered, ex: _Exchange) -> bool:
    """Pass the events on as they come, reading the usage out of them; a stream cut off
    upstream is cut off for the client too (its connection closed mid-body)."""
    events = UsageOfStream()
    ex.writer.write(_head(response.status_code, _headers_of(response)
                          + [("transfer-encoding", "chunked")], ex.keep))
    try:
        async for chunk in response.aiter_bytes():
            if not chunk:
                continue  # an empty chunk would end the body
            events.feed(chunk)
            if events.done and not metered.done:
                await metered.settle(usage_of(events.usage or {}), events.miss)
            if ex.reader.at_eof():  # an HTTP client half-closes only when it leaves
                raise ConnectionAbortedError("the client went away mid-stream")
            ex.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await ex.writer.drain()
    except httpx2.HTTPError as exc:
        if not events.done:
            raise ConnectionAbortedError(f"the stream was cut off: {exc!r}") from exc
    ex.writer.write(b"0\r\n\r\n")
    await ex.writer.drain()
    return ex.keep


# --- HTTP/1.1 --------------------------------------------------------------------------

async def _read_request(reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> _Exchange | None:
    """The next request on the connection; None at its clean end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:  # the connection ended (between requests, or not)
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")  # else a ValueError: a bad request
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        length = int(headers.get("content-length") or 0)
        if not 0 <= length <= MAX_BODY:
            raise ConnectionAbortedError("a body too large")
        body = await reader.readexactly(length)
    keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    return _Exchange(method, target, target.partition("?")[0], headers, body, keep, reader, writer)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16):
        if len(body) + size > MAX_BODY:
            raise ConnectionAbortedError("a body too large")
        body += (await reader.readexactly(size + 2))[:-2]
    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
        pass
    return bytes(body)


def _headers_of(response: httpx2.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _RESPONSE_DROP]


def _head(status: int, headers: list[tuple[str, str]], keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, 'Unknown')}",
             f"connection: {'keep-alive' if keep else 'close'}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
