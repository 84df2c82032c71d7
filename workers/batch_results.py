"""The results of a batch pool's requests: each settled once, for whoever sent it (the
ledger at batch rates, the reservation given back, the answer stored in the task's
checkpoint, in one MULTI of SETTLE and RECORD), then handed to the task waiting on it
in this process, if one is. Reading a batch's results again settles nothing twice."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from workers import batch_scripts, keys, ledger_scripts
from workers.ledger import Ledger
from workers.pricing import PriceBook, Usage, family
from workers.redis_retry import until_redis


@dataclass
class Result:
    """What came back for one request: ``succeeded`` (message, usage, nano), the API's
    ``errored``, ``expired``, ``canceled``; or ours: ``rejected`` (the batch was
    refused), ``lost`` (its fate is unknown), ``held`` (it does not fit the budget)."""

    kind: str
    message: Any = None
    usage: Usage | None = None
    nano: int | None = None
    detail: str = ""
    scope: str | None = None  # held: the pool whose budget it is (None: the swarm's)
    at_batch: bool = True  # succeeded: billed at batch rates (its usage's service tier)



class Settler:
    def __init__(self, redis: Any, swarm: str, ledger: Ledger, prices: PriceBook,
                 waiting: dict[str, asyncio.Future[Result]]) -> None:
        self.redis, self.swarm, self.ledger, self.prices = redis, swarm, ledger, prices
        self.waiting = waiting  # custom_id -> the future its task waits on
        self._settle = redis.register_script(batch_scripts.SETTLE)
        self._record = redis.register_script(ledger_scripts.RECORD)

    async def settle(self, items: list[Any]) -> None:
        """Settle a chunk of results: each once, for whoever sent it; then hand each to
        its task if it waits here."""
        fields = [batch_scripts.batch_call(item.custom_id) for item in items]
        entries = await until_redis(lambda: self.redis.hmget(keys.inflight(self.swarm), fields),
                                    "reading batch calls")
        # settled before (results read again: their tasks read their checkpoints), or
        # not a call of ours, when the entry is gone
        todo = [(item, field, json.loads(entry))
                for item, field, entry in zip(items, fields, entries) if entry is not None]
        results = [self._result(item, call) for item, _field, call in todo]
        now = time.time()

        async def settle_once() -> list[Any]:
            pipe = self.redis.pipeline(transaction=True)
            for (item, field, call), result in zip(todo, results):
                turn = keys.task_turn(self.swarm, call["task"])
                await self._settle(
                    keys=[keys.inflight(self.swarm), keys.reserved(self.swarm), turn,
                          keys.batch(self.swarm, str(call.get("batch", "")))],
                    args=[field, item.custom_id,
                          "answered" if result.kind == "succeeded" else "failed",
                          *self._stored(result)], client=pipe)
                if result.kind == "succeeded":
                    rk, ra = self._record_args(field, call, result, now)
                    await self._record(keys=rk, args=ra, client=pipe)
            return list(await pipe.execute())

        replies = await until_redis(settle_once, "settling batch results") if todo else []
        spent: dict[str, int] = {}
        at = 0
        for (_item, _field, call), result in zip(todo, results):
            if result.kind == "succeeded":
                if replies[at + 1] and result.nano:  # recorded now, not before
                    fam = family(str(call["model"]))
                    spent[fam] = spent.get(fam, 0) + result.nano
                at += 1
            at += 1
        if spent:  # the seed's float counters, beside the script (see ledger_scripts)
            seed = self.redis.pipeline(transaction=False)
            for fam, nano in spent.items():
                seed.incrbyfloat(keys.seed_cost(fam), nano / 1e9)
            await until_redis(seed.execute, "counting the seed's cost")
        for (item, _field, _call), result in zip(todo, results):
            future = self.waiting.pop(item.custom_id, None)
            if future is not None:
                resolve(future, result)

    def _result(self, item: Any, call: dict[str, Any]) -> Result:
        kind = str(item.result.type)
        if kind != "succeeded":
            error = getattr(getattr(item.result, "error", None), "error", None)
            detail = str(getattr(error, "message", "") or "")
            etype = str(getattr(error, "type", "") or "")
            return Result(kind, detail=f"{etype}: {detail}" if etype else detail)
        message = item.result.message
        usage = Usage.of(message.usage)
        tier = getattr(message.usage, "service_tier", None)
        at_batch = tier in (None, "batch")
        return Result("succeeded", message, usage,
                      self.prices.nano(call["model"], usage, batch=at_batch),
                      at_batch=at_batch)

    @staticmethod
    def _stored(result: Result) -> list[Any]:
        """What the task's checkpoint keeps of a result: the answer, or why it failed."""
        if result.kind == "succeeded":
            return ["answer", result.message.model_dump_json(), "answer_usage",
                    json.dumps(vars(result.usage)),
                    "answer_nano", -1 if result.nano is None else result.nano]
        return ["failure", json.dumps({"kind": result.kind, "detail": result.detail})]

    def _record_args(self, field: str, call: dict[str, Any], result: Result,
                     now: float) -> tuple[list[str], list[Any]]:
        usage, model, at_batch = result.usage, call["model"], result.at_batch
        assert usage is not None
        nano = result.nano
        reference = self.ledger.reference
        ref = self.prices.nano(reference, usage, batch=at_batch) if reference else None
        nocache = self.prices.nano(model, usage.uncached(), batch=at_batch)
        standard = self.prices.nano(model, usage) if at_batch else None
        return ([keys.inflight(self.swarm), keys.ledger(self.swarm),
                 keys.ledger_minute(self.swarm, int(now // 60)),
                 keys.task_meta(self.swarm, call["task"]), keys.task_costs(self.swarm)],
                [field, call["worker"], call["pool"], model, call["task"], usage.input,
                 usage.output, usage.cache_creation, usage.cache_read,
                 -1 if nano is None else nano, -1 if ref is None else ref,
                 call.get("host", "?"), keys.LEDGER_MINUTE_TTL, usage.cache_creation_1h,
                 -1 if nocache is None else nocache, "", call.get("run", ""), "1",
                 "1" if at_batch else "", -1 if standard is None else standard])

    async def from_checkpoint(self, task_id: str, cid: str) -> Result | None:
        """The result a task's checkpoint holds for ``cid`` (settled by any worker), or
        None while it has none."""
        got = await until_redis(lambda: self.redis.hmget(
            keys.task_turn(self.swarm, task_id),
            ["cid", "status", "answer", "answer_usage", "answer_nano", "failure"]),
            f"reading task {task_id}'s checkpoint")
        return result_of(cid, *got)


def result_of(cid: str, saved_cid: str | None, status: str | None, answer: str | None,
              usage: str | None, nano: str | None, failure: str | None) -> Result | None:
    """A Result from a checkpoint's fields, if they are about ``cid`` and settled."""
    if saved_cid != cid:
        return None
    if status == "answered" and answer:
        from anthropic.types import Message

        spent = int(nano or -1)
        return Result("succeeded", Message.model_validate_json(answer),
                      Usage(**json.loads(usage or "{}")), None if spent < 0 else spent)
    if status == "failed" and failure:
        said = json.loads(failure)
        return Result(str(said.get("kind", "errored")), detail=str(said.get("detail", "")))
    return None


def resolve(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)
