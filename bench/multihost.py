"""One Redis, many hosts of one swarm (issue 10): how fast a host's running tasks run
again elsewhere after it loses power, and what idle hosts cost Redis.

    python -m bench.multihost     # ~9 min

A smoke run (~1 min): add ``--cuts 2 --latency 10 --hosts 1,2 --settle 3 --window 5``.

Everything runs against one real redis-server on loopback with a password
(tests/harness/hosts.py's SharedRedis), and every host is `swarm up` from a folder of its own;
as root, each host also has its own hostname and pid namespace, so a power cut SIGKILLs
its supervisor and all its workers at the same instant (tests/harness/hosts.py's Host).

1. Power cut → the host's tasks running again elsewhere, ``--cuts`` times. Hosts h-a
   (2 workers x concurrency 2) and h-b (2 workers x concurrency 8) run one swarm, with
   heartbeat expiry ``--expiry`` and interval ``--interval``. Long tasks (every request
   answered after ``--latency`` seconds by the in-process fake API) are submitted one by
   one until h-a runs as many as it can (4); those that land on h-b stay there, and h-b
   keeps more free slots than h-a had tasks, so what is measured is recovery, not
   queueing. After a random 1 s + 0..interval (to spread the cut over the beat phase),
   h-a loses power. Per task that was running on h-a: the time from the cut until the
   same task's next request reaches the fake API (the fake API's script notes the
   arrival of every request, by task text). Then h-a is started again (until its
   workers beat) and every task of the cut must end with exactly one finding; counted
   per cut: tasks lost (no finding), tasks with more than one finding, tasks run twice
   (more requests than expected: 1 per task, 2 for a task cut on h-a), findings that
   are not "done", and the calls the ledger counts as lost in flight.
2. Idle hosts: for each of ``--hosts`` (1, 2, 4) hosts of one swarm, each with 4 idle
   workers (concurrency 8, the example heartbeat: expiry 15 s, interval 5 s), on a
   fresh Redis: ``--settle`` seconds after every worker beats, ``INFO commandstats`` is
   read twice ``--window`` seconds apart (this script's own INFO calls left out), and
   psutil's CPU times of each host's supervisor and workers and of redis-server.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench._common import MachineLoad, machine, pct, sigterm_exits, table
from launcher.client import Swarm
from launcher.costs import read_counters
from tests.harness.fake_api import FakeAPI, Reply, Request, last_user_text, text_reply
from tests.harness.hosts import Host, SharedRedis, can_unshare, pool_text, spec_for
from tests.harness.procs import wait_for
from workers import keys

SWARM = "mh"
POOL = "a"
MODEL = "claude-haiku-4-5"
A_WORKERS, A_CONCURRENCY = 2, 2
B_WORKERS, B_CONCURRENCY = 2, 8
IDLE_WORKERS, IDLE_CONCURRENCY = 4, 8
IDLE_EXPIRY, IDLE_INTERVAL = "15s", "5s"


# --- the fake API, noting when each task's requests arrive -----------------------------


class Arrivals:
    """The fake API's script: answers every request, and notes (monotonic clock) when
    each task's requests arrive, by the task's text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, list[float]] = {}

    def __call__(self, request: Request) -> Reply:
        now = time.monotonic()
        text = last_user_text(request)
        with self._lock:
            self._seen.setdefault(text, []).append(now)
        return text_reply(f"did: {text}")

    def of(self, text: str) -> list[float]:
        with self._lock:
            return list(self._seen.get(text, []))


def api_env(api: FakeAPI) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test-key"}


# --- hosts -----------------------------------------------------------------------------


def supervisor_of(host: Host) -> psutil.Process:
    """The host's `swarm up` process: the topmost one running launcher.cli (above it, as
    root, only `unshare`)."""
    assert host.proc is not None
    top = psutil.Process(host.proc.pid)
    for proc in [top, *top.children(recursive=True)]:
        if "launcher.cli" in proc.cmdline():
            return proc
    raise RuntimeError(f"no supervisor found for host {host.name}")


def stop_hosts(hosts: list[Host]) -> None:
    """SIGTERM to every supervisor at once (a graceful stop, the hosts in parallel),
    then Host.stop for what is left."""
    running = [h for h in hosts if h.proc is not None and h.proc.poll() is None]
    for host in running:
        try:
            supervisor_of(host).terminate()
        except (psutil.Error, RuntimeError):
            pass
    for host in running:
        assert host.proc is not None
        try:
            host.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    for host in hosts:
        host.stop()


# --- 1. power cuts ---------------------------------------------------------------------


@dataclass
class Cut:
    index: int
    texts: dict[str, str] = field(default_factory=dict)  # task id -> text, every task of it
    on_a: list[str] = field(default_factory=list)  # ids running on h-a at the cut
    b_free: int = 0  # h-b's free task slots at the cut
    at: float = 0.0  # monotonic time of the cut
    recovery: dict[str, float | None] = field(default_factory=dict)  # id -> seconds
    lost_calls: int = 0  # ledger's lost-in-flight calls added by this cut
    lost: int = 0  # tasks without a finding
    doubled: int = 0  # tasks with more than one finding
    twice: int = 0  # tasks whose API was asked more often than expected
    failed: int = 0  # findings that are not "done"
    rerun_on_b: int = 0


def host_of(client: Any, task_id: str) -> tuple[str, str]:
    """(state, host) of a task, from the swarm's record of it."""
    meta = client.hgetall(keys.task_meta(SWARM, task_id))
    worker = meta.get("worker", "")
    return meta.get("state", ""), (worker.split("/")[1] if worker.count("/") >= 2 else "")


def running_on(client: Any, ids: list[str], host: str) -> list[str]:
    return [i for i in ids if host_of(client, i) == ("running", host)]


def fill_host_a(cut: Cut, swarm: Swarm, client: Any, arrivals: Arrivals, a: Host) -> None:
    """Submit tasks one by one until h-a runs as many as it can, each one's request
    at the fake API."""
    capacity = A_WORKERS * A_CONCURRENCY
    for j in range(8 * capacity):
        text = f"cut {cut.index} task {j}"
        task_id = swarm.submit_many([text])[0]
        cut.texts[task_id] = text
        wait_for(lambda i=task_id, t=text: host_of(client, i)[0] == "running" and arrivals.of(t),
                 30, f"task {text!r} to reach the fake API")
        cut.on_a = running_on(client, list(cut.texts), a.name)
        if len(cut.on_a) >= capacity:
            return
    raise RuntimeError(f"h-a took only {len(cut.on_a)} of {8 * capacity} tasks")


def lost_calls(client: Any) -> int:
    return int(read_counters(client, SWARM).get("total", {}).get("*", {}).get("lost_calls", 0))


def await_reruns(cut: Cut, arrivals: Arrivals, timeout: float) -> None:
    """Per task cut on h-a: seconds from the cut to its next request (None: none came)."""
    deadline = time.monotonic() + timeout
    waiting = set(cut.on_a)
    while waiting and time.monotonic() < deadline:
        for task_id in list(waiting):
            after = [t for t in arrivals.of(cut.texts[task_id]) if t > cut.at]
            if after:
                cut.recovery[task_id] = after[0] - cut.at
                waiting.discard(task_id)
        time.sleep(0.01)
    for task_id in waiting:
        cut.recovery[task_id] = None


def await_findings(client: Any, ids: list[str], timeout: float) -> None:
    """Until every task has its finding, or ``timeout`` (the tally says what is missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(client.mget([keys.task_result(i) for i in ids])):
            return
        time.sleep(0.2)


def findings_by_task(client: Any) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for key in client.scan_iter(match="finding:*", count=1000):
        raw = client.get(key)
        if raw:
            finding = json.loads(raw)
            found.setdefault(finding.get("task_id", ""), []).append(finding)
    return found


def tally(cuts: list[Cut], client: Any, arrivals: Arrivals, b: Host) -> None:
    """Findings and requests per task of every cut, counted once every cut is over (so a
    late second run of an early cut's task is counted too)."""
    found = findings_by_task(client)
    for cut in cuts:
        for task_id, text in cut.texts.items():
            mine = found.get(task_id, [])
            cut.lost += not mine
            cut.doubled += len(mine) > 1
            cut.failed += any(f.get("status") != "done" for f in mine)
            cut.twice += len(arrivals.of(text)) > (2 if task_id in cut.on_a else 1)
            if task_id in cut.on_a and mine:
                cut.rerun_on_b += mine[0]["worker_id"].split("/")[1] == b.name


def one_cut(index: int, a: Host, b: Host, client: Any, arrivals: Arrivals,
            args: argparse.Namespace) -> Cut:
    cut = Cut(index)
    swarm = Swarm(SWARM, client)
    fill_host_a(cut, swarm, client, arrivals, a)
    cut.b_free = B_WORKERS * B_CONCURRENCY - len(running_on(client, list(cut.texts), b.name))
    ledger_before = lost_calls(client)
    time.sleep(1.0 + random.uniform(0, args.interval))
    cut.at = time.monotonic()
    a.power_cut()
    await_reruns(cut, arrivals, args.expiry + 60)
    a.start(wait=True)
    await_findings(client, list(cut.texts), args.latency * 2 + 60)
    cut.lost_calls = lost_calls(client) - ledger_before
    return cut


def power_cuts(folder: Path, api: FakeAPI, arrivals: Arrivals,
               args: argparse.Namespace) -> list[Cut]:
    redis = SharedRedis(folder / "redis").start()
    beat = {"expiry": f"{args.expiry:g}s", "interval": f"{args.interval:g}s", "model": MODEL}
    a = Host(folder / "h-a", "h-a", spec_for(SWARM, pool_text(
        POOL, workers=A_WORKERS, extra=f"concurrency: {A_CONCURRENCY}\n", **beat)),
        redis.url, env=api_env(api))
    b = Host(folder / "h-b", "h-b", spec_for(SWARM, pool_text(
        POOL, workers=B_WORKERS, extra=f"concurrency: {B_CONCURRENCY}\n", **beat)),
        redis.url, env=api_env(api))
    cuts: list[Cut] = []
    try:
        b.start(wait=True)
        a.start(wait=True)
        client = redis.client()
        for index in range(1, args.cuts + 1):
            cuts.append(one_cut(index, a, b, client, arrivals, args))
            done = [s for s in cuts[-1].recovery.values() if s is not None]
            print(f"  cut {index}/{args.cuts}: {len(cuts[-1].on_a)} tasks on h-a, running "
                  f"again after {', '.join(f'{s:.2f}' for s in done)} s", file=sys.stderr)
        time.sleep(2.0)  # a late duplicate would show up by now
        tally(cuts, client, arrivals, b)
    finally:
        stop_hosts([a, b])
        redis.kill()
    return cuts


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def print_cuts(cuts: list[Cut], args: argparse.Namespace) -> None:
    goal = args.expiry + 1.0
    print(f"\n## Power cut of a host → its tasks running again on the other host\n\n"
          f"heartbeat expiry {args.expiry:g} s, interval {args.interval:g} s; fake API "
          f"latency {args.latency:g} s per request; h-a {A_WORKERS} workers x concurrency "
          f"{A_CONCURRENCY}, h-b {B_WORKERS} x {B_CONCURRENCY}; goal: within expiry + 1 s "
          f"= {goal:g} s\n")
    rows = []
    for cut in cuts:
        times = [s for s in cut.recovery.values() if s is not None]
        never = len(cut.recovery) - len(times)
        last = seconds(max(times) if times else None) + (f" ({never} never)" if never else "")
        rows.append([cut.index, len(cut.on_a), cut.b_free,
                     seconds(min(times) if times else None),
                     seconds(statistics.median(times) if times else None), last,
                     f"{cut.rerun_on_b}/{len(cut.on_a)}", len(cut.texts), cut.lost, cut.doubled,
                     cut.twice, cut.failed, f"{cut.lost_calls} (of {len(cut.on_a)} cut)"])
    print(table(["cut", "tasks on h-a", "h-b free slots", "min", "median", "worst",
                 "re-run on h-b", "tasks in cut", "lost", "> 1 finding", "run twice", "failed",
                 "lost in flight (ledger)"], rows))
    times = [s for cut in cuts for s in cut.recovery.values() if s is not None]
    measured = sum(len(cut.recovery) for cut in cuts)
    worst = max(times) if len(times) == measured and times else None
    met = sum(1 for s in times if s <= goal)
    print()
    print(table(["cuts", "tasks cut", "median", "p95", "worst", "worst − expiry",
                 f"goal (≤ {goal:g} s)", "lost", "> 1 finding", "run twice",
                 "lost in flight / calls cut"],
                [[len(cuts), measured, seconds(statistics.median(times) if times else None),
                  seconds(pct(times, 95) if times else None), seconds(worst),
                  "-" if worst is None else f"{worst - args.expiry:+.2f} s",
                  f"{met}/{measured}", sum(c.lost for c in cuts), sum(c.doubled for c in cuts),
                  sum(c.twice for c in cuts), f"{sum(c.lost_calls for c in cuts)}/{measured}"]]))


# --- 2. idle hosts ---------------------------------------------------------------------


@dataclass
class Idle:
    hosts: int
    wall: float
    commands: Counter[str]
    supervisor_cpu: list[float]  # % of one core, per host
    workers_cpu: list[float]  # % of one core, all workers of a host
    redis_cpu: float


def command_calls(client: Any) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def idle_hosts(count: int, folder: Path, api: FakeAPI, args: argparse.Namespace) -> Idle:
    redis = SharedRedis(folder / "redis").start()
    spec = spec_for(SWARM, pool_text(POOL, workers=IDLE_WORKERS, expiry=IDLE_EXPIRY,
                                     interval=IDLE_INTERVAL, model=MODEL,
                                     extra=f"concurrency: {IDLE_CONCURRENCY}\n"))
    hosts = [Host(folder / f"h-{i}", f"h-{i}", spec, redis.url, env=api_env(api))
             for i in range(1, count + 1)]
    try:
        for host in hosts:
            host.start(wait=False)
        for host in hosts:
            wait_for(host.beating, 60, f"host {host.name}'s workers to beat")
        time.sleep(args.settle)
        client = redis.client()
        assert redis.process is not None
        server = psutil.Process(redis.process.pid)
        sups = [supervisor_of(h) for h in hosts]
        workers = [s.children(recursive=True) for s in sups]
        before = (command_calls(client), [cpu_seconds([s]) for s in sups],
                  [cpu_seconds(w) for w in workers], cpu_seconds([server]), time.monotonic())
        time.sleep(args.window)
        after = (command_calls(client), [cpu_seconds([s]) for s in sups],
                 [cpu_seconds(w) for w in workers], cpu_seconds([server]), time.monotonic())
        wall = after[4] - before[4]
        commands = after[0] - before[0]
        commands.pop("info", None)  # this script's own
        return Idle(count, wall, commands,
                    [100 * (x - y) / wall for x, y in zip(after[1], before[1])],
                    [100 * (x - y) / wall for x, y in zip(after[2], before[2])],
                    100 * (after[3] - before[3]) / wall)
    finally:
        stop_hosts(hosts)
        redis.kill()


def print_idle(results: list[Idle], args: argparse.Namespace) -> None:
    print(f"\n## Redis commands per idle host, one swarm on one Redis\n\n"
          f"each host {IDLE_WORKERS} idle workers (concurrency {IDLE_CONCURRENCY}), heartbeat "
          f"expiry {IDLE_EXPIRY}, interval {IDLE_INTERVAL}; {args.settle:g} s after every "
          f"worker beats, INFO commandstats over {args.window:g} s (its own INFO left out); "
          f"CPU as % of one core\n")
    rows = []
    for r in results:
        total = sum(r.commands.values()) / r.wall
        rows.append([r.hosts, r.hosts * IDLE_WORKERS, f"{total:.1f}", f"{total / r.hosts:.1f}",
                     f"{total / (r.hosts * IDLE_WORKERS):.2f}",
                     f"{statistics.mean(r.supervisor_cpu):.2f}% (max {max(r.supervisor_cpu):.2f}%)",
                     f"{statistics.mean(r.workers_cpu):.2f}%", f"{r.redis_cpu:.2f}%"])
    print(table(["hosts", "workers", "commands/s", "per host", "per worker",
                 "supervisor CPU per host (mean)", "workers' CPU per host", "redis-server CPU"],
                rows))
    top: list[str] = []
    for r in results:
        top += [name for name, _ in r.commands.most_common(6) if name not in top]
    other = [sum(n for name, n in r.commands.items() if name not in top) for r in results]
    print("\nper host, by command (/s):\n")
    print(table(["command", *(f"{r.hosts} host{'s' * (r.hosts > 1)}" for r in results)],
                [[name, *(f"{r.commands[name] / r.wall / r.hosts:.2f}" for r in results)]
                 for name in top]
                + [["(others)", *(f"{n / r.wall / r.hosts:.2f}" for n, r in zip(other, results))]]))


# --- main ------------------------------------------------------------------------------


def main() -> None:
    sigterm_exits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", type=int, default=10, help="power cuts (0: skip part 1)")
    parser.add_argument("--expiry", type=float, default=3.0, help="heartbeat expiry, seconds")
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, s")
    parser.add_argument("--latency", type=float, default=30.0,
                        help="seconds the fake API takes per request")
    parser.add_argument("--hosts", default="1,2,4",
                        help="idle hosts per measurement, comma-separated ('': skip part 2)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds after every worker beats before the idle window")
    parser.add_argument("--window", type=float, default=30.0, help="idle window, seconds")
    args = parser.parse_args()
    counts = [int(x) for x in args.hosts.split(",") if x.strip()]

    print(f"# multihost: {args.cuts} power cuts, idle hosts {counts or 'skipped'}\n"
          f"# {machine()}\n# hosts in their own hostname + pid namespace (unshare): "
          f"{'yes' if can_unshare() else 'no (SWARM_HOST, process-tree power cut)'}",
          flush=True)
    folder = Path(tempfile.mkdtemp(prefix="swarm-multihost-"))
    arrivals = Arrivals()
    api = FakeAPI(latency=args.latency, script=arrivals).start()
    load = MachineLoad()
    t0 = time.monotonic()
    try:
        cuts = power_cuts(folder / "cuts", api, arrivals, args) if args.cuts > 0 else []
        idle = [idle_hosts(n, folder / f"idle-{n}", api, args) for n in counts]
    finally:
        api.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if cuts:
        print_cuts(cuts, args)
    if idle:
        print_idle(idle, args)
    print(f"\n# {load.report()}; total {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
