"""How swarm scales: idle CPU, Redis traffic, memory and CLI latency at 1 to 256 workers.

    python -m bench.scale [--workers 1,16,64,256] [--seconds 30] [--calls 10000]
    python -m bench.scale --plot-only docs/scale.json   # redraw docs/scale.png

For each size, a fresh ``swarm up -d`` with one pool of that many idle workers (the
example heartbeat: expiry 15 s, interval 5 s, as bench/idle_supervisor.py, so the
figures compare with its section of docs/benchmarks.md), ``--settle`` seconds after
every worker has beaten, then:

1. over ``--seconds``: CPU time (user + system, psutil) of the supervisor as a percentage
   of one core, and for reference of all workers together and of the embedded
   redis-server;
2. over the same window: Redis commands per second (INFO commandstats deltas, without
   this script's own INFO/CLIENT calls); then for ``--monitor-seconds`` more (0: skip)
   who sends them, supervisor or workers, read with MONITOR as idle_supervisor.py does
   (kept out of the CPU window, since MONITOR loads Redis);
3. memory (psutil ``memory_full_info()``): median RSS, PSS and USS per worker, the total
   PSS of workers + supervisor, the supervisor's RSS and USS, redis-server's RSS;
4. ``swarm status`` and ``swarm status --json`` wall time (the console script as a user
   runs it, output to a pipe; one warm-up, then the median of ``--runs``), then
   ``--calls`` API calls are recorded into the ledger through the workers' own RECORD
   script, spread as bench/cost_report.py spreads them but over this swarm's own
   workers (so ``swarm cost`` has one row per real worker), and ``swarm cost`` is timed
   the same way.

Before each size, free memory is checked (a forked worker costs ~20 MiB of its own;
``PER_WORKER_GUESS``, or 1.5x the PSS measured at the previous size if more); a size
that would not fit is skipped with the reason, and so are the larger ones.

Prints Markdown tables (one row per size), writes the raw figures to ``--out``
(default docs/scale.json) and draws docs/scale.png next to it (matplotlib, the
``bench`` extra). Every swarm is stopped before the next size starts, and on the way
out whatever happens.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench._common import (
    SWARM_SCRIPT,
    MachineLoad,
    bench_swarm,
    machine,
    pool_yaml,
    revision,
    sigterm_exits,
    summary,
    table,
    time_runs,
)
from bench.idle_supervisor import OWN_COMMANDS, command_calls, cpu_seconds
from bench.idle_supervisor import attribute as by_sender
from tests.harness.procs import ROOT
from workers import keys, ledger_scripts

POOL = "scale"
MODEL = "claude-haiku-4-5"
PER_WORKER_GUESS = 25 * 2**20  # own (unshared) memory per forked worker, generous
BASE_GUESS = 300 * 2**20  # supervisor, redis-server, this script
MAX_WORKERS = 4096  # launcher/spec.py: Pool.workers le=4096 (no cap on the total)
EXPIRY = 15.0  # the example heartbeat: expiry 15s, interval a third of it
INTERVAL = EXPIRY / 3
TICK = min(0.5, EXPIRY / 4)
BLOCK = 5.0  # workers/tasks.py: an idle consumer's XREADGROUP BLOCK 5000
RECHECK = 15.0  # workers/tasks.py: XPENDING of its own deliveries every 15 s
PUBLISH_EVERY = 2.0  # launcher/supervisor.py: HSET slots/meta/pools
# What the code should send when idle, per second: each worker SET (heartbeat) + HSET
# (report) + MGET (pause flags) per beat, an XREADGROUP one after another, an XPENDING
# now and then; the supervisor MGET (heartbeats) + LPOP (control) per tick and 3 HSETs
# per publish, whatever the number of workers.
PER_WORKER_CMDS = 3 / INTERVAL + 1 / BLOCK + 1 / RECHECK
SUPERVISOR_CMDS = 2 / TICK + 3 / PUBLISH_EVERY
MiB = 2**20


# --- measuring one size ------------------------------------------------------------


def fits(n: int, per_worker: float) -> str | None:
    """None if ``n`` workers fit in free memory and file descriptors, else why not."""
    if n > MAX_WORKERS:
        return f"a pool holds at most {MAX_WORKERS} workers (launcher/spec.py)"
    available = psutil.virtual_memory().available
    need = n * per_worker + BASE_GUESS
    if need > 0.8 * available:
        return (f"needs about {need / MiB:.0f} MiB ({per_worker / MiB:.0f} MiB per worker), "
                f"more than 80% of the {available / MiB:.0f} MiB available")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = 4 * n + 200  # redis-server: 3 connections per worker; supervisor: pipes, logs
    if soft != resource.RLIM_INFINITY and fds > soft:
        return f"needs about {fds} open files, more than the limit of {soft} (ulimit -n)"
    return None


def fill_ledger(client: Any, name: str, workers: list[str], calls: int,
                rng: random.Random) -> None:
    """``calls`` API calls recorded through the workers' RECORD script, pipelined: the
    token and cost distributions of bench/cost_report.py's ``record()``, 1.5 calls per
    task, over the last hour's minute buckets, but over this swarm's own workers."""
    sha = client.script_load(ledger_scripts.RECORD)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(calls):
        task = f"task_{i * 2 // 3:09d}"
        minute = int((now - rng.random() * 3600) // 60)
        k = [keys.inflight(name), keys.ledger(name), keys.ledger_minute(name, minute),
             keys.task_meta(name, task), keys.task_costs(name)]
        a = ["", rng.choice(workers), POOL, MODEL, task,
             rng.randint(100, 5000), rng.randint(10, 2000), rng.choice([0, 0, 1000]),
             rng.choice([0, 3000]), rng.randint(10_000, 9_000_000),
             rng.randint(50_000, 20_000_000), "bench", keys.LEDGER_MINUTE_TTL]
        pipe.evalsha(sha, len(k), *k, *a)
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()


def time_cli(folder: Path, args: list[str], runs: int, check: Any = None) -> list[float]:
    """Wall times of ``swarm ARGS`` as a user runs it, after one warm-up run."""
    return time_runs([SWARM_SCRIPT, *args], folder, runs, check)


def attribute(client: Any, name: str, seconds: float) -> dict[str, float]:
    """Commands per second sent by the supervisor and by the workers, from MONITOR, by
    command and key (idle_supervisor.attribute)."""
    per_second = {"supervisor": 0.0, "workers": 0.0}
    for (who, _verb), n in by_sender(client, name, seconds).items():
        per_second[who] += n / seconds
    return per_second


def memory(pids: list[int], sup: psutil.Process, redis_proc: psutil.Process) -> dict[str, Any]:
    infos = [psutil.Process(pid).memory_full_info() for pid in pids]
    sup_mem = sup.memory_full_info()
    return {
        "worker_rss_median": statistics.median(m.rss for m in infos),
        "worker_pss_median": statistics.median(m.pss for m in infos),
        "worker_uss_median": statistics.median(m.uss for m in infos),
        "workers_pss_sum": sum(m.pss for m in infos),
        "total_pss": sum(m.pss for m in infos) + sup_mem.pss,
        "supervisor_rss": sup_mem.rss,
        "supervisor_uss": sup_mem.uss,
        "redis_rss": redis_proc.memory_info().rss,
    }


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    run = bench_swarm(POOL, pool_yaml(POOL, n, expiry=f"{EXPIRY:g}s"))
    try:
        run.start(workers=n)
        print(f"  {n} workers up in {run.startup_seconds:.1f}s (swarm up -d); settling "
              f"{args.settle:g}s", file=sys.stderr)
        time.sleep(args.settle)
        client = run.redis()
        sup = psutil.Process(run.pid)
        redis_proc = psutil.Process(run.redis_pid())
        pids = run.worker_pids()
        assert len(pids) == n, f"{len(pids)} worker pids for {n} workers"
        workers = [psutil.Process(pid) for pid in pids.values()]

        # 1 + 2: the idle window
        print(f"  idle window {args.seconds:g}s ...", file=sys.stderr)
        calls0 = command_calls(client)
        cpu0 = (cpu_seconds([sup]), cpu_seconds(workers), cpu_seconds([redis_proc]))
        t0 = time.monotonic()
        idle_load = MachineLoad()
        time.sleep(args.seconds)
        cpu1 = (cpu_seconds([sup]), cpu_seconds(workers), cpu_seconds([redis_proc]))
        wall = time.monotonic() - t0
        calls1 = command_calls(client)
        idle_report = idle_load.report()
        connections = len(client.client_list())
        delta = {c: calls1.get(c, 0) - calls0.get(c, 0) for c in set(calls0) | set(calls1)}
        swarm_delta = {c: d for c, d in delta.items() if d > 0 and c not in OWN_COMMANDS}
        by_who: dict[str, float] = {}
        if args.monitor_seconds > 0:
            print(f"  MONITOR {args.monitor_seconds:g}s ...", file=sys.stderr)
            mon = run.state.read_redis().sync(socket_timeout=10)  # type: ignore[union-attr]
            try:
                by_who = attribute(mon, run.name, args.monitor_seconds)
            finally:
                mon.close()

        # 3: memory, after the window (so the workers have run for a while)
        mem = memory(list(pids.values()), sup, redis_proc)

        # 4: CLI latency, status then cost on the same swarm
        print(f"  swarm status x{args.runs + 1}, status --json x{args.runs + 1} ...",
              file=sys.stderr)
        cli_load = MachineLoad()

        def check_json(out: str) -> None:
            assert len(json.loads(out)["workers"]) == n, "status --json: wrong worker count"

        status = time_cli(run.folder, ["status"], args.runs)
        status_json = time_cli(run.folder, ["status", "--json"], args.runs, check_json)
        print(f"  recording {args.calls:,} calls, swarm cost x{args.runs + 1} ...",
              file=sys.stderr)
        t_fill = time.perf_counter()
        fill_ledger(client, run.name, sorted(pids), args.calls, random.Random(1))
        fill = time.perf_counter() - t_fill
        ledger_fields = client.hlen(keys.ledger(run.name))
        cost = time_cli(run.folder, ["cost"], args.runs)
        cli_report = cli_load.report()

        restarted = sorted(w for w, p in run.worker_pids().items() if pids.get(w) != p)
        return {
            "workers": n,
            "startup_s": run.startup_seconds,
            "window_s": wall,
            "cpu_pct": {who: 100 * (b - a) / wall for who, a, b in
                        zip(("supervisor", "workers", "redis"), cpu0, cpu1)},
            "redis_cmds_per_s": sum(swarm_delta.values()) / wall,
            "redis_by_command_per_s": {c: d / wall for c, d in sorted(
                swarm_delta.items(), key=lambda kv: -kv[1])},
            "redis_by_who_per_s": by_who,
            "redis_expected_per_s": n * PER_WORKER_CMDS + SUPERVISOR_CMDS,
            "connections": connections,
            "memory": mem,
            "status_s": summary(status),
            "status_json_s": summary(status_json),
            "cost_s": summary(cost),
            "ledger_calls": args.calls,
            "ledger_fields": ledger_fields,
            "fill_s": fill,
            "restarted": restarted,
            "load_idle": idle_report,
            "load_cli": cli_report,
        }
    finally:
        run.stop()


# --- output ------------------------------------------------------------------------


def print_tables(data: dict[str, Any]) -> None:
    s = data["settings"]
    print(f"\nsettings: one pool of idle workers, heartbeat expiry {EXPIRY:g}s / interval "
          f"{INTERVAL:g}s, supervisor tick {TICK:g}s; {s['settle']:g}s settle after all beat; "
          f"idle window {s['seconds']:g}s; MONITOR {s['monitor_seconds']:g}s; CLI: one warm-up "
          f"then {s['runs']} runs each; ledger {s['calls']:,} calls")
    for line in data["skipped"]:
        print(f"skipped: {line}")
    sizes = data["sizes"]
    if not sizes:
        return

    print("\n## Idle: CPU (% of one core) and Redis commands/s\n")
    rows = []
    for r in sizes:
        cpu, who = r["cpu_pct"], r["redis_by_who_per_s"]
        split = (f"{who.get('supervisor', 0):.1f} / {who.get('workers', 0):.1f}"
                 if who else "-")
        rows.append([r["workers"], f"{r['startup_s']:.1f} s", f"**{cpu['supervisor']:.2f}%**",
                     f"{cpu['workers']:.2f}%", f"{cpu['workers'] / r['workers']:.3f}%",
                     f"{cpu['redis']:.2f}%", f"**{r['redis_cmds_per_s']:.1f}**", split,
                     f"{r['redis_expected_per_s']:.1f}", r["connections"]])
    print(table(["workers", "all up in", "supervisor CPU", "workers CPU (sum)",
                 "per worker", "redis-server CPU", "Redis cmds/s (INFO)",
                 "supervisor / workers cmds/s (MONITOR)", "expected cmds/s",
                 "connections"], rows))

    print(f"\nexpected: {s.get('expected_per_worker_cmds', PER_WORKER_CMDS):.3f}/s per worker "
          f"(SET + HSET + MGET per {INTERVAL:g}s beat, XREADGROUP BLOCK {BLOCK:g}s, XPENDING "
          f"every {RECHECK:g}s) + {s.get('expected_supervisor_cmds', SUPERVISOR_CMDS):g}/s "
          f"supervisor (MGET + LPOP per {TICK:g}s tick, 3 HSETs per {PUBLISH_EVERY:g}s). "
          "By command, /s (INFO):")
    for r in sizes:
        print(f"- {r['workers']}: " + ", ".join(
            f"{c.upper()} {v:.1f}" for c, v in r["redis_by_command_per_s"].items()))

    print("\n## Memory (MiB; per-worker columns are medians)\n")
    rows = []
    for r in sizes:
        m = r["memory"]
        rows.append([r["workers"], f"{m['worker_rss_median'] / MiB:.1f}",
                     f"**{m['worker_pss_median'] / MiB:.1f}**",
                     f"**{m['worker_uss_median'] / MiB:.1f}**", f"{m['total_pss'] / MiB:.0f}",
                     f"{m['supervisor_rss'] / MiB:.1f} / {m['supervisor_uss'] / MiB:.1f}",
                     f"{m['redis_rss'] / MiB:.1f}"])
    print(table(["workers", "RSS/worker", "PSS/worker", "USS/worker",
                 "total PSS (workers + supervisor)", "supervisor RSS / USS",
                 "redis-server RSS"], rows))

    print("\n## CLI wall time (ms, median (max))\n")
    rows = []
    for r in sizes:
        def cell(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]['median'] * 1000:.0f} ({r[key]['max'] * 1000:.0f})"

        rows.append([r["workers"], f"**{cell('status_s')}**", cell("status_json_s"),
                     f"**{cell('cost_s')}**", f"{r['ledger_calls']:,}", r["ledger_fields"],
                     f"{r['fill_s']:.1f} s"])
    print(table(["workers", "`swarm status`", "`swarm status --json`", "`swarm cost`",
                 "ledger calls", "ledger fields", "fill"], rows))

    print("\nmachine load:")
    for r in sizes:
        print(f"- {r['workers']} workers, idle window: {r['load_idle']}")
        print(f"- {r['workers']} workers, CLI runs: {r['load_cli']}")
    for r in sizes:
        if r["restarted"]:
            print(f"WARNING: at {r['workers']} workers, restarted during the run: "
                  f"{', '.join(r['restarted'])}")


def plot(data: dict[str, Any], png: Path) -> None:
    """One figure, four panels, log-scale x; matplotlib's Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    sizes = data["sizes"]
    if not sizes:
        print("nothing to plot", file=sys.stderr)
        return
    n = [r["workers"] for r in sizes]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    (cpu_ax, cmd_ax), (mem_ax, lat_ax) = axes

    floor = 0.01  # under one clock tick over the window: drawn at the floor of the log axis

    def cpu(who: str) -> list[float]:
        return [max(floor, r["cpu_pct"][who]) for r in sizes]

    cpu_ax.plot(n, cpu("supervisor"), "o-", label="supervisor")
    cpu_ax.plot(n, cpu("redis"), "s--", label="redis-server", alpha=0.7)
    cpu_ax.plot(n, cpu("workers"), "^--", label="all workers (sum)", alpha=0.7)
    cpu_ax.axhline(2, color="grey", linestyle=":", linewidth=1,
                   label="supervisor goal (2%, 64 workers)")
    cpu_ax.set_yscale("log")
    cpu_ax.set_ylim(floor, 20)
    cpu_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}%"))
    cpu_ax.set_title("CPU when idle (% of one core)")

    cmd_ax.plot(n, [r["redis_cmds_per_s"] for r in sizes], "o-", label="total (INFO)")
    if all(r["redis_by_who_per_s"] for r in sizes):
        for who, style in (("workers", "^--"), ("supervisor", "s--")):
            cmd_ax.plot(n, [r["redis_by_who_per_s"].get(who, 0) for r in sizes], style,
                        label=f"{who} (MONITOR)", alpha=0.7)
    cmd_ax.plot(n, [r["redis_expected_per_s"] for r in sizes], ":", color="grey",
                label="expected ({:.2f}/worker + {:g})".format(
                    data["settings"].get("expected_per_worker_cmds", PER_WORKER_CMDS),
                    data["settings"].get("expected_supervisor_cmds", SUPERVISOR_CMDS)))
    cmd_ax.set_yscale("log")
    cmd_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    cmd_ax.set_title("Redis commands/s when idle")

    for key, label, style in (("worker_uss_median", "USS", "o-"),
                              ("worker_pss_median", "PSS", "s-"),
                              ("worker_rss_median", "RSS", "^:")):
        mem_ax.plot(n, [r["memory"][key] / MiB for r in sizes], style, label=label,
                    alpha=1.0 if label != "RSS" else 0.5)
    mem_ax.set_ylim(bottom=0)
    mem_ax.set_title("memory per worker (MiB, median)")

    for key, label, style in (("status_s", "swarm status", "o-"),
                              ("status_json_s", "swarm status --json", "s--"),
                              ("cost_s", f"swarm cost ({sizes[0]['ledger_calls']:,} calls)",
                               "^-")):
        lat_ax.plot(n, [r[key]["median"] * 1000 for r in sizes], style, label=label)
    lat_ax.axhline(300, color="grey", linestyle=":", linewidth=1, label="goal (300 ms)")
    lat_ax.set_ylim(bottom=0)
    lat_ax.set_title("CLI wall time (ms, median)")

    for ax in axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xticks(n, [str(x) for x in n])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("workers")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"swarm at scale: {data.get('revision', '')}", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"plot: {png}", file=sys.stderr)


# --- main --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,16,64,256",
                        help="comma-separated sizes (default 1,16,64,256)")
    parser.add_argument("--seconds", type=float, default=30.0, help="idle window per size")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait after every worker has beaten")
    parser.add_argument("--monitor-seconds", type=float, default=10.0,
                        help="MONITOR after the window to split supervisor/workers (0: skip)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each CLI command")
    parser.add_argument("--calls", type=int, default=10_000,
                        help="API calls recorded in the ledger before timing swarm cost")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "scale.json",
                        help="raw figures (JSON); the plot goes next to it as .png")
    parser.add_argument("--plot-only", type=Path, metavar="JSON",
                        help="redraw the plot (and tables) from a JSON written earlier")
    args = parser.parse_args()

    if args.plot_only is not None:
        data = json.loads(args.plot_only.read_text())
        print_tables(data)
        plot(data, args.plot_only.with_suffix(".png"))
        return

    sizes = sorted({int(x) for x in args.workers.split(",") if x.strip()})
    if not sizes or sizes[0] < 1:
        parser.error("--workers: comma-separated positive sizes, e.g. 1,16,64,256")
    sigterm_exits()
    header = machine()
    print(header)
    data: dict[str, Any] = {
        "machine": header, "revision": revision(),
        "settings": {"settle": args.settle, "seconds": args.seconds,
                     "monitor_seconds": args.monitor_seconds, "runs": args.runs,
                     "calls": args.calls, "expiry": EXPIRY, "interval": INTERVAL,
                     "tick": TICK, "expected_per_worker_cmds": PER_WORKER_CMDS,
                     "expected_supervisor_cmds": SUPERVISOR_CMDS},
        "sizes": [], "skipped": [],
    }
    load = MachineLoad()
    per_worker = float(PER_WORKER_GUESS)
    started = time.monotonic()
    for i, n in enumerate(sizes):
        why = fits(n, per_worker)
        if why is not None:
            for m in sizes[i:]:
                data["skipped"].append(f"{m} workers: {why}" if m == n else
                                       f"{m} workers: larger than {n}, which did not fit")
            print(f"skipping {n} workers and larger: {why}", file=sys.stderr)
            break
        print(f"{n} workers ...", file=sys.stderr)
        t0 = time.monotonic()
        result = measure(n, args)
        result["size_s"] = time.monotonic() - t0
        print(f"  done in {result['size_s']:.0f}s", file=sys.stderr)
        data["sizes"].append(result)
        per_worker = max(per_worker, 1.5 * result["memory"]["worker_pss_median"])
    data["total_s"] = time.monotonic() - started
    data["load"] = load.report()

    print_tables(data)
    print(f"\nwhole run: {data['total_s']:.0f}s; {data['load']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"raw figures: {args.out}", file=sys.stderr)
    plot(data, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
