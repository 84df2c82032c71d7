"""The fake API's Message Batches endpoints (``/v1/messages/batches``), for fake_api.

A batch's N entries are processed one after another in request order, entry i (from 0)
falling due ``batch_delay * (i + 1) / N`` seconds after creation by the fake's clock; a
due entry is answered (script, billing, cache) when any batch endpoint is next called,
and the batch ends with its last entry, ``ended_at`` being that entry's due time. So a
test waits for ``processing_status == "ended"`` by moving its clock, or by polling a
small real delay. This module keeps the batches' state and the HTTP shapes; the answer
to an entry comes from the host (``FakeAPI._batch_result``), which knows the script,
the cache and the billing. It imports nothing of fake_api, which may run as __main__.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.harness.fake_api import FakeAPI

BATCH_TTL = 86_400.0  # a batch expires, and ends, 24 h after its creation
MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")
PREFIX = "/v1/messages/batches"


class BatchError(Exception):
    """An HTTP error answer of a batch endpoint."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class BatchFaults:
    """Entries made ``errored`` (an api_error, the script not called) or ``expired``
    with these probabilities, drawn per entry at the batch's creation from ``seed``."""

    errored: float = 0.0
    expired: float = 0.0
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def pick(self) -> str | None:
        draw = self.rng.random()
        if draw < self.errored:
            return "errored"
        if draw < self.errored + self.expired:
            return "expired"
        return None


@dataclass
class _Entry:
    custom_id: str
    params: Any
    due: float
    fault: str | None
    result: dict[str, Any] | None = None


@dataclass
class _Batch:
    id: str
    seq: int
    created: float
    entries: list[_Entry]
    canceled: float | None = None  # when cancel was called
    cancel_at: float | None = None  # when the cancel takes effect
    ended: float | None = None

    @property
    def expires(self) -> float:
        return self.created + BATCH_TTL

    @property
    def end(self) -> float:
        """When it ends (once every entry is answered, canceled or expired)."""
        last = max((e.due for e in self.entries), default=self.created)
        if self.cancel_at is not None:
            last = min(last, self.cancel_at)
        return min(last, self.expires)


class Batches:
    """The batches of one FakeAPI, served on its loop."""

    def __init__(self, host: FakeAPI) -> None:
        self.host = host
        self._batches: dict[str, _Batch] = {}
        self._seq = 0
        self._origin: float | None = None  # wall time - clock, fixed at the first batch
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    # --- HTTP --------------------------------------------------------------------------

    async def handle(self, method: str, path: str, query: dict[str, str],
                     body: Any) -> tuple[dict[str, Any] | bytes, bool]:
        """(the answer, whether it is JSONL bytes) to a request under ``PREFIX``; raises
        BatchError."""
        await self.advance()
        rest = [p for p in path[len(PREFIX):].split("/") if p]
        if not rest and method == "POST":
            return self.create(body), False
        if not rest and method == "GET":
            return self.list(query), False
        batch = self._batches.get(rest[0]) if rest else None
        if batch is None:
            raise BatchError(404, f"{path}: not found")
        if len(rest) == 1 and method == "GET":
            return self.view(batch), False
        if len(rest) == 1 and method == "DELETE":
            return self.delete(batch), False
        if rest[1:] == ["cancel"] and method == "POST":
            return self.cancel(batch), False
        if rest[1:] == ["results"] and method == "GET":
            return self.results(batch), True
        raise BatchError(404, f"{method} {path}: not found")

    def create(self, body: Any) -> dict[str, Any]:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise BatchError(400, "requests: at least one request is required")
        if len(requests) > MAX_REQUESTS:
            raise BatchError(400, f"requests: at most {MAX_REQUESTS} requests per batch")
        seen: set[str] = set()
        for i, request in enumerate(requests):
            custom_id = request.get("custom_id") if isinstance(request, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                raise BatchError(400, f"requests.{i}.custom_id: 1 to 64 letters, digits, "
                                      "'_' or '-'")
            if custom_id in seen:
                raise BatchError(400, f"requests.{i}.custom_id: {custom_id!r} is not unique")
            if not isinstance(request.get("params"), dict):
                raise BatchError(400, f"requests.{i}.params: field required")
            seen.add(custom_id)
        now, delay, faults = self.host.clock(), self.host.batch_delay, self.host.batch_faults
        if self._origin is None:
            self._origin = time.time() - now
        n = len(requests)
        entries = [_Entry(r["custom_id"], r["params"], now + delay * (i + 1) / n,
                          faults.pick() if faults is not None else None)
                   for i, r in enumerate(requests)]
        self._seq += 1
        batch = _Batch(f"msgbatch_{random.getrandbits(96):024x}", self._seq, now,
                       entries)
        self._batches[batch.id] = batch
        return self.view(batch)

    def view(self, batch: _Batch) -> dict[str, Any]:
        counts = dict.fromkeys(("processing",) + RESULT_TYPES, 0)
        if batch.ended is None:
            counts["processing"] = len(batch.entries)
        else:
            for entry in batch.entries:
                assert entry.result is not None
                counts[entry.result["type"]] += 1
        status = ("ended" if batch.ended is not None
                  else "canceling" if batch.cancel_at is not None else "in_progress")
        return {
            "id": batch.id, "type": "message_batch", "processing_status": status,
            "request_counts": counts, "created_at": self._time(batch.created),
            "expires_at": self._time(batch.expires), "ended_at": self._time(batch.ended),
            "cancel_initiated_at": self._time(batch.canceled), "archived_at": None,
            "results_url": (f"{self.host.url}{PREFIX}/{batch.id}/results"
                            if batch.ended is not None else None)}

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise BatchError(400, "limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise BatchError(400, "limit: must be between 1 and 1000")
        newest = sorted(self._batches.values(), key=lambda b: -b.seq)
        ids = [b.id for b in newest]
        start, stop = 0, len(newest)
        if "after_id" in query:
            start = ids.index(query["after_id"]) + 1 if query["after_id"] in ids else stop
        if "before_id" in query:
            stop = ids.index(query["before_id"]) if query["before_id"] in ids else 0
            start = max(start, stop - limit)
        page = newest[start:stop][:limit]
        more = (start > 0) if "before_id" in query else (start + len(page) < stop)
        return {"data": [self.view(b) for b in page], "has_more": more,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None}

    def cancel(self, batch: _Batch) -> dict[str, Any]:
        if batch.ended is not None:
            raise BatchError(400, f"Batch {batch.id} has already ended and cannot be "
                                  "canceled.")
        if batch.canceled is None:
            batch.canceled = self.host.clock()
            batch.cancel_at = batch.canceled + self.host.batch_cancel_delay
        return self.view(batch)

    def delete(self, batch: _Batch) -> dict[str, Any]:
        if batch.ended is None:
            raise BatchError(400, f"Batch {batch.id} cannot be deleted while it is "
                                  "processing; cancel it first.")
        del self._batches[batch.id]
        return {"id": batch.id, "type": "message_batch_deleted"}

    def results(self, batch: _Batch) -> bytes:
        if batch.ended is None:
            raise BatchError(400, f"Batch {batch.id} is still processing; its results are "
                                  "available once processing_status is 'ended'.")
        entries = list(batch.entries)
        if self.host.batch_shuffle:  # the real API does not promise the requests' order
            random.Random(batch.seq).shuffle(entries)
        return b"".join(json.dumps({"custom_id": e.custom_id, "result": e.result}).encode()
                        + b"\n" for e in entries)

    # --- processing --------------------------------------------------------------------

    async def advance(self) -> None:
        """Answer every entry due by now (by due time, then batch, then position), and
        end the batches whose end has come; one call at a time (scripts may await)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            await self._advance()

    async def _advance(self) -> None:
        now = self.host.clock()
        due = sorted(((e.due, b.seq, i, b, e) for b in self._batches.values()
                      if b.ended is None for i, e in enumerate(b.entries)
                      if e.result is None and e.due <= now and not self._stopped(b, e)),
                     key=lambda t: t[:3])
        for _due, _seq, _i, _batch, entry in due:
            if entry.fault == "expired":
                entry.result = {"type": "expired"}
            elif entry.fault == "errored":
                entry.result = {"type": "errored", "error": {
                    "type": "error", "request_id": None,
                    "error": {"type": "api_error", "message": "injected batch error"}}}
            else:
                entry.result = await self.host._batch_result(entry.params)
        for batch in self._batches.values():
            if batch.ended is None and batch.end <= now:
                for entry in batch.entries:
                    if entry.result is None:
                        entry.result = {"type": "canceled" if batch.cancel_at is not None
                                        and batch.cancel_at <= batch.expires else "expired"}
                batch.ended = batch.end

    @staticmethod
    def _stopped(batch: _Batch, entry: _Entry) -> bool:
        """Due after the batch's cancel or expiry: never answered."""
        return entry.due > batch.end

    def _time(self, t: float | None) -> str | None:
        if t is None:
            return None
        origin = self._origin if self._origin is not None else time.time() - self.host.clock()
        stamp = datetime.fromtimestamp(origin + t, UTC).isoformat()
        return stamp.replace("+00:00", "Z")
