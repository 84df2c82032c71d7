"""Supervisor CPU and Redis traffic with idle workers (goal: < 2% of one core for 64).

    python -m bench.idle_supervisor [--workers 64] [--seconds 60]

Starts ``swarm up -d`` with one pool of ``--workers`` idle workers and the example
heartbeat (expiry 15s, interval 5s), waits ``--settle`` seconds after every worker has
beaten, then over ``--seconds`` measures:

* the supervisor process's CPU time (user + system, psutil) as a percentage of one core,
  and for reference the workers' and the embedded redis-server's;
* Redis commands per second over the same window (INFO commandstats deltas, excluding
  this script's own INFO/CLIENT calls);
* then, for ``--monitor-seconds`` more, who sends them: every command is read with
  MONITOR and attributed by command and key (the supervisor sends MGET of the
  heartbeats, LPOP of the control list, and writes the swarm's slots/meta/pools/events
  keys; everything else comes from workers), and set against what the code should
  send (workers: SET + HSET + MGET of the pause flags per beat, an idle task consumer's
  XREADGROUP BLOCK 5 s one after another, XPENDING every 15 s; supervisor: MGET + LPOP
  per tick, 3 HSETs per 2 s publish). MONITOR itself loads Redis, so it is kept out of the CPU window.

Also times, from this process, one sweep of ``launcher.proctree.Meter.sample()`` over all
workers (the supervisor does one sweep every 2 s), as the likely main cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter

import psutil

from bench._common import MachineLoad, bench_swarm, machine, mib, pool_yaml, sigterm_exits, table

OWN_COMMANDS = {"info", "client", "ping", "auth", "hello", "monitor"}  # ours, not the swarm's


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def command_calls(client) -> dict[str, int]:  # type: ignore[no-untyped-def]
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def attribute(client, name: str, seconds: float) -> Counter:  # type: ignore[no-untyped-def]
    """(who, command) -> count, from MONITOR, by command and key."""
    from workers import keys

    supervisor_keys = {keys.meta(name), keys.pools(name), keys.events(name), keys.REGISTRY}
    host_prefix = keys.host(name, "")  # every host's lease, slots, pools and control list
    queues = keys.queue(name, "")  # the supervisor's XPENDING look for dead consumers
    lease = keys.lease(name, "")
    counts: Counter = Counter()
    deadline = time.monotonic() + seconds
    with client.monitor() as monitor:
        while time.monotonic() < deadline:
            words = monitor.next_command()["command"].split()
            verb = words[0].lower() if words else "?"
            if verb in OWN_COMMANDS:
                continue
            key = words[1] if len(words) > 1 else ""
            # the supervisor's MGET reads the leases; a worker's reads the pause flags
            ours = (key in supervisor_keys or key.startswith(host_prefix)
                    or (verb == "mget" and key.startswith(lease))
                    or (verb == "xpending" and key.startswith(queues)))
            who = "supervisor" if ours else "workers"
            counts[(who, verb)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to wait after all workers are up")
    parser.add_argument("--expiry", type=float, default=15.0, help="heartbeat expiry, seconds")
    parser.add_argument("--monitor-seconds", type=float, default=20.0,
                        help="seconds of MONITOR to attribute commands (after the CPU window)")
    args = parser.parse_args()
    sigterm_exits()
    interval = args.expiry / 3
    tick = min(0.5, args.expiry / 4)

    print(machine())
    run = bench_swarm("idle", pool_yaml("idle", args.workers, expiry=f"{args.expiry:g}s"))
    try:
        run.start(workers=args.workers)
        print(f"{args.workers} workers up in {run.startup_seconds:.1f}s "
              f"(swarm up -d); settling {args.settle:g}s", file=sys.stderr)
        time.sleep(args.settle)
        client = run.redis()
        sup = psutil.Process(run.pid)
        redis_proc = psutil.Process(run.redis_pid())
        pids = run.worker_pids()
        workers = [psutil.Process(pid) for pid in pids.values()]

        calls0, stats0 = command_calls(client), client.info("stats")
        cpu0 = (cpu_seconds([sup]), cpu_seconds(workers), cpu_seconds([redis_proc]))
        t0 = time.monotonic()
        load = MachineLoad()
        print(f"measuring for {args.seconds:g}s ...", file=sys.stderr)
        time.sleep(args.seconds)
        wall = time.monotonic() - t0
        load_report = load.report()
        cpu1 = (cpu_seconds([sup]), cpu_seconds(workers), cpu_seconds([redis_proc]))
        calls1, stats1 = command_calls(client), client.info("stats")
        clients = client.client_list()
        sup_mem = sup.memory_full_info()

        restarted = {w: p for w, p in run.worker_pids().items() if pids.get(w) != p}
        delta = {c: calls1.get(c, 0) - calls0.get(c, 0) for c in set(calls0) | set(calls1)}
        delta = {c: n for c, n in delta.items() if n > 0}
        swarm_delta = {c: n for c, n in delta.items() if c not in OWN_COMMANDS}
        total = sum(swarm_delta.values())
        print(f"attributing commands with MONITOR for {args.monitor_seconds:g}s ...",
              file=sys.stderr)
        mon_client = run.state.read_redis().sync(socket_timeout=10)  # type: ignore[union-attr]
        by_who = attribute(mon_client, run.name, args.monitor_seconds)
        mon_client.close()

        # the supervisor's likely main cost: sampling every worker's RSS and CPU
        from launcher import proctree

        meters = [proctree.Meter(p.pid) for p in workers]
        sweeps = []
        for _ in range(5):
            start = time.perf_counter()
            for meter in meters:
                meter.sample()
            sweeps.append(time.perf_counter() - start)
    finally:
        run.stop()

    pct = [100 * (b - a) / wall for a, b in zip(cpu0, cpu1)]
    print(f"\nsettings: {args.workers} workers, heartbeat expiry {args.expiry:g}s, interval "
          f"{interval:g}s; supervisor tick {tick:g}s; measured over {wall:.1f}s after "
          f"{args.settle:g}s settle")
    print(load_report)
    print("\n## CPU over the window (% of one core)\n")
    print(table(["process", "CPU seconds", "% of one core"], [
        ["supervisor", f"{cpu1[0] - cpu0[0]:.2f}", f"{pct[0]:.2f}%"],
        [f"{args.workers} workers (sum)", f"{cpu1[1] - cpu0[1]:.2f}", f"{pct[1]:.2f}%"],
        ["redis-server (embedded)", f"{cpu1[2] - cpu0[2]:.2f}", f"{pct[2]:.2f}%"],
    ]))
    print(f"\nsupervisor memory: RSS {mib(sup_mem.rss)}, USS {mib(sup_mem.uss)}")
    print("\n## Redis commands per second\n")
    mon = args.monitor_seconds
    block, recheck = 5.0, 15.0  # workers.tasks: an idle consumer's XREADGROUP BLOCK 5 s,
    # and its XPENDING look for orphaned deliveries every 15 s
    expected_workers = args.workers * (3 / interval + 1 / block + 1 / recheck)
    expected_sup = 2 / tick + 3 / 2.0  # MGET + LPOP per tick; 3 HSETs per 2 s publish
    rows = []
    for who, expected, how in (
        ("workers", expected_workers, f"SET + HSET + MGET(paused) per beat every {interval:g}s; "
                                      f"one XREADGROUP BLOCK {block * 1000:g}ms after another; "
                                      f"XPENDING every {recheck:g}s"),
        ("supervisor", expected_sup, f"one pipeline per {tick:g}s tick: MGET({args.workers} "
                                     "keys) + LPOP; HSET slots/meta/pools every 2s"),
    ):
        mine = {verb: n for (w, verb), n in by_who.items() if w == who}
        detail = ", ".join(f"{verb} {n / mon:.1f}" for verb, n in
                           sorted(mine.items(), key=lambda kv: -kv[1]))
        rows.append([who, f"{sum(mine.values()) / mon:.1f}", detail, f"{expected:.1f}", how])
    rows.append(["total (MONITOR window)", f"{sum(by_who.values()) / mon:.1f}", "",
                 f"{expected_workers + expected_sup:.1f}", ""])
    rows.append(["total (CPU window, INFO commandstats)", f"{total / wall:.1f}", ", ".join(
        f"{c} {n / wall:.1f}" for c, n in sorted(swarm_delta.items(), key=lambda kv: -kv[1])),
        f"{expected_workers + expected_sup:.1f}", ""])
    print(table(["who", "commands/s", "by command /s", "expected /s", "how"],
                rows))
    processed = int(stats1["total_commands_processed"]) - int(stats0["total_commands_processed"])
    print(f"\ntotal_commands_processed delta over the CPU window: {processed} "
          f"({processed / wall:.1f}/s, includes this script's own "
          f"{sum(delta.values()) - total} INFO calls)")
    last = Counter(c.get("cmd", "?") for c in clients)
    print(f"connections: {len(clients)} (by last command: "
          + ", ".join(f"{n} {cmd}" for cmd, n in last.most_common()) + ")")
    per_sweep = statistics.median(sweeps)
    print(f"\none Meter.sample() sweep over {args.workers} workers (from this process): "
          f"{per_sweep * 1000:.1f} ms median; at one sweep per 2 s that is "
          f"{per_sweep / 2 * 100:.2f}% of one core")
    if restarted:
        print(f"\nWARNING: workers restarted during the run: {restarted}")


if __name__ == "__main__":
    main()
