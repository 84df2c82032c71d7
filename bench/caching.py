"""What prompt caching saves (issue 12): the same conversations billed under each way of
marking them, against the fake Messages API, which bills caching by the API's rules
(prefix hashing, breakpoints, per-model minimums, TTLs; a write is readable once the
response that made it has been sent).

    .venv/bin/python -m bench.caching                # ~4 min
    .venv/bin/python -m bench.caching --tasks 20     # quicker

The workload (the issue's): ``--tasks`` tasks of 10 tool-using turns (9 reads of a
3 KB file, then the answer), 16 at a time (2 workers x concurrency 8), on Haiku 4.5 and
Sonnet 4.5, with no shared context and with 5k tokens of it in ``context:active``. Each
strategy runs swarm's own agent loop (workers/agent.py, the real SDK) in this process,
16 tasks at once against one fake API, with the real embedded Redis for the prefix gate;
only the request marking differs:

- none: no cache marker at all;
- before (d78a631): one breakpoint on the last system block, nothing else;
- conversation: the top-level marker only (each turn reads the last one);
- swarm, no gate: swarm's marking (the shared prefix's breakpoint and the top-level
  marker), every task's first request on its own;
- swarm: the same, first requests over a cold shared prefix through the gate.

Dollars come from the fake's own count of tokens, priced with the same price data as
the ledger (genai-prices). "First writes" is what the tasks' first requests paid to
write the shared prefix (beyond the first one), as a share of the bill.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anthropic

from bench._common import LoneRedis, machine, revision, table
from tests.harness.fake_api import FakeAPI, text_reply, tool_use_reply
from workers import keys
from workers.agent import CONVERSATION_CACHE, Agent
from workers.payload import Task
from workers.prefix_gate import PrefixGate
from workers.pricing import PriceBook, Usage
from workers.prompt import system_blocks
from workers.tools import Toolbox, ToolSettings

MODELS = ("claude-haiku-4-5", "claude-sonnet-4-5")
TURNS = 10
CONCURRENCY = 16
LINE = "line {:04d}: a record of the project's history, as it was.\n"  # 61 bytes


def history(kb: float) -> str:
    """The file every turn reads: ``kb`` kilobytes of lines."""
    return "".join(LINE.format(i) for i in range(int(kb * 1000 / len(LINE.format(0)))))
CONTEXT = "The project's conventions and background, shared by every worker. " * 300


class Marking(Agent):
    """swarm's agent loop with another way of marking its requests."""

    strategy = "swarm"

    def base_request(self, tools: list[dict[str, Any]], context: str | None) -> dict[str, Any]:
        request = super().base_request(tools, context)
        if self.strategy in ("none", "before"):
            del request["cache_control"]
        if self.strategy in ("none", "conversation"):
            for block in request["system"]:
                block.pop("cache_control", None)
        return request


class Book:
    """Each call's task, usage, and whether it was the task's first."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, Usage]] = []
        self._seen: set[str] = set()

    async def begin(self, task_id: str, size: int, max_tokens: int) -> str:
        first = task_id not in self._seen
        self._seen.add(task_id)
        return f"{'first' if first else 'later'} {task_id}"

    async def settle(self, call: str, usage: Usage, miss_reason: str = "") -> int:
        kind, task_id = call.split(" ", 1)
        self.calls.append((task_id, kind == "first", usage))
        return 0

    async def withdraw(self, call: str) -> None:
        pass

    async def lose(self, call: str) -> None:
        pass


def script(request: dict[str, Any]) -> Any:
    if sum(1 for m in request["messages"] if m["role"] == "assistant") < TURNS - 1:
        return tool_use_reply("read_file", {"path": "history.txt"})
    return text_reply("The history shows the project's conventions held throughout.")


async def run(strategy: str, model: str, context: str | None, tasks: int, api: FakeAPI,
              redis: LoneRedis, work: Path) -> Book:
    book = Book()
    client = anthropic.AsyncAnthropic(base_url=api.url, api_key="bench", max_retries=2)
    aio = redis.target.aio()
    swarm = f"bench-{strategy}-{model}-{context is not None}"
    # the gate's lock is its holder's while the holder's lease lives, as a worker's does
    await aio.set(keys.lease(swarm, "bench#1"), "alive", ex=3600)
    gate = PrefixGate(aio, swarm, "bench#1", 300)
    agent = Marking(client, model, TURNS + 2, 1024, ledger=book,  # type: ignore[arg-type]
                    gate=gate if strategy == "swarm" else None)
    agent.strategy = "swarm" if strategy.startswith("swarm") else strategy
    settings = ToolSettings(write=False, edit=False, list=False, grep=False)
    running = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with running:
            box = Toolbox(work, settings)
            try:
                outcome = await agent.run(Task(f"Task {i}: summarise history.txt"), box,
                                          context, f"task-{i}")
            finally:
                box.jail.close()
            assert outcome.status == "done", outcome.error

    try:
        await asyncio.gather(*(one(i) for i in range(tasks)))
    finally:
        await client.close()
        await aio.aclose()
    return book


def figures(book: Book, model: str, prefix_tokens: int, minimum: int) -> dict[str, float]:
    prices = PriceBook()
    total = Usage()
    for _, _, used in book.calls:
        total.add(used)
    nano = prices.nano(model, total) or 0
    side = total.input + total.cache_creation + total.cache_read
    writes = [u for _, first, u in book.calls if first and u.cache_creation >= prefix_tokens]
    extra = max(0, len(writes) - 1)  # every write of the shared prefix after the first
    write_nano = prices.nano(model, Usage(cache_creation=prefix_tokens)) or 0
    return {"usd": nano / 1e9, "hit": total.cache_read / side if side else 0.0,
            "first_writes": extra * write_nano / nano if nano else 0.0,
            "prefix_writes": float(len(writes)),
            "bound": best_hit(book, minimum, prefix_tokens)}


def best_hit(book: Book, minimum: int, prefix: int) -> float:
    """The most any marking could read of these conversations: a turn can read at most
    the whole turn before it, or the shared prefix another task wrote, and only a prefix
    of at least the model's minimum."""
    turns: dict[str, list[int]] = {}
    for task_id, _, used in book.calls:
        turns.setdefault(task_id, []).append(used.input + used.cache_creation + used.cache_read)
    shared = prefix if prefix >= minimum else 0
    readable = -shared  # the first task's first turn writes the shared prefix
    for sizes in turns.values():
        previous = [0, *sizes[:-1]]
        readable += sum(max(p if p >= minimum else 0, shared) for p in previous)
    side = sum(sum(sizes) for sizes in turns.values())
    return max(0, readable) / side if side else 0.0


def prefix_size(context: str | None) -> int:
    """Tokens of the shared prefix as the fake counts them (tools, then system)."""
    from tests.harness.fake_api import count_input_tokens

    tools = Toolbox(".", ToolSettings(write=False, edit=False, list=False, grep=False))
    try:
        request = {"model": "m", "tools": tools.definitions(),
                   "system": system_blocks(context), "messages": []}
    finally:
        tools.jail.close()
    return count_input_tokens(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--file-kb", type=float, default=3.0,
                        help="size of the tool result each turn reads")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--latency", type=float, default=0.3,
                        help="seconds per response: the first wave's requests overlap")
    args = parser.parse_args()
    strategies = ["none", "before", "conversation", "swarm, no gate", "swarm"]
    work = Path(tempfile.mkdtemp(prefix="bench-caching-"))
    (work / "history.txt").write_text(history(args.file_kb))
    redis = LoneRedis(work / "redis")
    rows = []
    try:
        for model in args.models.split(","):
            for context in (None, CONTEXT):
                prefix = prefix_size(context)
                results = {}
                for strategy in strategies:
                    with FakeAPI(script=script, latency=args.latency) as api:
                        book = asyncio.run(run(strategy, model, context, args.tasks, api,
                                               redis, work))
                        minimum = api.cache_min(model)
                    results[strategy] = figures(book, model, prefix, minimum)
                best = min(r["usd"] for r in results.values())
                for strategy, got in results.items():
                    rows.append([model, "5k" if context else "none", strategy,
                                 f"{got['usd'] / args.tasks:.4f}",
                                 f"{got['usd'] / best:.2f}x", f"{got['hit']:.2f}",
                                 f"{got['bound']:.2f}",
                                 f"{got['first_writes'] * 100:.2f}%",
                                 f"{got['prefix_writes']:.0f}"])
    finally:
        redis.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"# caching: {args.tasks} tasks x {TURNS} turns reading {args.file_kb:g} KB each, "
          f"{CONCURRENCY} at once, fake API latency {args.latency:g} s, at {revision()}\n"
          f"{machine()}\n")
    print(table(["model", "shared context", "strategy", "$/task", "vs best", "cache hit",
                 "most any marking could hit", "extra first writes / bill",
                 "shared prefix written"], rows))
    print(f"\n(conversation marker: {CONVERSATION_CACHE}; the shared prefix's breakpoint "
          "has the pool's cache_ttl, 5m here)")


if __name__ == "__main__":
    main()
