"""`swarm run` against one agent (issue 13): a breadth workload of independent questions
over a fixture repository, answered by a lead and its workers, and by one agent alone.

    .venv/bin/python -m bench.lead_breadth                 # ~1.5 min
    .venv/bin/python -m bench.lead_breadth --rounds 1 --latency 0.5

The fixture: ``--questions`` small files (``modules/mod_XX.py``, each setting a distinct
``VERSION``) and one question per file ("What does modules/mod_07.py set VERSION to?").
Every request goes to one in-process fake Messages API with a fixed latency per
response, which answers by the request's content only (never the order of calls):

- swarm run: a real swarm (supervisor, forked workers, embedded Redis, the real SDK):
  a lead pool on Sonnet 4.6 delegating to a pool ``haiku`` (2 worker processes x
  concurrency 8). The lead hands out every question at once, waits for findings until
  it has been shown all of them, then writes a synthesis citing every finding id. A
  worker reads the file its task names (one ``read_file``), then answers with the value.
- one agent: swarm's own agent loop (workers/agent.py, the real SDK) in this process,
  on the lead's model, with every question in one task: one ``read_file`` per turn for
  the next file not yet read, then the answer: questions + 1 calls, one after another.

The fake's prompt cache is emptied before each measurement, so each starts cold. The
rounds alternate the two; the figures are medians. Tokens and dollars: the swarm's
ledger (the lead pool's counters, the run's), and the fake's own bill for the one agent,
priced with the same price data (genai-prices).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic

from bench._common import MachineLoad, machine, revision, sigterm_exits, table
from launcher.client import Swarm
from tests.harness import lead_script as ls
from tests.harness.fake_api import FakeAPI, Reply, text_reply, tool_use_reply
from tests.harness.swarm import SwarmRun, api_env, pool
from workers import keys
from workers.agent import Agent
from workers.ledger_format import field
from workers.payload import Task
from workers.pricing import PriceBook, Usage
from workers.tools import Toolbox, ToolSettings

LEAD_MODEL = "claude-sonnet-4-6"
WORKER_MODEL = "claude-haiku-4-5"
LEAD_POOL, WORKER_POOL = "lead", "haiku"
WORKERS, CONCURRENCY = 2, 8
PATH = re.compile(r"modules/mod_\d+\.py")
FACT = re.compile(r'"""(modules/mod_\d+\.py): fixture module.*?^VERSION = "([^"]+)"',
                  re.S | re.M)
ANSWERED = re.compile(r'(modules/mod_\d+\.py) sets VERSION to "([^"]+)"')
SPEND = ("calls", "input", "output", "cache_write", "cache_write_1h", "cache_read", "nano")
NOT_IN_FLIGHT = "No task of this run is in flight"


# --- the fixture -----------------------------------------------------------------------


def version(i: int) -> str:
    return f"1.{i:02d}.{(i * 7) % 10}"


def fixture(folder: Path, count: int) -> list[str]:
    """``count`` modules, each with a distinct VERSION; returns their paths."""
    paths = []
    for i in range(count):
        path = f"modules/mod_{i:02d}.py"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(
            f'"""{path}: fixture module {i:02d} of {count}, one handler of the pipeline."""\n\n'
            f'VERSION = "{version(i)}"\n\n\n'
            f"def handle_{i:02d}(payload: dict) -> dict:\n"
            f'    """Handle a payload of kind {i}: check its fields and stamp it."""\n'
            f"    if payload.get('kind') != {i}:\n"
            f"        raise ValueError('not a kind-{i} payload')\n"
            f"    return {{**payload, 'handled_by': 'mod_{i:02d}', 'version': VERSION}}\n")
        paths.append(path)
    return paths


def questions_text(paths: list[str]) -> str:
    """The goal of the run and the one agent's task: every question, numbered."""
    return (f"Answer these {len(paths)} questions about the repository, one line each:\n"
            + "\n".join(f"{n}. What does {p} set VERSION to?" for n, p in
                        enumerate(paths, 1)))


# --- the fake API's script: by content only ----------------------------------------------


def script(req: dict[str, Any]) -> Reply:
    task = ls.task_text(req)
    asked = list(dict.fromkeys(PATH.findall(task)))
    if ls.is_lead(req):
        return lead_turn(req, asked)
    if len(asked) > 1:
        return one_agent_turn(req, asked)
    return worker_turn(req, asked)


def worker_turn(req: dict[str, Any], asked: list[str]) -> Reply:
    if len(req["messages"]) == 1:
        return tool_use_reply("read_file", {"path": asked[0] if asked else "modules"})
    facts = dict(FACT.findall(ls.shown(req)))
    if not facts:
        return text_reply("I could not read the file.")
    path, value = next(iter(facts.items()))
    return text_reply(f'{path} sets VERSION to "{value}".')


def lead_turn(req: dict[str, Any], asked: list[str]) -> Reply:
    if len(req["messages"]) == 1:
        return ls.hand_out(*[(f"What does {p} set VERSION to?", "the value, one line")
                             for p in asked])
    seen, last = ls.findings_shown(req), ls.last_shown(req)
    if len(seen) < len(asked) and NOT_IN_FLIGHT not in last and "LIMIT REACHED" not in last:
        return ls.wait()
    values = dict(ANSWERED.findall(ls.shown(req)))
    lines = "; ".join(f"{p}: {values.get(p, 'unknown')}" for p in asked)
    return ls.synthesis(f"VERSION of each module: {lines}. Sources:", list(seen))


def one_agent_turn(req: dict[str, Any], asked: list[str]) -> Reply:
    facts = dict(FACT.findall(ls.shown(req)))
    left = [p for p in asked if p not in facts]
    if left:
        return tool_use_reply("read_file", {"path": left[0]})
    return text_reply("\n".join(f'{n}. {p} sets VERSION to "{facts[p]}".'
                                for n, p in enumerate(asked, 1)))


# --- the two sides ---------------------------------------------------------------------


def spec_pools(work: Path, expiry: str) -> str:
    workdir = f"workdir: {work}\n"
    return (pool(WORKER_POOL, workers=WORKERS, model=WORKER_MODEL, expiry=expiry,
                 interval="500ms", extra=f"concurrency: {CONCURRENCY}\nmax_tokens: 1024\n"
                 f"max_turns: 6\n{workdir}")
            + pool(LEAD_POOL, workers=1, model=LEAD_MODEL, expiry=expiry, interval="500ms",
                   extra=f"role: lead\ndelegates_to: [{WORKER_POOL}]\n{workdir}"
                   "run: {budget_usd: 5, max_tasks: 50, max_in_flight: 20}\n"))


def ledger(swarm: SwarmRun, dim: str, key: str) -> dict[str, int]:
    got = swarm.redis().hmget(keys.ledger(swarm.name), [field(dim, key, m) for m in SPEND])
    return {m: int(v or 0) for m, v in zip(SPEND, got)}


def as_usage(c: dict[str, int]) -> Usage:
    return Usage(input=c["input"], output=c["output"], cache_creation=c["cache_write"],
                 cache_read=c["cache_read"], cache_creation_1h=c["cache_write_1h"])


def tokens(c: dict[str, int]) -> int:
    return c["input"] + c["output"] + c["cache_write"] + c["cache_read"]


def hit(c: dict[str, int]) -> float:
    """Cache reads over the input side."""
    side = c["input"] + c["cache_write"] + c["cache_read"]
    return c["cache_read"] / side if side else 0.0


def swarm_round(swarm: SwarmRun, fake: FakeAPI, goal: str, count: int) -> dict[str, float]:
    api = Swarm(swarm.name, swarm.redis())
    fake.clear_cache()
    lead_before = ledger(swarm, "pool", LEAD_POOL)
    calls_before = fake.requests
    t0 = time.time()
    run_id = api.run(goal)
    info = api.wait_run(run_id, timeout=300)
    seen_end = time.time()
    record = swarm.redis().hgetall(keys.run(swarm.name, run_id))
    cited = (info.get("result") or {}).get("citations") or []
    if info["state"] != "done" or info["handed"] != count or len(cited) != count:
        raise RuntimeError(f"run {run_id} ended {info['state']} ({info.get('limit')}), "
                           f"{info['handed']} handed out, {len(cited)} cited")
    wrong = [t["id"] for t in info["tasks"] if t["state"] != "done"]
    if wrong:
        raise RuntimeError(f"run {run_id}: tasks not done: {wrong}")
    lead = {m: v - lead_before[m] for m, v in ledger(swarm, "pool", LEAD_POOL).items()}
    run = ledger(swarm, "run", run_id)
    workers = {m: run[m] - lead[m] for m in SPEND}
    prices = PriceBook()
    return {"wall": float(record["finished_at"]) - float(record["created"]),
            "wall_seen": seen_end - t0, "calls": fake.requests - calls_before,
            "ledger_calls": run["calls"], "lead_calls": lead["calls"],
            "lead_tokens": tokens(lead) / info["handed"],
            "lead_in": (tokens(lead) - lead["output"]) / info["handed"],
            "lead_out": lead["output"] / info["handed"],
            "tokens": tokens(run), "usd": run["nano"] / 1e9,
            "usd_lead_only": (prices.nano(LEAD_MODEL, as_usage(run)) or 0) / 1e9,
            "lead_usd": lead["nano"] / 1e9, "hit": hit(run), "lead_hit": hit(lead),
            "worker_hit": hit(workers)}


async def _one_agent(fake: FakeAPI, work: Path, task: str, turns: int) -> tuple[float, str]:
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="bench", max_retries=2)
    agent = Agent(client, LEAD_MODEL, max_turns=turns, max_tokens=4096)
    box = Toolbox(work, ToolSettings())
    try:
        t0 = time.perf_counter()
        outcome = await agent.run(Task(task), box, None, "one-agent")
        elapsed = time.perf_counter() - t0
    finally:
        box.jail.close()
        await client.close()
    if outcome.status != "done":
        raise RuntimeError(f"the one agent failed: {outcome.error}")
    return elapsed, outcome.result


def agent_round(fake: FakeAPI, work: Path, task: str, count: int) -> dict[str, float]:
    fake.clear_cache()
    before, calls_before = fake.billed(detail=True), fake.requests
    wall, result = asyncio.run(_one_agent(fake, work, task, count + 5))
    if len(ANSWERED.findall(result)) != count:
        raise RuntimeError(f"the one agent answered {len(ANSWERED.findall(result))} of {count}")
    after = fake.billed(detail=True)

    def spent(name: str) -> int:
        return int(after[name] - before[name])

    used = Usage(input=spent("input_tokens"), output=spent("output_tokens"),
                 cache_creation=spent("cache_creation_input_tokens"),
                 cache_read=spent("cache_read_input_tokens"),
                 cache_creation_1h=spent("ephemeral_1h_input_tokens"))
    return {"wall": wall, "calls": fake.requests - calls_before,
            "hit": hit({"input": used.input, "cache_write": used.cache_creation,
                        "cache_read": used.cache_read}),
            "tokens": used.input + used.output + used.cache_creation + used.cache_read,
            "usd": (PriceBook().nano(LEAD_MODEL, used) or 0) / 1e9}


# --- the report ------------------------------------------------------------------------


def med(rounds: list[dict[str, float]], name: str) -> float:
    return statistics.median(r[name] for r in rounds)


def spread(rounds: list[dict[str, float]], name: str, fmt: str) -> str:
    values = sorted(r[name] for r in rounds)
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(med(rounds, name), fmt)} ({format(values[0], fmt)}-{format(values[-1], fmt)})"


def report(runs: list[dict[str, float]], agents: list[dict[str, float]], count: int) -> str:
    wall, one = med(runs, "wall"), med(agents, "wall")
    usd, lead_only, agent_usd = med(runs, "usd"), med(runs, "usd_lead_only"), med(agents, "usd")
    rows = [
        ["wall time, s (median, min-max)", spread(runs, "wall", ".2f"),
         spread(agents, "wall", ".2f"), f"{wall / one:.2f}x ({one / wall:.1f}x faster)"],
        ["API calls", spread(runs, "calls", ".0f"), spread(agents, "calls", ".0f"),
         f"{med(runs, 'calls') / med(agents, 'calls'):.2f}x"],
        ["of which the lead's", spread(runs, "lead_calls", ".0f"), "-", ""],
        ["tokens, all (in + out + cache)", f"{med(runs, 'tokens'):,.0f}",
         f"{med(agents, 'tokens'):,.0f}",
         f"{med(runs, 'tokens') / med(agents, 'tokens'):.2f}x"],
        ["input side read from the cache", f"{med(runs, 'hit'):.2f}",
         f"{med(agents, 'hit'):.2f}", f"lead {med(runs, 'lead_hit'):.2f}, "
         f"workers {med(runs, 'worker_hit'):.2f}"],
        [f"lead's own tokens per task handed out ({count} tasks)",
         spread(runs, "lead_tokens", ",.0f"), "-",
         f"{med(runs, 'lead_in'):,.0f} input side + {med(runs, 'lead_out'):,.0f} output"],
        ["cost, $ (the run: ledger; one agent: the fake's bill)", f"{usd:.4f}",
         f"{agent_usd:.4f}", f"{usd / agent_usd:.2f}x"],
        [f"of which the lead's, $ ({LEAD_MODEL})", f"{med(runs, 'lead_usd'):.4f}", "-",
         f"{med(runs, 'lead_usd') / usd:.0%} of the run"],
        [f"the run's tokens priced on {LEAD_MODEL} alone, $", f"{lead_only:.4f}", "-",
         f"the run costs {usd / lead_only:.2f}x that"],
    ]
    return table(["", "swarm run (lead + 2 workers)", f"one agent ({LEAD_MODEL})",
                  "run / one agent"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--latency", type=float, default=1.0,
                        help="seconds per response of the fake API")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--expiry", default="5s", help="the workers' heartbeat expiry")
    args = parser.parse_args()
    if not 2 <= args.questions <= 50:
        parser.error("--questions must be 2 to 50 (the run's max_tasks is 50)")
    sigterm_exits()
    work = Path(tempfile.mkdtemp(prefix="bench-lead-breadth-"))
    paths = fixture(work, args.questions)
    goal = questions_text(paths)
    fake = FakeAPI(latency=args.latency, script=script).start()
    swarm: SwarmRun | None = None
    runs: list[dict[str, float]] = []
    agents: list[dict[str, float]] = []
    load = MachineLoad()
    try:
        swarm = SwarmRun.in_temp_folder("leadbreadth", spec_pools(work, args.expiry),
                                        env=api_env(fake))
        swarm.start(workers=WORKERS + 1)
        for i in range(args.rounds):
            # alternate which side goes first
            order = ("run", "agent") if i % 2 == 0 else ("agent", "run")
            for side in order:
                if side == "run":
                    runs.append(swarm_round(swarm, fake, goal, args.questions))
                else:
                    agents.append(agent_round(fake, work, goal, args.questions))
            print(f"  round {i + 1}: swarm run {runs[-1]['wall']:.2f} s "
                  f"({runs[-1]['calls']:.0f} calls), one agent {agents[-1]['wall']:.2f} s "
                  f"({agents[-1]['calls']:.0f} calls)", flush=True)
    finally:
        if swarm is not None:
            swarm.stop()
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n# lead_breadth: {args.questions} independent questions, one file each; fake API "
          f"latency {args.latency:g} s per response; {args.rounds} round(s), medians; "
          f"at {revision()}\n{machine()}\n{load.report()}\n")
    print(report(runs, agents, args.questions))
    seen = med(runs, "wall_seen")
    print(f"\n(swarm run wall time: the run's record, created to finished_at; as seen by "
          f"Swarm.run() .. wait_run() returning: {seen:.2f} s median, wait_run polls every "
          f"0.5 s. Calls of the run in the ledger: {med(runs, 'ledger_calls'):.0f}.)")


if __name__ == "__main__":
    main()
