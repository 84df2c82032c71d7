"""Findings lookup and the librarian (issue 14): what a search costs over 10k and 100k
findings, and what the librarian's cached archive saves at 50 concurrent askers.

    .venv/bin/python -m bench.lookup_librarian                 # ~2.5 min
    .venv/bin/python -m bench.lookup_librarian --findings 10000,20000 --queries 20

1. Search: the embedded redis-server on its own, one per size (queried in rotation, so
   a shared machine's load falls on every size alike), filled by the real FINISH script
   with findings (a task of ~100 characters, a result of ~1,500 cut from the project's
   docs) and their search documents. ``--queries`` queries of 3 words matching many
   findings, a few (8) and none, through ``search_sync`` and the async ``Lookup.search``;
   Redis's own time in SEARCH (SLOWLOG); at the largest size, SEARCH over the capped
   list and over a fresh copy of its documents, alternately. Memory: used_memory, and
   MEMORY USAGE of the documents list and of findings.
2. The librarian: a real swarm against the in-process fake Messages API; a librarian on
   Haiku 4.5 (1 worker, concurrency 50, an archive of ``--archive-kb`` KB) and a pool
   ``a`` (2 workers x concurrency 25) whose 50 tasks each ask it one question at once:
   50 distinct questions with the cache cold, 50 more with it warm, 50 identical ones.
   Then the same 50 distinct requests (``archive_blocks``) from this process with the
   real SDK, at once: without ``cache_control``, and with it but no prefix gate.
   Dollars: the fake's bill for Haiku, priced with workers.pricing.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import shutil
import statistics
from collections import Counter
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic

from bench._common import LoneRedis, MachineLoad, machine, pct, revision, sigterm_exits, table
from launcher.client import Swarm
from tests.harness import lead_script as ls
from tests.harness.fake_api import FakeAPI, Reply, count_input_tokens, text_reply, tool_use_reply
from tests.harness.procs import ROOT
from tests.harness.swarm import SwarmRun, api_env, pool
from workers import keys, scripts
from workers.findings_index import SCAN_LIMIT, SEARCH, Lookup, document, search_sync
from workers.ledger_format import field
from workers.librarian import archive_blocks
from workers.pricing import PriceBook, Usage

SWARM, HAIKU, ASKERS, ASK = "benchlookup", "claude-haiku-4-5", 50, "ask the librarian: "
CORPUS = ("README.md", "docs/benchmarks.md", "docs/protocol.md")
TOPICS = ("ledger", "heartbeat", "prefix gate", "run budget", "escalation", "archive",
          "dead letters", "worker lease", "cost report", "tool jail", "findings index")

# --- 1. search over many findings ----------------------------------------------------------


def corpus_words() -> list[str]:
    return " ".join((ROOT / name).read_text() for name in CORPUS).split()


def common_words(words: list[str]) -> list[str]:
    clean = (w.lower().strip(".,:;()`*|[]\"'") for w in words)
    return [w for w, _ in Counter(w for w in clean if w.isalpha() and len(w) >= 5).most_common(60)]


def a_finding(i: int, words: list[str], rng: random.Random) -> dict[str, Any]:
    start = rng.randrange(len(words) - 400)
    result = " ".join(words[start:start + 400])[:1500].rsplit(" ", 1)[0]
    picks = rng.sample(words[:2000], 3)
    task = (f"Find out how {picks[0]} {picks[1]} touches {picks[2]} in module "
            f"mod_{i % 500:03d} (batch-{i // 4:05d}), and report it briefly.")
    tokens = rng.randrange(2000, 9000)  # the fields of TaskRunner.finding
    return {"finding_id": f"finding_{i:016x}", "worker_id": f"a-{i % 4 + 1}#1",
            "timestamp": "2025-01-01T00:00:00+00:00", "task": task, "result": result,
            "files_changed": [], "citations": [], "tokens_used": tokens, "cost": tokens / 1e6,
            "model": HAIKU, "status": "done", "error": None, "task_id": f"task_{i:016x}",
            "pool": "a", "generation": 1, "turns": 2, "stop_reason": "end_turn",
            "truncated": False, "api_calls": 2, "tool_calls": 1,
            "usage": {"input": tokens - 300, "output": 300}, "cost_nano_usd": tokens * 1000}


def fill(r: Any, n: int, words: list[str], rng: random.Random) -> None:
    """``n`` findings recorded the way FINISH records them."""
    sha, pipe = r.script_load(scripts.FINISH), r.pipeline(transaction=False)
    for i in range(n):
        f = a_finding(i, words, rng)
        k, a = scripts.finish_args(SWARM, "a", f["task_id"], "0-1", f["finding_id"],
                                   json.dumps(f), "done", "", "", time.time(),
                                   document=document(f))
        pipe.evalsha(sha, len(k), *k, *a)
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()


def queries(n_findings: int, common: list[str], count: int,
            rng: random.Random) -> dict[str, list[str]]:
    """Queries of 3 words: common ones, two batch tags of the newest (scanned) findings
    and a word found nowhere, and words found nowhere."""
    newest = range(max(0, n_findings - SCAN_LIMIT) // 4 + 1, n_findings // 4)
    return {"many": [" ".join(rng.sample(common, 3)) for _ in range(count)],
            "few (8)": [" ".join(f"batch-{b:05d}" for b in rng.sample(newest, 2))
                        + f" unobtainium{j}" for j in range(count)],
            "none": [f"zq{j}xv unobtainium{j} nonesuchword{j}" for j in range(count)]}


def evalsha_us(r: Any, key: str | None = None) -> list[float]:
    """SEARCH's durations in the slow log (of the documents list ``key``), in µs."""
    got = []
    for entry in r.slowlog_get(4096):
        command = entry["command"]
        command = (command.decode() if isinstance(command, bytes) else command).split()
        if command[0].upper() == "EVALSHA" and key in (None, command[3]):
            got.append(float(entry["duration"]))
    return got


def fresh_copy_row(r: Any, n: int, count: int) -> list[Any]:
    """The SEARCH over the capped list against a fresh twin of its documents (written
    in one go, not churned by LPUSH + LTRIM), alternately: is the list's history felt?"""
    docs, twin = keys.finding_docs(SWARM), "bench:docs:fresh-twin"
    for start in range(0, int(r.llen(docs)), 1000):
        r.rpush(twin, *r.lrange(docs, start, start + 999))
    search = r.register_script(SEARCH)
    r.slowlog_reset()
    for j in range(count):
        for key in (docs, twin):
            search(keys=[key], args=[SCAN_LIMIT, 10, f"zq{j}xv", f"unobtainium{j}",
                                     f"nonesuchword{j}"])
    real, fresh = evalsha_us(r, docs), evalsha_us(r, twin)
    r.delete(twin)
    return [f"{n:,}", "none: capped list / a fresh copy, alternately", "0", "-", "-",
            f"{statistics.median(real) / 1e3:.1f} / {statistics.median(fresh) / 1e3:.1f}"
            f" (x{statistics.median(real) / statistics.median(fresh):.2f})"]


async def async_times(servers: list[LoneRedis], texts: list[list[str]]
                      ) -> list[tuple[list[float], list[int]]]:
    """``Lookup.search`` of each server's texts, the servers in rotation."""
    aios = [s.target.aio(socket_timeout=10) for s in servers]
    lookups = [Lookup(aio, SWARM) for aio in aios]  # its script registered once, as a worker's
    got: list[tuple[list[float], list[int]]] = [([], []) for _ in servers]
    try:
        for j in range(len(texts[0])):
            for lookup, mine, asked in zip(lookups, got, texts):
                t0 = time.perf_counter()
                hits, _ = await lookup.search(asked[j])
                mine[0].append(time.perf_counter() - t0)
                mine[1].append(len(hits))
    finally:
        for aio in aios:
            await aio.aclose()
    return got


def search_all(servers: list[LoneRedis], clients: list[Any], sizes: list[int],
               common: list[str], count: int) -> list[list[Any]]:
    """Every kind of query at every size, the sizes in rotation (one Redis each), so
    that the shared machine's changing load falls on all of them alike."""
    texts = [queries(n, common, count, random.Random(1)) for n in sizes]
    rows: list[list[list[Any]]] = [[] for _ in sizes]
    for kind in texts[0]:
        sync_t: list[list[float]] = [[] for _ in sizes]
        found: list[list[int]] = [[] for _ in sizes]
        for r in clients:
            r.slowlog_reset()
        for j in range(count):
            for r, q, times, hits in zip(clients, texts, sync_t, found):
                t0 = time.perf_counter()
                hits.append(len(search_sync(r, SWARM, q[kind][j])))
                times.append(time.perf_counter() - t0)
        by_async = asyncio.run(async_times(servers, [q[kind] for q in texts]))
        for i, (n, r, (aio_t, aio_found)) in enumerate(zip(sizes, clients, by_async)):
            if aio_found != found[i]:
                raise RuntimeError(f"{kind}: sync and async searches disagree")
            blocked = evalsha_us(r)
            rows[i].append([f"{n:,}", kind, f"{statistics.median(found[i]):.0f}",
                            ms2(sync_t[i], 1e3), ms2(aio_t, 1e3),
                            f"{ms2(blocked, 1e-3)} / {max(blocked) / 1e3:.1f}"])
    return [row for per_size in rows for row in per_size]


def ms2(values: list[float], scale: float) -> str:
    """Median / p95, in ms (from seconds: ``scale`` 1e3; from µs: 1e-3)."""
    return f"{statistics.median(values) * scale:.1f} / {pct(values, 95) * scale:.1f}"


def memory_row(r: Any, n: int, base: int, rng: random.Random) -> list[Any]:
    used = int(r.info("memory")["used_memory"])
    docs = keys.finding_docs(SWARM)
    docs_bytes, docs_len = int(r.memory_usage(docs, samples=0) or 0), int(r.llen(docs))
    sample = [rng.randrange(n) for _ in range(300)]
    finding = statistics.mean(int(r.memory_usage(keys.finding(f"finding_{i:016x}")) or 0)
                              for i in sample)
    other = statistics.mean(
        int(r.memory_usage(keys.task_meta(SWARM, f"task_{i:016x}")) or 0)
        + int(r.memory_usage(keys.task_result(f"task_{i:016x}")) or 0) for i in sample)
    return [f"{n:,}", f"{(used - base) / 2**20:.1f} MiB", f"{(used - base) / n:,.0f}",
            f"{finding:,.0f}", f"{docs_len:,} = {docs_bytes / 2**20:.1f} MiB "
            f"({docs_bytes / max(1, docs_len):,.0f} each)", f"{other:,.0f}"]


def bench_search(sizes: list[int], count: int) -> tuple[list[list[Any]], list[list[Any]]]:
    rng, words = random.Random(14), corpus_words()
    common, folder = common_words(words), Path(tempfile.mkdtemp(prefix="bench-lookup-"))
    servers: list[LoneRedis] = []
    clients: list[Any] = []
    memory: list[list[Any]] = []  # (one Redis per size, as each holds its own findings)
    try:
        for n in sizes:
            servers.append(LoneRedis(folder / str(n)))
            clients.append(r := servers[-1].client())
            r.config_set("appendonly", "no")  # no AOF of the fill (searches write none)
            for name, value in (("slowlog-log-slower-than", 0), ("slowlog-max-len", 4096)):
                r.config_set(name, value)
            base, t0 = int(r.info("memory")["used_memory"]), time.perf_counter()
            fill(r, n, words, rng)
            print(f"  {n:,} findings recorded in {time.perf_counter() - t0:.1f} s", flush=True)
            memory.append(memory_row(r, n, base, rng))
        searches = search_all(servers, clients, sizes, common, count)
        searches.append(fresh_copy_row(clients[-1], sizes[-1], count))
    finally:
        for r in clients:
            r.close()
        for server in servers:
            server.close()
        shutil.rmtree(folder, ignore_errors=True)
    return searches, memory


# --- 2. the librarian --------------------------------------------------------------------


def archive_text(kb: float) -> str:
    rng, text, n = random.Random(7), "", 0
    while len(text) < kb * 1000:
        topic, other = rng.sample(TOPICS, 2)
        text += (f"Decision {n:04d}: the {topic} keeps to integer nano-dollars and never "
                 f"waits on the {other}; reviewed in week {rng.randrange(1, 53)}.\n")
        n += 1
    return text


def question(n: int) -> str:
    return f"What does decision {n:04d} say about the {TOPICS[n % len(TOPICS)]}?"


def is_librarian(req: dict[str, Any]) -> bool:
    return "You are the swarm's librarian" in ls.system_text(req)


class Script:
    """The fake's answers (on its one thread); notes when each asker's first and second
    turns arrived, and each question's librarian call."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.back: dict[str, float] = {}
        self.asked: dict[str, float] = {}

    def __call__(self, req: dict[str, Any]) -> Reply:
        now, task = time.monotonic(), ls.task_text(req)
        if is_librarian(req):
            self.asked[task] = now
            return text_reply(f"The archive answers {task[:60]!r}: the decision keeps money "
                              "in integer nano-dollars, as its line says, quoted whole.")
        if ASK not in task:  # the warm-up
            return text_reply("ready")
        (self.first if len(req["messages"]) == 1 else self.back)[task] = now
        if len(req["messages"]) == 1:
            return tool_use_reply("ask_librarian", {"question": task.split(ASK, 1)[1]})
        return text_reply("librarian said: " + ls.last_shown(req)[:300])


def haiku_bill(fake: FakeAPI, since: dict[str, int] | None = None) -> dict[str, int]:
    now = fake.billed(detail=True)["by_model"].get(HAIKU, {})
    return {k: v - (since or {}).get(k, 0) for k, v in now.items()}


def as_usage(b: dict[str, int]) -> Usage:
    return Usage(b.get("input_tokens", 0), b.get("output_tokens", 0),
                 b.get("cache_creation_input_tokens", 0), b.get("cache_read_input_tokens", 0),
                 b.get("ephemeral_1h_input_tokens", 0))


def swarm_round(swarm: SwarmRun, fake: FakeAPI, script: Script, tasks: list[str],
                latency: float) -> tuple[dict[str, int], list[float], list[float]]:
    client, before = Swarm(swarm.name, swarm.redis()), haiku_bill(fake)
    ids = client.submit_many(tasks, pool="a")
    findings = [client.wait(i, timeout=120) for i in ids]
    bad = [f for f in findings if f["status"] != "done"
           or not str(f["result"]).startswith("librarian said: The archive answers")]
    if bad:
        raise RuntimeError(f"{len(bad)} askers got no answer, e.g. {bad[0]['result']!r}")
    waits = [script.back[t] - script.first[t] - latency for t in tasks]
    # question: a latency after the first turn came; answer: a latency after its call came
    answered = [script.asked[t.split(ASK, 1)[1]] - script.first[t] for t in tasks]
    return haiku_bill(fake, before), waits, answered


async def direct(fake: FakeAPI, requests: list[dict[str, Any]]) -> dict[str, int]:
    """Send ``requests`` at once from here; returns the bill before them."""
    client, before = anthropic.AsyncAnthropic(base_url=fake.url, api_key="bench"), haiku_bill(fake)
    try:
        await asyncio.gather(*(client.messages.create(**r) for r in requests))
    finally:
        await client.close()
    return before


def bench_librarian(latency: float, kb: float) -> tuple[list[list[Any]], dict[str, Any]]:
    work, text = Path(tempfile.mkdtemp(prefix="bench-librarian-")), archive_text(kb)
    (work / "archive").mkdir()
    (work / "archive" / "decisions.md").write_text(text)
    blocks = archive_blocks(f"=== archive/decisions.md ===\n{text}")
    prefix = count_input_tokens({"system": blocks, "messages": []}) - 1
    fake = FakeAPI(latency=latency, script=(script := Script())).start()
    swarm: SwarmRun | None = None
    got: dict[str, tuple[dict[str, int], list[float], list[float]]] = {}
    try:
        spec = (pool("a", workers=2, expiry="5s", interval="500ms",
                     extra="concurrency: 25\nmax_tokens: 1024\n")
                + pool("lib", workers=1, model=HAIKU, expiry="5s", interval="500ms",
                       extra=f"role: librarian\nworkdir: {work}\n"
                       "archive: ['archive/*.md']\nconcurrency: 50\n"))
        swarm = SwarmRun.in_temp_folder("benchlibrarian", spec, env=api_env(fake))
        swarm.start(workers=3)
        # The askers' pool has a prefix gate too (its first wave waits for one answer): a
        # task that asks nothing opens it, so that the 50 questions come at once.
        api = Swarm(swarm.name, swarm.redis())
        api.wait(api.submit("warm-up: say you are ready", pool="a"), timeout=60)
        rounds = {"distinct, cache cold": [f"q{n} {ASK}{question(n)}" for n in range(ASKERS)],
                  "distinct, cache warm": [f"q{n} {ASK}{question(n)}"
                                           for n in range(ASKERS, 2 * ASKERS)],
                  "identical": [f"same {n} {ASK}How is money kept?" for n in range(ASKERS)]}
        for name, tasks in rounds.items():
            got[name] = swarm_round(swarm, fake, script, tasks, latency)
            print(f"  librarian, {name}: {got[name][0].get('responses', 0)} call(s)",
                  flush=True)
        sent = [r for r in fake.received() if is_librarian(r)][0]
        if sent["system"] != blocks:
            raise RuntimeError("the librarian's system blocks are not archive_blocks(archive)")
        ledger_nano = int(swarm.redis().hget(keys.ledger(swarm.name),
                                             field("pool", "lib", "nano")) or 0)
        requests = [{"model": HAIKU, "max_tokens": sent["max_tokens"], "system": blocks,
                     "messages": [{"role": "user", "content": question(n)}]}
                    for n in range(ASKERS)]
        bare = copy.deepcopy(requests)
        for block in (b for r in bare for b in r["system"]):
            block.pop("cache_control", None)
        for name, batch in (("uncached (no cache_control), in-process", bare),
                            ("cached, no prefix gate, cold, in-process", requests)):
            fake.clear_cache()
            before = asyncio.run(direct(fake, batch))
            got[name] = (haiku_bill(fake, before), [], [])
    finally:
        if swarm is not None:
            swarm.stop()
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)
    prices = PriceBook()
    uncached = prices.nano(HAIKU, as_usage(got["uncached (no cache_control), in-process"][0]))
    rows = []
    for name, (bill, waits, answered) in got.items():
        nano = prices.nano(HAIKU, as_usage(bill)) or 0
        rows.append([name, bill.get("responses", 0),
                     f"{bill.get('ephemeral_1h_input_tokens', 0) / prefix:.1f}",
                     f"{bill.get('cache_read_input_tokens', 0) / prefix:.1f}",
                     f"{nano / 1e9:.4f}", f"{nano / 1e9 / ASKERS:.5f}",
                     f"{nano / (uncached or 1):.3f}x"] + [
                     f"{statistics.median(v):.2f} / {pct(v, 95):.2f} / {max(v):.2f}"
                     if v else "-" for v in (answered, waits)])
    return rows, {"prefix": prefix, "kb": len(text) / 1000, "ledger_usd": ledger_nano / 1e9,
                  "swarm_usd": sum((prices.nano(HAIKU, as_usage(got[n][0])) or 0)
                                   for n in list(got)[:3]) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", default="10000,20000,100000", help="sizes (a Redis each)")
    parser.add_argument("--queries", type=int, default=50, help="per kind of query")
    parser.add_argument("--latency", type=float, default=1.0, help="of a fake API response, s")
    parser.add_argument("--archive-kb", type=float, default=80.0)
    parser.add_argument("--skip", choices=("search", "librarian"))
    args = parser.parse_args()
    sigterm_exits()
    load = MachineLoad()
    sizes = sorted(int(s) for s in args.findings.split(","))
    searches, memory = bench_search(sizes, args.queries) if args.skip != "search" else ([], [])
    lib_rows, lib = (bench_librarian(args.latency, args.archive_kb)
                     if args.skip != "librarian" else ([], {}))
    print(f"\n# lookup_librarian at {revision()}\n{machine()}\n{load.report()}\n")
    if searches:
        print(f"## Search ({args.queries} queries of each kind; median / p95 in ms; "
              f"SCAN_LIMIT {SCAN_LIMIT:,})\n")
        print(table(["findings", "query", "hits", "search_sync", "Lookup.search (async)",
                     "Redis in SEARCH (median / p95 / max)"], searches))
        print("\n" + table(["findings", "used_memory added", "bytes per finding, all",
                            "finding JSON (MEMORY USAGE, 300 sampled)", "search documents",
                            "task meta + result marker (FINISH)"], memory))
    if lib_rows:
        print(f"\n## The librarian: {ASKERS} askers at once, archive {lib['kb']:.0f} KB = "
              f"{lib['prefix']:,} tokens with the role, {HAIKU}, fake latency "
              f"{args.latency:g} s\n")
        print(table(["round", "API calls", "archive writes", "archive reads", "$ all",
                     "$ per answer", "vs uncached", "answered after, s (median / p95 / max)",
                     "asker's wait, s (same)"], lib_rows))
        print(f"\n(swarm rounds: ${lib['swarm_usd']:.4f} by the fake's bill, "
              f"${lib['ledger_usd']:.4f} by the ledger's lib pool. Answered after: by the "
              "fake's clock; asker's wait: its question turn answered to its next turn sent, "
              "less one response's latency.)")


if __name__ == "__main__":
    main()
