"""The cost ledger, worker side: every API call is registered before it is sent and
settled the moment its response arrives, in one atomic script, for the worker, its pool,
the model and the task. A call that failed is withdrawn (not billed); a call whose worker
dies stays registered, and the supervisor counts it as lost in flight."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from workers import keys, ledger_scripts
from workers.redis_retry import until_redis
from workers.pricing import PriceBook, Usage, family


@dataclass
class Call:
    field: str
    task_id: str
    bound: int
    tokens: float  # what the token bucket was charged before the call
    run: str = ""  # the run the task is part of


class Ledger:
    def __init__(self, redis: Any, swarm: str, worker_id: str, consumer: str, pool: str,
                 model: str, prices: PriceBook, reference_model: str | None,
                 rpm: int | None = None, tpm: int | None = None) -> None:
        self.redis = redis
        self.swarm = swarm
        self.worker_id = worker_id
        self.host = keys.split_worker(worker_id)[1] if worker_id.count("/") == 2 else "?"
        self.consumer = consumer
        self.pool = pool
        self.model = model
        self.prices = prices
        self.reference = reference_model
        self._record_sha = ""
        self._tried: dict[str, bool] = {}
        self._lose = redis.register_script(ledger_scripts.LOSE)
        self._acquire = redis.register_script(ledger_scripts.ACQUIRE)
        self._cool_down = redis.register_script(ledger_scripts.COOL_DOWN)
        self.rpm, self.tpm = rpm or 0, tpm or 0
        self._rate = keys.rate(swarm, model)
        self._cooldown = keys.cooldown(swarm, model)
        self.waited = 0.0  # seconds spent held back by the limits
        self._inflight = keys.inflight(swarm)
        self._seed_cost = keys.seed_cost(family(model))

    async def begin(self, task_id: str, request_chars: int, max_tokens: int,
                    run: str = "", field: str = "", batch: bool = False) -> Call:
        """Wait until the swarm-wide limits admit the call, and register it in flight
        (one script, one round trip). The input can be no more tokens than it has
        characters, so the bound holds whatever the tokenizer does. A batch request's
        bound is at batch prices."""
        field = field or f"{self.consumer}|{uuid.uuid4().hex[:12]}"
        bound = self.prices.bound_nano(self.model, request_chars, max_tokens, batch=batch)
        tokens: float = request_chars // 4 + max_tokens  # charged now, corrected on settle
        if self.tpm:  # ACQUIRE charges at most the bucket's size (a minute's worth / 60)
            tokens = min(tokens, max(1, self.tpm / 60))
        entry = json.dumps({"worker": self.worker_id, "host": self.host, "pool": self.pool,
                            "model": self.model, "task": task_id, "bound": bound,
                            "run": run, "ts": round(time.time(), 3)})
        while True:
            wait_ms = await until_redis(lambda: self._acquire(
                keys=[self._rate, self._cooldown, self._inflight],
                args=[self.rpm, self.tpm, tokens, field, entry]), f"admitting a call of {task_id}")
            if not wait_ms:
                return Call(field, task_id, bound, tokens, run)
            self.waited += wait_ms / 1000
            await asyncio.sleep(min(wait_ms, 60_000) / 1000)

    async def cool_down(self, seconds: float) -> None:
        """A 429 came back: hold the whole swarm back from this model for a while."""
        await self._cool_down(keys=[self._cooldown], args=[max(1, int(seconds * 1000))])

    async def settle(self, call: Call, usage: Usage, miss_reason: str = "") -> int | None:
        """Record a response's usage (and, if the API said why its cache missed, the
        reason); returns its cost in nano-dollars (None if the model has no price)."""
        nano = self.prices.nano(self.model, usage)
        ref = self.prices.nano(self.reference, usage) if self.reference else None
        nocache = self.prices.nano(self.model, usage.uncached())
        now = time.time()
        record_keys = [self._inflight, keys.ledger(self.swarm),
                       keys.ledger_minute(self.swarm, int(now // 60)),
                       keys.task_meta(self.swarm, call.task_id), keys.task_costs(self.swarm)]
        record_args = [call.field, self.worker_id, self.pool, self.model, call.task_id,
                       usage.input, usage.output, usage.cache_creation, usage.cache_read,
                       -1 if nano is None else nano, -1 if ref is None else ref, self.host,
                       keys.LEDGER_MINUTE_TTL, usage.cache_creation_1h,
                       -1 if nocache is None else nocache, _safe(miss_reason), call.run,
                       "", "", -1]
        await until_redis(lambda: self._record_once(call, record_keys, record_args, nano,
                                                    call.tokens - usage.total),
                          f"recording a call of task {call.task_id}")
        return nano

    async def _record_once(self, call: Call, record_keys: list[Any], record_args: list[Any],
                           nano: int | None, overcharged: float) -> None:
        """MULTI: the RECORD script, the seed's float counter and, with a tokens-per-minute
        limit, the limiter's correction (the estimate charged at admission minus what the
        call used). Safe to repeat: if the call is no longer in flight, an earlier try was
        recorded and its reply lost."""
        if self._tried.get(call.field) and not await self.redis.hexists(self._inflight, call.field):
            return
        self._tried[call.field] = True
        if not self._record_sha:
            self._record_sha = await self.redis.script_load(ledger_scripts.RECORD)
        pipe = self.redis.pipeline(transaction=True)
        pipe.evalsha(self._record_sha, len(record_keys), *record_keys, *record_args)
        if nano:
            pipe.incrbyfloat(self._seed_cost, nano / 1e9)
        if self.tpm:
            pipe.hincrbyfloat(self._rate, "tok", overcharged)
        try:
            await pipe.execute()
        except redis.ResponseError as exc:
            if not isinstance(exc, redis.exceptions.NoScriptError):
                raise
            self._record_sha = ""  # Redis restarted and forgot its scripts: load, retry
            raise redis.ConnectionError("scripts were flushed") from exc
        self._tried.pop(call.field, None)

    async def withdraw(self, call: Call) -> None:
        """The call failed with an error response: the API bills nothing for it."""
        await until_redis(lambda: self.redis.hdel(self._inflight, call.field), "withdrawing a call")

    async def lose(self, call: Call) -> None:
        """The call's fate is unknown (cut off, timed out): count it as lost in flight,
        with its upper bound, rather than pretend it cost nothing."""
        k, a = ledger_scripts.lose_args(self.swarm, call.field, time.time())
        await until_redis(lambda: self._lose(keys=k, args=a), "counting a call lost")


def _safe(reason: str) -> str:
    """A cache miss reason as a counter's name: the API's type, letters and '_' only."""
    return "".join(c for c in reason if c.isalnum() or c == "_")[:40]
