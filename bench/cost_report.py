"""`swarm cost` wall time with 10k, 100k and 1M recorded calls, and Redis memory per
recorded call.

The calls are recorded through the workers' own RECORD script (pipelined, so a million
take a minute rather than the hours real API calls would), spread like a real swarm's:
64 workers in 4 pools, 3 models, one call per task on average 1.5, over the last hour's
minute buckets. Then `swarm cost` (the console script, as a user runs it) is timed.

    python -m bench.cost_report                 # 10k, 100k, 1M
    python -m bench.cost_report --calls 10000
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from bench._common import bench_swarm, machine, revision, sigterm_exits, table, time_runs
from tests.harness.procs import SWARM_CLI
from workers import keys, ledger_scripts

MODELS = ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5"]


def record(client, name: str, start: int, count: int, rng: random.Random) -> None:
    sha = client.script_load(ledger_scripts.RECORD)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + count):
        worker = rng.randrange(64)
        pool = f"p{worker % 4}"
        model = MODELS[worker % 3]
        minute = int((now - rng.random() * 3600) // 60)
        k = [keys.inflight(name), keys.ledger(name), keys.ledger_minute(name, minute),
             keys.task_meta(name, f"task_{i * 2 // 3:09d}"), keys.task_costs(name)]
        a = ["", f"{pool}-{worker // 4 + 1}", pool, model, f"task_{i * 2 // 3:09d}",
             rng.randint(100, 5000), rng.randint(10, 2000), rng.choice([0, 0, 1000]),
             rng.choice([0, 3000]), rng.randint(10_000, 9_000_000), rng.randint(50_000, 20_000_000),
             "", keys.LEDGER_MINUTE_TTL]
        pipe.evalsha(sha, len(k), *k, *a)
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()


def time_cli(folder: Path, *args: str, runs: int = 7) -> tuple[float, float]:
    walls = time_runs([*SWARM_CLI, "cost", *args], folder, runs, warmups=0)
    return statistics.median(walls), max(walls)


def main() -> None:
    sigterm_exits()
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, action="append")
    args = parser.parse_args()
    targets = sorted(args.calls or [10_000, 100_000, 1_000_000])
    print(f"# swarm cost latency, {machine()}, swarm {revision()}")
    run = bench_swarm("costbench", "w:\n  model: claude-haiku-4-5\n  workers: 1\n")
    rows = []
    try:
        run.start(workers=1)
        client = run.redis()
        rng = random.Random(1)
        base = int(client.info("memory")["used_memory"])
        done = 0
        for target in targets:
            t0 = time.perf_counter()
            record(client, "costbench", done, target - done, rng)
            fill = time.perf_counter() - t0
            done = target
            used = int(client.info("memory")["used_memory"]) - base
            ledger_fields = client.hlen(keys.ledger("costbench"))
            t_read = time.perf_counter()
            from launcher import costs

            costs.rows_by(costs.read_counters(client, "costbench"), "worker")
            in_process = time.perf_counter() - t_read
            by_worker = time_cli(run.folder)
            by_task = time_cli(run.folder, "--by", "task")
            since = time_cli(run.folder, "--since", "1h", "--by", "pool")
            rows.append([f"{target:,}", f"{by_worker[0] * 1000:.0f} ({by_worker[1] * 1000:.0f})",
                         f"{by_task[0] * 1000:.0f}", f"{since[0] * 1000:.0f}",
                         f"{in_process * 1000:.1f}", ledger_fields,
                         f"{used / target:.0f}", f"{fill:.0f}"])
            print(table(["recorded calls", "swarm cost ms, median (max)", "--by task ms",
                         "--since 1h --by pool ms", "read+aggregate in process ms",
                         "ledger fields", "Redis bytes per call", "fill s"], rows[-1:]),
                  flush=True)
    finally:
        run.stop()
    print()
    print(table(["recorded calls", "swarm cost ms, median (max)", "--by task ms",
                 "--since 1h --by pool ms", "read+aggregate in process ms", "ledger fields",
                 "Redis bytes per call", "fill s"], rows))


if __name__ == "__main__":
    main()
