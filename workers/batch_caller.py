"""The agent loop's calls in a batch pool: each turn's request goes to the process's
desk (workers/batch_desk.py) to be gathered with the other tasks' into one Message
Batch, and the call returns when its result is read.

Before a request leaves, the task's checkpoint (``keys.task_turn``) holds it with what
the loop had done so far, and its custom_id; the desk notes the batch there once it
exists and the answer once it is read and billed. So a task whose worker died goes on
where it was: its successor reads the checkpoint, and takes the answer already billed,
or waits for the batch already sent (adopting it), and sends again only a request that
never reached a batch. A request that came back ``errored``, ``expired`` or
``canceled`` (not billed) is sent again in a later batch, up to ``retries`` times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any

from workers import keys
from workers.api_call import Answer, CallFailed
from workers.batch_desk import TURN_TTL, Desk, Pending
from workers.batch_results import Result, result_of
from workers.ledger import Call, Ledger
from workers.pricing import Usage
from workers.redis_retry import until_redis

log = logging.getLogger("swarm.worker")

RETRYABLE = ("errored", "expired", "canceled", "lost")
NOT_RETRYABLE_ERRORS = ("invalid_request_error", "authentication_error",
                        "permission_error", "not_found_error")
_SAVED = ("turn", "cid", "status", "request", "progress", "batch", "consumer", "answer",
          "answer_usage", "answer_nano", "failure", "pool")


class BatchFailed(CallFailed):
    """A batch request failed for good (the task fails with this reason)."""


class HeldBack(Exception):
    """The request does not fit the budget: the task goes back to the queue, untouched,
    and the pool (or the swarm) pauses."""

    def __init__(self, reason: str, pool: str | None) -> None:
        super().__init__(reason)
        self.reason, self.pool = reason, pool


@dataclass
class Saved:
    """A task's checkpoint as read when it starts again."""

    fields: dict[str, str]

    @property
    def turn(self) -> int:
        return int(self.fields.get("turn") or 0)

    def get(self, name: str) -> str:
        return self.fields.get(name) or ""


class BatchCaller:
    durable = True  # the agent saves its progress with each call, and resumes from it
    streaming = False

    def __init__(self, desk: Desk, ledger: Ledger, max_tokens: int, retries: int) -> None:
        self.desk = desk
        self.ledger = ledger
        self.max_tokens = max_tokens
        self.retries = retries
        self.redis = desk.redis
        self._resumed: dict[str, Saved] = {}

    async def resume(self, task_id: str) -> dict[str, Any] | None:
        """Where the task's loop was when its last request left: its turn, messages and
        progress; None for a task starting afresh."""
        values = await until_redis(lambda: self.redis.hmget(self._key(task_id), _SAVED),
                                   f"reading task {task_id}'s checkpoint")
        saved = Saved({k: v for k, v in zip(_SAVED, values) if v is not None})
        if not saved.get("request") or not saved.turn or saved.get("pool") != self.desk.pool:
            return None  # none, or another pool's (its model and tools may differ)
        self._resumed[task_id] = saved
        request = json.loads(saved.get("request"))
        return {**json.loads(saved.get("progress") or "{}"), "turn": saved.turn,
                "messages": request["messages"]}

    async def call(self, task_id: str, request: dict[str, Any], first: bool, run: str = "",
                   progress: dict[str, Any] | None = None) -> Answer:
        progress = progress or {}
        saved = self._resumed.pop(task_id, None)
        result = None
        if saved is not None and saved.turn == progress.get("turn"):
            result = await self._pick_up(task_id, saved)
        tries = 0
        while True:
            if result is None:
                result = await self._send(task_id, request, run, progress)
            if result.kind == "succeeded":
                return Answer(result.message, result.usage or Usage(), result.nano)
            if result.kind == "held":
                raise HeldBack(result.detail, result.scope)
            tries += 1
            said = f"batch request {result.kind}" + (f": {result.detail}" if result.detail
                                                     else "")
            if result.kind not in RETRYABLE or tries > self.retries or \
                    any(e in result.detail for e in NOT_RETRYABLE_ERRORS):
                raise BatchFailed(said + (f" (sent {tries} times)" if tries > 1 else ""))
            log.info("task %s: %s; sending it again (%d of %d)", task_id, said, tries,
                     self.retries)
            result = None

    async def _send(self, task_id: str, request: dict[str, Any], run: str,
                    progress: dict[str, Any]) -> Result:
        cid = uuid.uuid4().hex
        body = json.dumps(request, ensure_ascii=False)
        try:
            size = len(body.encode())
        except UnicodeEncodeError as exc:  # a lone surrogate: it can never be sent
            raise BatchFailed(f"the request cannot be encoded: {exc}") from None
        consumer = self.desk.consumer
        checkpoint = {"turn": progress.get("turn", 0), "cid": cid, "status": "gathering",
                      "request": body, "progress": json.dumps(progress), "batch": "",
                      "consumer": consumer, "pool": self.desk.pool}

        async def save() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(self._key(task_id))
            pipe.hset(self._key(task_id), mapping=checkpoint)
            pipe.expire(self._key(task_id), TURN_TTL)
            await pipe.execute()

        await until_redis(save, f"saving task {task_id}'s checkpoint")
        call = await self.ledger.begin(task_id, len(body), self.max_tokens, run,
                                       field=f"{consumer}|{cid}", batch=True)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.desk.add(Pending(cid, task_id, request, size, call, future))
        try:
            return await self._wait(task_id, cid, future)
        except asyncio.CancelledError:
            if self.desk.take_back(cid):  # never sent: not a call
                await asyncio.shield(self.desk.withdraw(call))
            future.cancel()
            raise

    async def _pick_up(self, task_id: str, saved: Saved) -> Result | None:
        """The result of a request sent before this task's worker died or stopped: read
        and billed already, or still in its batch; None if it must be sent again."""
        cid = saved.get("cid")
        got = result_of(cid, cid, saved.get("status"), saved.get("answer"),
                        saved.get("answer_usage"), saved.get("answer_nano"),
                        saved.get("failure"))
        if got is not None:
            log.info("task %s: turn %d's answer was read before; going on", task_id,
                     saved.turn)
            return got
        if saved.get("status") == "sent" and saved.get("batch"):
            log.info("task %s: waiting for turn %d's answer in batch %s", task_id,
                     saved.turn, saved.get("batch"))
            future = self.desk.waiting.get(cid)
            if future is None or future.done():
                future = asyncio.get_running_loop().create_future()
                self.desk.waiting[cid] = future
            self.desk.wake()
            return await self._wait(task_id, cid, future)
        # it never reached a batch that we know of; if its worker's registration is
        # still in flight, its fate is unknown: counted lost
        if saved.get("consumer"):
            await self.ledger.lose(Call(f"{saved.get('consumer')}|{cid}", task_id, 0, 0.0))
        return None

    async def _wait(self, task_id: str, cid: str, future: asyncio.Future[Result]) -> Result:
        """The result, from the desk here, or (if another worker collected it, or its
        batch is gone) from the checkpoint."""
        # a fallback (the desk here hands each result over at once): thousands of
        # tasks wait, so it looks seldom
        interval = max(30.0, min(300.0, 3 * self.desk.poll))
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(future),
                                              interval * random.uniform(0.8, 1.2))
            except TimeoutError:
                pass
            got = await self.desk.settler.from_checkpoint(task_id, cid) or \
                await self.desk.gone(task_id, cid)
            if got is not None:
                self.desk.waiting.pop(cid, None)
                return got

    def _key(self, task_id: str) -> str:
        return keys.task_turn(self.desk.swarm, task_id)
