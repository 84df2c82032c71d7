"""Batch pools (issue 16): what the same work costs through the Message Batches API
against a standard pool, how many requests a batch gathers, and what a worker holds in
memory while 10,000 requests wait in batches.

    .venv/bin/python -m bench.batch_pool             # full size, 6-15 minutes
    .venv/bin/python -m bench.batch_pool --small     # a tenth of it, 2-3 minutes

1. Dollars. The same work, 1,000 single-turn tasks then 100 tasks of 10 turns (each turn
   but the last writes a file with the write tool), on claude-haiku-4-5 through a
   standard pool and through a batch pool, one worker each, against the fake Messages
   API (tests/harness/fake_api.py: one script for both, the tokens counted from the
   requests, ~4 characters a token, prompt caching by the API's rules). Twice: without
   shared context, and with ~5k tokens in ``context:active`` (over Haiku's 4,096-token
   minimum, so the shared prefix is cached in both modes). Each mode runs in a swarm and
   a fake of its own, so neither reads the other's cache. The ledger's dollars
   (``swarm cost``'s counters) for each, their ratio batch / standard, and the ledger's
   tokens checked against the fake's own bill (standard totals, or the batch ones).
2. Requests per batch: the fake's own batches (their entries), per workload, checked
   against the worker's log lines "batch ID: N request(s) sent".
3. Memory: a batch pool, one worker, concurrency 10,000, the fake's batches taking an
   hour (none ends). 10,000 single-turn tasks submitted at once (given ``--burst-bound``
   seconds), then, in a new swarm, 1,000 at a time (``--step``), each step once the
   requests before it wait in batches; once ``swarm status`` shows all 10,000 waiting,
   the worker's RSS and USS (and Redis's RSS), against the worker idle before the
   first task. A worker killed meanwhile (as hung) is counted, and its successor
   measured.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench._common import bench_swarm, machine, mib, revision, sigterm_exits, table, MachineLoad
from launcher import costs
from tests.harness.fake_api import FakeAPI, count_input_tokens, text_reply, tool_use_reply
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env
from workers import keys
from workers.pricing import PriceBook, Usage

MODEL = "claude-haiku-4-5"
POOL = "bulk"
TURNS_RE = re.compile(r"in (\d+) turns")
NAME_RE = re.compile(r"job (\w+)")
# ~5,000 tokens as the fake counts them (20,100 characters), as in bench/caching.py
CONTEXT = "The project's conventions and background, shared by every worker. " * 300
SENT_RE = re.compile(r"batch (\S+): (\d+) request\(s\) sent")
LEDGER_VS_BILL = (("calls", "responses"), ("input", "input_tokens"),
                  ("output", "output_tokens"), ("cache_write", "cache_creation_input_tokens"),
                  ("cache_read", "cache_read_input_tokens"))


# --- the work ----------------------------------------------------------------------


def first_text(request: dict[str, Any]) -> str:
    content = request["messages"][0]["content"]
    return content if isinstance(content, str) else " ".join(
        b.get("text", "") for b in content if b.get("type") == "text")


def script(request: dict[str, Any]) -> Any:
    """'job NAME in N turns': on each of its first N-1 turns the task writes a file, then
    it answers. Only the request's own content decides the reply, and the fake counts the
    tokens (no explicit counts), so its prompt caching applies."""
    text = first_text(request)
    wanted = int(m.group(1)) if (m := TURNS_RE.search(text)) else 1
    name = m.group(1) if (m := NAME_RE.search(text)) else "task"
    turn = (len(request["messages"]) + 1) // 2
    if turn < wanted:
        return tool_use_reply("write_file", {"path": f"out/{name}-{turn}.txt",
                                             "content": f"turn {turn} of job {name}"})
    return text_reply(f"Finished job {name} after {turn} turns: every file is written.")


def pool_yaml(batch: str | None, concurrency: int) -> str:
    """The pool, standard (``batch`` None) or a batch pool with those settings."""
    return textwrap.dedent(f"""\
        {POOL}:
          model: {MODEL}
          workers: 1
          concurrency: {concurrency}
          workdir: work
        """) + (f"  batch: {batch}\n" if batch else "")


@dataclass
class Snapshot:
    """The ledger, the fake's bill and the fake's batches at one moment."""

    ledger: dict[str, int]
    billed: dict[str, Any]
    batches: list[tuple[str, int]]  # (id, requests), in order of creation


def snapshot(api: FakeAPI, redis: Any, name: str) -> Snapshot:
    total = costs.read_counters(redis, name).get("total", {}).get("*", {})
    for _ in range(20):  # the fake's thread may add a batch meanwhile
        try:
            made = sorted(list(api.batches._batches.values()), key=lambda b: b.seq)
            break
        except RuntimeError:
            time.sleep(0.05)
    else:
        made = []
    return Snapshot(dict(total), api.billed(), [(b.id, len(b.entries)) for b in made])


def finished(redis: Any, name: str) -> tuple[int, int]:
    counts = redis.hmget(keys.counts(name), "done", "failed")
    return int(counts[0] or 0), int(counts[1] or 0)


@dataclass
class Phase:
    label: str
    tasks: int
    seconds: float
    failed: int
    ledger: dict[str, int]  # this phase's counters
    bill: dict[str, int]  # the fake's (standard or batch) for this phase
    batch_sizes: list[int]
    mismatches: list[str] = field(default_factory=list)


def bill_of(snap: Snapshot, side: str) -> dict[str, Any]:
    """The fake's totals of one side: ``standard`` or ``batch``."""
    return snap.billed["batch"] if side == "batch" else snap.billed


def all_finished(redis: Any, name: str, expected: int) -> bool:
    return sum(finished(redis, name)) >= expected


def settled(api: FakeAPI, redis: Any, name: str, before: Snapshot, side: str) -> bool:
    """The ledger counts as many calls since ``before`` as the fake answered."""
    now = snapshot(api, redis, name)
    return (delta(now.ledger, before.ledger, ["calls"])["calls"]
            >= delta(bill_of(now, side), bill_of(before, side), ["responses"])["responses"])


def delta(after: dict[str, Any], before: dict[str, Any], names: list[str]) -> dict[str, int]:
    return {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in names}


def run_mode(mode: str, context: str | None, work: list[tuple[str, list[str]]],
             args: argparse.Namespace) -> dict[str, Any]:
    """One swarm with one pool (``mode`` standard or batch) and its own fake; the
    workloads one after another; per workload the ledger's counters, the fake's bill and
    the batches made."""
    batch = (f"{{window: {args.window}, max_requests: 10000, poll: {args.poll}, "
             f"poll_max: {args.poll_max}}}" if mode == "batch" else None)
    name = f"bp{mode[0]}{'c' if context else 'n'}"
    api = FakeAPI(latency=args.latency, script=script, batch_delay=args.batch_delay).start()
    run = bench_swarm(name, pool_yaml(batch, args.std_concurrency if batch is None
                                      else 10_000), env=api_env(api, "bench"))
    (run.folder / "work").mkdir()
    phases: list[Phase] = []
    info: dict[str, Any] = {"mode": mode, "context": context is not None}
    side = "batch" if mode == "batch" else "standard"
    try:
        run.start(workers=1)
        redis = run.redis()
        if context:
            redis.set(keys.CONTEXT_ACTIVE, context)
        from launcher.client import Swarm

        client = Swarm(name, redis)
        expected = 0
        for label, texts in work:
            before = snapshot(api, redis, name)
            t0 = time.perf_counter()
            client.submit_many(texts, pool=POOL)
            expected += len(texts)
            turns = max(int(m.group(1)) for t in texts if (m := TURNS_RE.search(t)))
            wait_for(partial(all_finished, redis, name, expected),
                     60 + len(texts) / 10 + turns * (args.window_s + args.batch_delay + 5),
                     f"{label} ({mode})", every=0.1)
            seconds = time.perf_counter() - t0
            try:  # every call settled: the ledger's calls reach the fake's answers
                wait_for(partial(settled, api, redis, name, before, side), 10, "the ledger")
            except AssertionError:
                pass  # reported below as a mismatch
            after = snapshot(api, redis, name)
            names = ["calls", "input", "output", "cache_write", "cache_read", "nano",
                     "batch_calls", "batch_nano", "batch_std_nano"]
            ledger = delta(after.ledger, before.ledger, names)
            bill = delta(bill_of(after, side), bill_of(before, side),
                         ["responses", "input_tokens", "output_tokens",
                          "cache_creation_input_tokens", "cache_read_input_tokens"])
            other = "standard" if side == "batch" else "batch"
            stray = delta(after.billed if other == "standard" else after.billed["batch"],
                          before.billed if other == "standard" else before.billed["batch"],
                          ["responses"])["responses"]
            known = {b for b, _ in before.batches}
            sizes = [n for b, n in after.batches if b not in known]
            mismatches = [f"{ours} {ledger[ours]} vs fake {bill[theirs]}"
                          for ours, theirs in LEDGER_VS_BILL if ledger[ours] != bill[theirs]]
            if stray:
                mismatches.append(f"{stray} answer(s) billed as {other}")
            failed = finished(redis, name)[1] - sum(p.failed for p in phases)
            phases.append(Phase(label, len(texts), seconds, failed, ledger, bill, sizes,
                                mismatches))
        info["log_batches"] = logged_batches(run.folder)
        info["fake_batches"] = [n for _, n in snapshot(api, redis, name).batches]
        received = api.received()
        first = (received[0] if received else
                 next(iter(api.batches._batches.values())).entries[0].params)
        info["prefix_tokens"] = count_input_tokens({**first, "messages": []})
        info["first_turn_tokens"] = count_input_tokens(first)
        info["files_written"] = sum(1 for _ in (run.folder / "work").rglob("*.txt"))
    finally:
        run.stop()
        api.stop()
    info["phases"] = phases
    return info


def logged_batches(folder: Path) -> list[int]:
    """Requests per batch as the worker logs said ("batch ID: N request(s) sent")."""
    sizes = []
    for path in sorted(folder.rglob(f"{POOL}-*.log*")):
        for line in path.read_text(errors="replace").splitlines():
            if (m := SENT_RE.search(line)):
                sizes.append(int(m.group(2)))
    return sizes


def priced(bill: dict[str, int], batch: bool) -> float:
    """The fake's tokens priced as the ledger prices them (dollars)."""
    usage = Usage(bill["input_tokens"], bill["output_tokens"],
                  bill["cache_creation_input_tokens"], bill["cache_read_input_tokens"])
    return (PriceBook().nano(MODEL, usage, batch=batch) or 0) / 1e9


# --- memory with 10,000 requests waiting -----------------------------------------------


def rss_uss(pid: int | None) -> tuple[int, int]:
    if not pid:
        return 0, 0
    try:
        info = psutil.Process(pid).memory_full_info()
        return info.rss, info.uss
    except psutil.Error:
        return 0, 0


def hangs(folder: Path) -> list[str]:
    """The supervisor's log lines of workers killed as hung."""
    return [line for path in sorted(folder.rglob("supervisor.log*"))
            for line in path.read_text(errors="replace").splitlines()
            if " hang " in line]


def memory_run(n: int, step: int, bound: float, args: argparse.Namespace) -> dict[str, Any]:
    """One worker, concurrency 10,000, batches that never end: ``n`` single-turn tasks
    submitted ``step`` at a time (each step once the requests before it wait in batches),
    until ``swarm status`` shows ``n`` requests waiting (within ``bound`` seconds); then
    the worker's memory, against its memory idle before the first task."""
    batch = f"{{window: {args.window}, max_requests: 10000, poll: {args.memory_poll}}}"
    api = FakeAPI(script=script, batch_delay=3600.0).start()
    run = bench_swarm("bpmem", pool_yaml(batch, 10_000), env=api_env(api, "bench"))
    (run.folder / "work").mkdir()
    out: dict[str, Any] = {"tasks": n, "step": step, "bound": bound, "batch": batch}
    try:
        run.start(workers=1)
        redis = run.redis()
        pid = int(run.status()["workers"][0]["pid"])
        time.sleep(3)  # settled after boot
        out["idle_rss"], out["idle_uss"] = rss_uss(pid)
        out["redis_idle_rss"] = rss_uss(run.redis_pid())[0]
        from launcher.client import Swarm

        client = Swarm("bpmem", redis)
        seen: dict[str, Any] = {}
        submitted = 0

        def waiting() -> bool:
            view = run.status()
            seen.clear()
            seen.update(view.get("batches", {}).get(POOL, {}))
            return seen.get("requests", 0) >= submitted

        t0 = time.perf_counter()
        deadline = time.monotonic() + bound
        while submitted < n:
            k = min(step, n - submitted)
            client.submit_many([f"job m{i} in 1 turns" for i in range(submitted, submitted + k)],
                               pool=POOL)
            submitted += k
            try:
                wait_for(waiting, max(1.0, deadline - time.monotonic()),
                         f"{submitted:,} requests waiting in batches", every=0.5)
            except AssertionError as exc:
                out["timeout"] = str(exc)
                break
        out["reached"] = "timeout" not in out
        out["waiting_after_s"] = time.perf_counter() - t0
        out["status_batches"] = dict(seen)
        now = int(run.status()["workers"][0]["pid"] or 0)  # a successor if it was killed
        out["same_pid"], pid = now == pid, now
        samples = []
        for _ in range(args.samples):  # a few readings, a second apart
            samples.append(rss_uss(pid))
            time.sleep(1)
        out["rss"], out["uss"] = samples[-1]
        out["rss_max"] = max(s[0] for s in samples)
        try:
            proc = psutil.Process(pid)
            out["fds"], out["threads"] = proc.num_fds(), proc.num_threads()
        except psutil.Error:
            out["fds"] = out["threads"] = "gone"
        out["redis_rss"] = rss_uss(run.redis_pid())[0]
        view = run.status()
        row = next(r for r in view["workers"] if r["pool"] == POOL)
        out["restarts"], out["state"] = row["restarts"], row["state"]
        out["status_tasks"] = {k: v for k, v in view["tasks"].items() if v}
        out["fake_batches"] = [m for _, m in snapshot(api, redis, "bpmem").batches]
        out["log_batches"] = logged_batches(run.folder)
        out["hangs"] = hangs(run.folder)
        out["retrying"] = sum(
            path.read_text(errors="replace").count("Redis unreachable")
            for path in run.folder.rglob(f"{POOL}-*.log*"))
        made = list(api.batches._batches.values())
        out["request_bytes"] = len(json.dumps(made[0].entries[0].params)) if made else 0
    finally:
        t1 = time.perf_counter()
        run.stop()
        out["stop_s"] = time.perf_counter() - t1
        api.stop()
    return out


def memory_report(mem: dict[str, Any], samples: int) -> str:
    n = mem["tasks"]
    how = ("all at once" if mem["step"] >= n else f"{mem['step']:,} at a time")
    head = f"### {n:,} tasks submitted {how}, `batch: {mem['batch']}`\n\n"
    if not mem["reached"]:
        return head + (
            f"NOT REACHED within {mem['bound']:g} s: status {mem['status_batches'] or '{}'} "
            f"(requests waiting in batches), tasks {mem['status_tasks']}; batches at the "
            f"fake: {len(mem['fake_batches'])}; the worker killed as hung "
            f"{len(mem['hangs'])} time(s), restarts {mem['restarts']}, state {mem['state']}; "
            f"'Redis unreachable' lines in its log: {mem['retrying']:,}; stop took "
            f"{mem['stop_s']:.1f} s\n" + "".join(f"    {line}\n" for line in mem["hangs"][:3]))
    grown = mem["rss"] - mem["idle_rss"]
    rows = [["idle, before the tasks", mib(mem["idle_rss"]), mib(mem["idle_uss"]),
             mib(mem["redis_idle_rss"])],
            [f"{n:,} requests waiting", mib(mem["rss"]), mib(mem["uss"]),
             mib(mem["redis_rss"])],
            ["per waiting request", f"{grown / n / 1024:.1f} KiB",
             f"{(mem['uss'] - mem['idle_uss']) / n / 1024:.1f} KiB",
             f"{(mem['redis_rss'] - mem['redis_idle_rss']) / n / 1024:.1f} KiB"]]
    return head + table(["", "worker RSS", "worker USS", "Redis RSS"], rows) + (
        f"\n\nall waiting after {mem['waiting_after_s']:.1f} s; status: "
        f"{mem['status_batches']}; tasks {mem['status_tasks']}; batches at the fake "
        f"(count, mean, min, max requests): {', '.join(spread(mem['fake_batches']))}; in "
        f"the worker's log: {', '.join(spread(mem['log_batches']))}; a request is "
        f"{mem['request_bytes']:,} bytes of JSON; worker RSS max over {samples} readings "
        f"{mib(mem['rss_max'])}, fds {mem['fds']}, threads {mem['threads']}; state "
        f"{mem['state']}, restarts {mem['restarts']}, killed as hung {len(mem['hangs'])} "
        f"time(s), measured on the worker that was idle: {mem['same_pid']}; stop took "
        f"{mem['stop_s']:.1f} s\n")


# --- the report ---------------------------------------------------------------------------


def spread(sizes: list[int]) -> list[str]:
    """[batches, mean, min, max] of requests per batch."""
    if not sizes:
        return ["0", "-", "-", "-"]
    return [f"{len(sizes):,}", f"{sum(sizes) / len(sizes):,.1f}", f"{min(sizes):,}",
            f"{max(sizes):,}"]


def main() -> None:
    sigterm_exits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="100 + 10 tasks, 1,000 waiting (default 1,000 + 100, 10,000)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-dollars", action="store_true")
    parser.add_argument("--batch-delay", type=float, default=0.5,
                        help="seconds the fake takes per batch")
    parser.add_argument("--latency", type=float, default=0.1,
                        help="seconds per standard response")
    parser.add_argument("--std-concurrency", type=int, default=100)
    parser.add_argument("--samples", type=int, default=5, help="RSS readings, 1 s apart")
    parser.add_argument("--waiting", type=int, default=None,
                        help="requests to have waiting (default 10,000; --small 1,000)")
    parser.add_argument("--step", type=int, default=1000,
                        help="tasks submitted at a time for the memory figure")
    parser.add_argument("--memory-poll", default="10s",
                        help="the memory run's batch poll (the pool's default: 10s; each "
                        "waiting task looks at its checkpoint every max(1 s, 3 x poll))")
    parser.add_argument("--burst-bound", type=float, default=90.0,
                        help="seconds given to all of them submitted at once (0: not tried)")
    args = parser.parse_args()
    args.window, args.window_s, args.poll, args.poll_max = "1s", 1.0, "200ms", "2s"
    single, multi, turns, waiting = (100, 10, 10, 1000) if args.small else (1000, 100, 10, 10_000)
    waiting = args.waiting or waiting
    work = [(f"{single:,} x 1 turn", [f"job s{i} in 1 turns" for i in range(single)]),
            (f"{multi:,} x {turns} turns", [f"job t{i} in {turns} turns" for i in range(multi)])]
    load = MachineLoad()
    print(f"# batch pools: {MODEL}, fake batch delay {args.batch_delay:g} s, standard "
          f"latency {args.latency:g} s, at {revision()}\n{machine()}\n", flush=True)
    results: dict[tuple[bool, str], dict[str, Any]] = {}
    if not args.skip_dollars:
        for context in (None, CONTEXT):
            for mode in ("standard", "batch"):
                t0 = time.perf_counter()
                results[(context is not None, mode)] = run_mode(mode, context, work, args)
                print(f"  ({mode}, {'5k context' if context else 'no context'}: "
                      f"{time.perf_counter() - t0:.0f} s)", flush=True)
        rows, checks, sizes = [], [], []
        for ctx in (False, True):
            std, bat = results[(ctx, "standard")], results[(ctx, "batch")]
            for i, (label, _) in enumerate(work + [("all", [])]):
                if label == "all":
                    s_nano = sum(p.ledger["nano"] for p in std["phases"])
                    b_nano = sum(p.ledger["nano"] for p in bat["phases"])
                    b_std = sum(p.ledger["batch_std_nano"] for p in bat["phases"])
                    s_calls = sum(p.ledger["calls"] for p in std["phases"])
                    b_calls = sum(p.ledger["calls"] for p in bat["phases"])
                    s_secs = sum(p.seconds for p in std["phases"])
                    b_secs = sum(p.seconds for p in bat["phases"])
                else:
                    sp, bp = std["phases"][i], bat["phases"][i]
                    s_nano, b_nano, b_std = sp.ledger["nano"], bp.ledger["nano"], \
                        bp.ledger["batch_std_nano"]
                    s_calls, b_calls = sp.ledger["calls"], bp.ledger["calls"]
                    s_secs, b_secs = sp.seconds, bp.seconds
                rows.append(["5k" if ctx else "none", label, f"{s_calls:,} / {b_calls:,}",
                             f"{s_nano / 1e9:.4f}", f"{b_nano / 1e9:.4f}",
                             f"**{b_nano / s_nano:.3f}**" if s_nano else "-",
                             f"{b_nano / b_std:.3f}" if b_std else "-",
                             f"{s_secs:.1f} / {b_secs:.1f}"])
            for mode, res in (("standard", std), ("batch", bat)):
                for p in res["phases"]:
                    bill_usd = priced(p.bill, batch=mode == "batch")
                    checks.append(["5k" if ctx else "none", mode, p.label, p.failed,
                                   f"{p.ledger['calls']:,} / {p.bill['responses']:,}",
                                   f"{p.ledger['input']:,} / {p.bill['input_tokens']:,}",
                                   f"{p.ledger['output']:,} / {p.bill['output_tokens']:,}",
                                   f"{p.ledger['cache_write']:,} / "
                                   f"{p.bill['cache_creation_input_tokens']:,}",
                                   f"{p.ledger['cache_read']:,} / "
                                   f"{p.bill['cache_read_input_tokens']:,}",
                                   f"{p.ledger['nano'] / 1e9:.6f} / {bill_usd:.6f}",
                                   "yes" if not p.mismatches else "NO: " + "; ".join(
                                       p.mismatches)])
            for p in bat["phases"]:
                sizes.append(["5k" if ctx else "none", p.label, *spread(p.batch_sizes)])
            sizes.append(["5k" if ctx else "none", "all (worker's log lines)",
                          *spread(bat["log_batches"])])
        print("\n## Dollars: the ledger's, standard pool against batch pool\n")
        print(table(["shared context", "workload", "calls std / batch", "standard $",
                     "batch $", "batch / standard", "batch / same tokens at standard",
                     "wall s std / batch"], rows))
        print("\n## The ledger against the fake's bill (ledger / fake)\n")
        print(table(["context", "pool", "workload", "failed", "calls", "input", "output",
                     "cache write", "cache read", "$ (fake's tokens priced)", "equal"],
                    checks))
        print("\n## Requests per batch (the fake's batches)\n")
        print(table(["context", "workload", "batches", "mean requests", "min", "max"], sizes))
        for ctx in (False, True):
            r = results[(ctx, "batch")]
            print(f"\n{'5k context' if ctx else 'no context'}: shared prefix (tools + system) "
                  f"{r['prefix_tokens']:,} tokens, a first turn {r['first_turn_tokens']:,} "
                  f"tokens; files written by the batch pool: {r['files_written']:,}; "
                  f"standard: {results[(ctx, 'standard')]['files_written']:,}")
    if not args.skip_memory:
        print(f"\n## Worker memory, {waiting:,} requests waiting in batches\n", flush=True)
        if args.burst_bound > 0:
            print(memory_report(memory_run(waiting, waiting, args.burst_bound, args),
                                args.samples), flush=True)
        if args.step < waiting:
            print(memory_report(memory_run(waiting, args.step, 120 + waiting / 20, args),
                                args.samples), flush=True)
    print(f"\n{load.report()}")


if __name__ == "__main__":
    main()
