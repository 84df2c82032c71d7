"""A batch pool worker's desk: it gathers its tasks' requests into Message Batches and
collects the results, one per process, shared by every task in flight.

Gathering: a request waits at most ``window`` seconds for others (or until
``max_requests`` or 200 MB have gathered); the batch's worst case is reserved against
the budgets (workers/batch_scripts.py RESERVE) and the batch is sent with
``messages.batches.create``. Once it exists its id is in Redis (SENT), with each request's
in-flight entry under the batch's name, so whichever worker of the pool is alive
collects it: its owner, or anyone once the owner's lease is gone (ADOPT).

Collecting: each open batch is asked about at ``poll`` seconds, then at a tenth of its
age, at most every ``poll_max``; once ended, its results are read as they stream, a few
hundred at a time, each settled once (SETTLE then RECORD, in one MULTI: the ledger, the
reservation, and the answer stored in the task's checkpoint) and handed to the task
waiting on it here, if one is. The results can be read again: what was settled is not
settled twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import anthropic

from workers import batch_scripts, keys
from workers.budgets import PREFIX as BUDGET_PREFIX
from workers.budgets import from_redis
from workers.config import WorkerConfig
from workers.ledger import Call, Ledger
from workers.batch_results import Result, Settler, resolve
from workers.pricing import PriceBook
from workers.redis_retry import until_redis

log = logging.getLogger("swarm.worker")

MAX_BATCH_BYTES = 200_000_000  # the API takes up to 256 MB per batch
RESULTS_CHUNK = 500  # results settled per round trip
TURN_TTL = 7 * 86_400  # a task's checkpoint outlives its last write this long


@dataclass
class Pending:
    cid: str
    task_id: str
    request: dict[str, Any]
    size: int  # bytes of the request as JSON
    call: Call
    future: asyncio.Future[Result]


class Desk:
    def __init__(self, client: anthropic.AsyncAnthropic, redis: Any, cfg: WorkerConfig,
                 ledger: Ledger, prices: PriceBook) -> None:
        settings = dict(cfg.batch or {})
        self.client, self.redis, self.cfg, self.ledger, self.prices = (
            client, redis, cfg, ledger, prices)
        self.window = float(settings.get("window", 2.0))
        self.max_requests = int(settings.get("max_requests", 10_000))
        self.poll = float(settings.get("poll", 10.0))
        self.poll_max = float(settings.get("poll_max", 300.0))
        self.consumer = keys.consumer(cfg.worker_id, cfg.generation)
        self.swarm, self.pool = cfg.swarm, cfg.pool
        self.pending: list[Pending] = []
        self.waiting: dict[str, asyncio.Future[Result]] = {}  # custom_id -> its task's
        self.next_poll: dict[str, float] = {}  # batch id -> when to ask again
        self.flushing: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._reserve = redis.register_script(batch_scripts.RESERVE)
        self._withdraw = redis.register_script(batch_scripts.WITHDRAW)
        self._sent = redis.register_script(batch_scripts.SENT)
        self._adopt = redis.register_script(batch_scripts.ADOPT)
        self._done = redis.register_script(batch_scripts.DONE)
        self.settler = Settler(redis, cfg.swarm, ledger, prices, self.waiting)
        self.sent_batches = 0  # batches this process created
        self.sent_requests = 0

    # --- gathering -----------------------------------------------------------------

    def add(self, pending: Pending) -> None:
        """Gather a registered request into the next batch."""
        self.pending.append(pending)
        if len(self.pending) >= self.max_requests or \
                sum(p.size for p in self.pending) >= MAX_BATCH_BYTES:
            self._flush_now()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._flush_now)

    def take_back(self, cid: str) -> bool:
        """Take a request out of the gathering (its task is going away); False if it
        already left for a batch."""
        for i, pending in enumerate(self.pending):
            if pending.cid == cid:
                del self.pending[i]
                return True
        return False

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.pending:
            batch: list[Pending] = []
            size = 0
            while self.pending and len(batch) < self.max_requests and \
                    (not batch or size + self.pending[0].size <= MAX_BATCH_BYTES):
                size += self.pending[0].size
                batch.append(self.pending.pop(0))
            job = asyncio.create_task(self._send(batch), name="batch send")
            self.flushing.add(job)
            job.add_done_callback(self.flushing.discard)

    async def _send(self, batch: list[Pending]) -> None:
        try:
            batch = await self._fit(batch)
            if batch:
                await self._create(batch)
        except Exception as exc:  # every request must hear its fate
            log.exception("sending a batch of %d failed", len(batch))
            for pending in batch:
                resolve(pending.future, Result("lost", detail=f"internal error: {exc!r}"))

    async def _fit(self, batch: list[Pending]) -> list[Pending]:
        """Reserve the worst case of as many requests as the budgets admit; the rest
        wait for reservations to be settled, or, if nothing else is reserved, are held
        (their tasks go back to the queue and the pool pauses)."""
        values = await until_redis(lambda: self.redis.hgetall(keys.budgets(self.swarm)),
                                   "reading the budgets")
        caps: dict[str | None, int | None] = {None: None, self.pool: None}
        for budget in from_redis(values or {}, self.pool, self.cfg.budget_usd,
                                 self.cfg.pool_budget_usd):
            caps[budget.pool] = int(budget.usd * 1e9)
        k, a = batch_scripts.reserve_args(self.swarm, self.pool, caps[None], caps[self.pool],
                                          [p.call.field for p in batch])
        n, res_t, spent_t, res_p, spent_p = (int(v) for v in await until_redis(
            lambda: self._reserve(keys=k, args=a), "reserving a batch's worst case"))
        fits, rest = batch[:n], batch[n:]
        if rest and (res_t or res_p or fits):
            log.info("%d request(s) wait for batches in flight to settle (budget)", len(rest))
            asyncio.get_running_loop().call_later(max(self.window, self.poll),
                                                  self._requeue, rest)
        elif rest:
            bound = rest[0].call.bound
            pool_cap, swarm_cap = caps[self.pool], caps[None]
            if swarm_cap is not None and spent_t + bound > swarm_cap:
                who, cap, spent, scope = "the swarm", swarm_cap, spent_t, None
            else:
                who, cap, spent, scope = f"pool {self.pool}", pool_cap or 0, spent_p, self.pool
            reason = (f"{BUDGET_PREFIX}{who} spent ${spent / 1e9:.6f} of ${cap / 1e9:g}, "
                      f"and a batch request may cost up to ${bound / 1e9:.6f}")
            for pending in rest:
                await self.withdraw(pending.call)
                resolve(pending.future, Result("held", detail=reason, scope=scope))
        return fits

    def _requeue(self, rest: list[Pending]) -> None:
        """Gather again what waited for reservations; a request whose task went away
        meanwhile is withdrawn."""
        live = [p for p in rest if not p.future.done()]
        for gone in (p for p in rest if p.future.done()):
            job = asyncio.create_task(self.withdraw(gone.call), name="batch withdraw")
            self.flushing.add(job)
            job.add_done_callback(self.flushing.discard)
        self.pending[:0] = live
        if live:
            self._flush_now()

    async def _create(self, batch: list[Pending]) -> None:
        try:
            created = await self.client.messages.batches.create(
                requests=[{"custom_id": p.cid, "params": p.request}  # type: ignore[typeddict-item]
                          for p in batch])
        except anthropic.APIStatusError as exc:  # refused: nothing was billed
            await self._give_back(batch, lost=False)
            for pending in batch:
                resolve(pending.future, Result("rejected", detail=_message(exc)))
            return
        except (anthropic.APIError, asyncio.CancelledError) as exc:  # its fate is unknown
            await asyncio.shield(self._give_back(batch, lost=True))
            for pending in batch:
                resolve(pending.future, Result("lost", detail=f"creating the batch: {exc!r}"))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        now = time.time()
        k = [keys.inflight(self.swarm), keys.batches(self.swarm, self.pool),
             keys.batch(self.swarm, created.id),
             *(keys.task_turn(self.swarm, p.task_id) for p in batch)]
        a: list[Any] = [created.id, round(now, 3), self.pool, self.consumer, TURN_TTL]
        for pending in batch:
            a += [pending.call.field, pending.cid]
            self.waiting[pending.cid] = pending.future
        await until_redis(lambda: self._sent(keys=k, args=a), f"registering batch {created.id}")
        self.sent_batches += 1
        self.sent_requests += len(batch)
        self.next_poll[created.id] = time.monotonic() + self.poll
        log.info("batch %s: %d request(s) sent", created.id, len(batch))
        self._wake.set()

    async def _give_back(self, batch: list[Pending], lost: bool) -> None:
        """The batch was not created (or its fate is unknown): its calls are withdrawn,
        or counted lost, and what they reserved is given back."""
        for pending in batch:
            if lost:
                await self.ledger.lose(pending.call)
            else:
                await self.withdraw(pending.call)

    async def withdraw(self, call: Call) -> None:
        """A request not sent, or refused: out of flight, its reservation given back."""
        await until_redis(lambda: self._withdraw(
            keys=[keys.inflight(self.swarm), keys.reserved(self.swarm)], args=[call.field]),
            "withdrawing a call")

    async def close(self, grace: float) -> None:
        """On stop: batches being created are let finish (so their ids reach Redis),
        within ``grace``."""
        if self.flushing:
            await asyncio.wait(set(self.flushing), timeout=max(1.0, grace))

    # --- collecting ----------------------------------------------------------------

    async def collect(self, stopping: asyncio.Event) -> None:
        """Poll the pool's open batches this worker owns or adopts, until stopping."""
        while not stopping.is_set():
            try:
                await self._round()
            except Exception:  # Redis or the API away: the next round
                log.exception("collecting batches failed; trying again")
                await asyncio.sleep(min(self.poll, 5.0))
            due = min(self.next_poll.values(), default=time.monotonic() + self.poll)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(),
                                       max(0.01, min(due - time.monotonic(), self.poll)))
            except TimeoutError:
                pass

    async def _round(self) -> None:
        opened = await self.redis.zrange(keys.batches(self.swarm, self.pool), 0, 999,
                                         withscores=True)
        now = time.monotonic()
        for batch_id, created in opened:
            if self.next_poll.get(batch_id, 0.0) > now:
                continue
            owner = await self.redis.hget(keys.batch(self.swarm, batch_id), "owner")
            if owner is None:
                continue
            mine = await self._adopt(keys=[keys.batch(self.swarm, batch_id),
                                           keys.lease(self.swarm, owner)], args=[self.consumer])
            if int(mine) != 1:
                self.next_poll[batch_id] = now + self.poll  # its owner is alive
                continue
            if owner != self.consumer:
                log.info("batch %s: adopted from %s, whose lease is gone", batch_id, owner)
            await self._check(batch_id, float(created))
        for gone in set(self.next_poll) - {b for b, _ in opened}:
            self.next_poll.pop(gone, None)

    async def _check(self, batch_id: str, created: float) -> None:
        try:
            batch = await self.client.messages.batches.retrieve(batch_id)
        except anthropic.NotFoundError:
            log.error("batch %s is gone from the API: its requests are counted lost", batch_id)
            await self._lose_batch(batch_id)
            return
        except anthropic.APIError as exc:
            log.warning("batch %s: cannot ask about it: %s", batch_id, exc)
            self.next_poll[batch_id] = time.monotonic() + self._interval(created)
            return
        if batch.processing_status != "ended":
            self.next_poll[batch_id] = time.monotonic() + self._interval(created)
            return
        await self._collect_results(batch_id)

    def _interval(self, created: float) -> float:
        age = max(0.0, time.time() - created)
        return min(self.poll_max, max(self.poll, age / 10)) * random.uniform(0.9, 1.1)

    async def _collect_results(self, batch_id: str) -> None:
        chunk: list[Any] = []
        results = await self.client.messages.batches.results(batch_id)
        async for item in results:
            chunk.append(item)
            if len(chunk) >= RESULTS_CHUNK:
                await self.settler.settle(chunk)
                chunk = []
        if chunk:
            await self.settler.settle(chunk)
        k = [keys.batches(self.swarm, self.pool), keys.batch(self.swarm, batch_id)]
        await until_redis(lambda: self._done(keys=k, args=[batch_id]), "closing a batch")
        self.next_poll.pop(batch_id, None)
        log.info("batch %s: results collected", batch_id)

    def wake(self) -> None:
        """Look at the open batches now (a task waits on one it did not send)."""
        self._wake.set()

    async def gone(self, task_id: str, cid: str) -> Result | None:
        """``lost`` if the batch the checkpoint names for ``cid`` is no longer open and
        left no result; else None (still waiting)."""
        turn = keys.task_turn(self.swarm, task_id)
        saved_cid, batch_id = await until_redis(lambda: self.redis.hmget(turn, ["cid", "batch"]),
                                                f"reading task {task_id}'s checkpoint")
        if saved_cid != cid or not batch_id:
            return None
        if await self.redis.zscore(keys.batches(self.swarm, self.pool), batch_id) is not None:
            return None
        return await self.settler.from_checkpoint(task_id, cid) or Result(
            "lost", detail=f"batch {batch_id} closed without its result")

    async def _lose_batch(self, batch_id: str) -> None:
        """A batch the API no longer knows: each of its requests still in flight is
        counted lost (their fate is unknown), and each task waiting is told."""
        lost: list[tuple[str, dict[str, Any]]] = []
        async for field, entry in self.redis.hscan_iter(
                keys.inflight(self.swarm), match=batch_scripts.BATCH_CALL + "*", count=1000):
            call = json.loads(entry)
            if call.get("batch") == batch_id:
                lost.append((field, call))
        for field, call in lost:
            await self.ledger.lose(Call(field, call["task"], int(call["bound"]), 0.0))
            future = self.waiting.pop(field.removeprefix(batch_scripts.BATCH_CALL), None)
            if future is not None:
                resolve(future, Result("lost", detail=f"batch {batch_id} is gone"))
        k = [keys.batches(self.swarm, self.pool), keys.batch(self.swarm, batch_id)]
        await until_redis(lambda: self._done(keys=k, args=[batch_id]), "closing a batch")


def _message(exc: anthropic.APIStatusError) -> str:
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"{exc.status_code}: {error['message'][:300]}"
    return f"{exc.status_code}: {str(exc)[:300]}"

