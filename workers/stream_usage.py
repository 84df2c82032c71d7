"""What a Messages API answer used, read from its raw bytes as they pass (a proxy's view:
no SDK objects): the usage of a server-sent event stream or of a JSON body, why its cache
missed, and how long a 429 asks to wait."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from workers.pricing import Usage


class UsageOfStream:
    """The usage of a message stream, read from its events as they pass and merged as
    the SDK merges it (anthropic/lib/streaming/_messages.py, accumulate_event): the
    message_start's message.usage, overwritten by each message_delta's cumulative counts
    (output_tokens always, the others when present; the cache_creation split stays);
    message_stop ends the message. Only those events are parsed."""

    WANTED = (b"", b"message_start", b"message_delta", b"message_stop")

    def __init__(self) -> None:
        self._buf = b""
        self.usage: dict[str, Any] | None = None  # as the API says it
        self.miss = ""
        self.done = False

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        if b"\r" in self._buf:
            self._buf = self._buf.replace(b"\r\n", b"\n")
        while (end := self._buf.find(b"\n\n")) >= 0:
            raw, self._buf = self._buf[:end], self._buf[end + 2:]
            self._event(raw)

    def _event(self, raw: bytes) -> None:
        lines = raw.split(b"\n")
        name = next((ln[6:].strip() for ln in lines if ln.startswith(b"event:")), b"")
        data = b"\n".join(ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:"))
        if name not in self.WANTED or not data or self.done:
            return
        event = json_or_none(data)
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self.usage = dict(event["message"].get("usage") or {})
            self.miss = miss_reason(event["message"])
        elif kind == "message_delta" and self.usage is not None:
            delta = event.get("usage") or {}
            self.usage["output_tokens"] = delta.get("output_tokens")
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                if delta.get(key) is not None:
                    self.usage[key] = delta[key]
        elif kind == "message_stop":
            self.done = self.usage is not None


def json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def usage_of(usage: Mapping[str, Any]) -> Usage:
    split = usage.get("cache_creation") or {}
    return Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0),
                 int(usage.get("cache_creation_input_tokens") or 0),
                 int(usage.get("cache_read_input_tokens") or 0),
                 int(split.get("ephemeral_1h_input_tokens") or 0))


def miss_reason(message: Mapping[str, Any]) -> str:
    """Why the API says the request missed the cache (a message's diagnostics), or ''."""
    diagnostics = message.get("diagnostics")
    reason = diagnostics.get("cache_miss_reason") if isinstance(diagnostics, dict) else None
    return str(reason.get("type") or "") if isinstance(reason, dict) else ""


def retry_after(headers: Mapping[str, str]) -> float:
    """Seconds to hold the swarm back after a 429 (as workers/api_client.py reads them)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        if (value := headers.get(name, "")).replace(".", "", 1).isdigit():
            return max(0.05, min(60.0, float(value) * scale))
    return 1.0
