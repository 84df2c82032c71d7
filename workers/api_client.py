"""The worker's Claude client: one SDK client per process, built after fork and reused
by every task, with the ledger that meters each of its calls."""

from __future__ import annotations

import logging
import os
from decimal import Decimal
from typing import Any

from workers import keys
from workers.agent import Agent
from workers.api_call import Caller
from workers.lead import Lead
from workers.config import WorkerConfig
from workers.ledger import Ledger
from workers.prefix_gate import PrefixGate
from workers.pricing import PriceBook, Rates
from workers.stream_usage import retry_after

CACHE_TTL_S = {"5m": 300.0, "1h": 3600.0}

log = logging.getLogger("swarm.worker")


def make_agent(cfg: WorkerConfig, redis: Any) -> Any:
    """The agent of this process (a lead, in a lead pool): its SDK client, its ledger
    and its limits."""
    prices = price_book(cfg)
    credentials = ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"]
    if cfg.runtime == "claude-code":  # a Claude subscription's token will do for it
        credentials.append("CLAUDE_CODE_OAUTH_TOKEN")
    if not any(os.environ.get(name) for name in credentials):
        reason = "ANTHROPIC_API_KEY is not set: set it in the environment of `swarm up`"
        log.error(reason)
        if cfg.role == "lead":
            return Lead(None, cfg, redis, None, prices, missing_key=reason)
        return Agent(None, cfg.model, cfg.max_turns, cfg.max_tokens, missing_key=reason)
    import anthropic

    if not prices.knows(cfg.model):
        log.warning("no price for model %s: its tokens are counted, its cost is not",
                    cfg.model)
    ledger = Ledger(redis, cfg.swarm, cfg.worker_id, keys.consumer(cfg.worker_id,
                    cfg.generation), cfg.pool, cfg.model, prices, cfg.reference_model,
                    rpm=cfg.rate_limit.get("rpm"), tpm=cfg.rate_limit.get("tpm"))
    client = anthropic.AsyncAnthropic(max_retries=cfg.max_retries,
                                      http_client=_http_client(cfg, ledger))
    limit = None if cfg.max_cost_usd is None else int(Decimal(str(cfg.max_cost_usd)) * 10**9)
    gate = PrefixGate(redis, cfg.swarm, keys.consumer(cfg.worker_id, cfg.generation),
                      CACHE_TTL_S[cfg.cache_ttl])
    if cfg.role == "lead":
        return Lead(client, cfg, redis, Caller(client, ledger, cfg.max_tokens, gate), prices)
    if cfg.runtime == "claude-code":
        from workers.claude_code import CodeAgent

        return CodeAgent(cfg, ledger, limit)
    caller = None
    if cfg.batch is not None:
        from workers.batch_caller import BatchCaller
        from workers.batch_desk import Desk

        caller = BatchCaller(Desk(client, redis, cfg, ledger, prices), ledger, cfg.max_tokens,
                             int(cfg.batch.get("retries", 2)))
    return Agent(client, cfg.model, cfg.max_turns, cfg.max_tokens, ledger=ledger,
                 max_cost_nano=limit, cache_ttl=cfg.cache_ttl, gate=gate, caller=caller)


def price_book(cfg: WorkerConfig) -> PriceBook:
    """The price data, with the spec's overrides."""
    return PriceBook({model: Rates(**{k: Decimal(str(v)) for k, v in rates.items()})
                      for model, rates in cfg.prices.items()})


def _http_client(cfg: WorkerConfig, ledger: Any) -> Any:
    """The SDK's own client class, with room to keep every task's connection alive, and
    a hook that turns any 429 into a swarm-wide cool-down (the SDK still retries it)."""
    import anthropic
    import httpx2

    async def on_response(response: Any) -> None:
        if response.status_code == 429:
            await ledger.cool_down(retry_after(response.headers))

    return anthropic.DefaultAsyncHttpxClient(
        limits=httpx2.Limits(max_connections=max(1000, cfg.concurrency * 2),
                             max_keepalive_connections=max(100, cfg.concurrency)),
        event_hooks={"response": [on_response]},
    )
