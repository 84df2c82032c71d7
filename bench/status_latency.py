"""`swarm status` wall time with 200 worker slots (goal: < 300 ms).

    python -m bench.status_latency [--workers 200] [--pools 4] [--runs 10]

Starts ``swarm up -d`` with ``--workers`` idle workers split over ``--pools`` pools,
then times, as separate processes the way a user runs them (the ``swarm`` console
script, output to a pipe), ``swarm status`` and ``swarm status --json``: one warm-up
run, then the median, p95 and min of ``--runs`` runs. For scale it also times
``python -c pass``, ``swarm --help`` (interpreter + CLI imports, no Redis), and in this
process: ``launcher.status.collect()`` (the two Redis round trips) and rendering the
table. Finally it lists the biggest imports of ``swarm status`` (``-X importtime``).

Checks free memory first: forked workers share most pages, but each still costs
several MiB of its own.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench._common import (
    SWARM_SCRIPT,
    MachineLoad,
    bench_swarm,
    machine,
    mib,
    ms,
    pool_yaml,
    sigterm_exits,
    summary,
    table,
    time_runs,
)
from tests.harness.procs import PYTHON, cli_env

PER_WORKER_GUESS = 25 * 2**20  # own (unshared) memory per forked worker, generous


def import_breakdown(cwd: Path, top: int = 8) -> list[tuple[str, float]]:
    """The heaviest top-level imports of `swarm status`, cumulative seconds."""
    done = subprocess.run([PYTHON, "-X", "importtime", "-m", "launcher.cli", "status"],
                          cwd=cwd, env=cli_env(), capture_output=True, text=True)
    found = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "cumulative" in line:
            continue
        name = parts[2]
        if name[1:2] != " ":  # nested imports are indented; top-level ones are not
            found.append((name.strip(), int(parts[1]) / 1e6))
    return sorted(found, key=lambda kv: -kv[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds to let the workers finish booting before timing")
    args = parser.parse_args()
    sigterm_exits()

    print(machine())
    available = psutil.virtual_memory().available
    need = args.workers * PER_WORKER_GUESS
    print(f"memory check: {mib(available)} available, {args.workers} workers need about "
          f"{mib(need)} at {mib(PER_WORKER_GUESS)} each (generous)")
    if need > available * 0.8:
        raise SystemExit("not enough free memory for that many workers; use --workers")

    sizes = [args.workers // args.pools + (1 if i < args.workers % args.pools else 0)
             for i in range(args.pools)]
    pools = "".join(pool_yaml(f"p{i + 1}", n) for i, n in enumerate(sizes) if n)
    run = bench_swarm("st", pools)
    try:
        run.start(workers=args.workers)
        print(f"{args.workers} workers up in {run.startup_seconds:.1f}s; settling "
              f"{args.settle:g}s", file=sys.stderr)
        time.sleep(args.settle)
        sup = psutil.Process(run.pid)
        sup_cpu0, t0 = sum(sup.cpu_times()[:2]), time.monotonic()
        load0 = psutil.getloadavg()
        load = MachineLoad()

        def check_table(out: str) -> None:
            rows = sum(1 for line in out.splitlines() if line.startswith("p") and "-" in line[:6])
            assert rows == args.workers, f"table has {rows} worker rows"

        def check_json(out: str) -> None:
            assert len(json.loads(out)["workers"]) == args.workers

        results = {
            "python -c pass": time_runs([PYTHON, "-c", "pass"], run.folder, args.runs),
            "swarm --help": time_runs([SWARM_SCRIPT, "--help"], run.folder, args.runs),
            "swarm status": time_runs([SWARM_SCRIPT, "status"], run.folder, args.runs,
                                      check_table),
            "swarm status --json": time_runs([SWARM_SCRIPT, "status", "--json"], run.folder,
                                             args.runs, check_json),
        }
        sup_cpu = 100 * (sum(sup.cpu_times()[:2]) - sup_cpu0) / (time.monotonic() - t0)
        load_report = load.report()

        from rich.console import Console

        from launcher.status import collect, render

        client = run.redis()
        collect(client, run.name)
        collect_times, render_times = [], []
        for _ in range(50):
            start = time.perf_counter()
            view = collect(client, run.name)
            collect_times.append(time.perf_counter() - start)
        json_times, dumps_times = [], []
        for _ in range(10):
            start = time.perf_counter()
            Console(file=io.StringIO(), width=200).print(render(view))
            render_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            Console(file=io.StringIO(), width=200).print_json(json.dumps(view))
            json_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            io.StringIO().write(json.dumps(view, indent=2))
            dumps_times.append(time.perf_counter() - start)
        imports = import_breakdown(run.folder)
    finally:
        run.stop()

    print(f"\nsettings: {args.workers} workers in {len(sizes)} pools ({'/'.join(map(str, sizes))}); "
          f"{args.runs} timed runs after one warm-up, as subprocesses with output to a pipe; "
          f"load avg (1 min) before the runs {load0[0]:.2f}; supervisor CPU meanwhile {sup_cpu:.1f}% "
          "of one core")
    print(load_report)
    print("\n## Wall time (separate processes)\n")
    rows = []
    for label, values in results.items():
        s = summary(values)
        rows.append([f"`{label}`", ms(s["median"]), ms(s["p95"]), ms(s["min"])])
    print(table(["command", "median", "p95", "min"], rows))
    print("\n## In-process parts\n")
    print(table(["part", "median", "max"], [
        [f"`collect()` ({args.workers} slots, 2 round trips)",
         f"{statistics.median(collect_times) * 1000:.1f} ms", ms(max(collect_times))],
        [f"`render()` + print of {args.workers} rows (rich)",
         f"{statistics.median(render_times) * 1000:.1f} ms", ms(max(render_times))],
        ["`--json` output: rich `print_json` (what the CLI does)",
         f"{statistics.median(json_times) * 1000:.1f} ms", ms(max(json_times))],
        ["`--json` output: plain `json.dumps(indent=2)` (for comparison)",
         f"{statistics.median(dumps_times) * 1000:.1f} ms", ms(max(dumps_times))],
    ]))
    print("\n## Heaviest top-level imports of `swarm status` (cumulative, one run)\n")
    print(table(["module", "import time"], [[name, ms(sec)] for name, sec in imports]))


if __name__ == "__main__":
    main()
