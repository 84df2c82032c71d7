"""End-to-end tasks per second: swarm with 2 worker processes, each task one Messages API
call through the real ``anthropic`` SDK to the fake server (tests/harness/fake_api.py, its own
process, TCP_NODELAY) at 0 s and 1 s latency, by concurrency per worker.

Also the swarm's own CPU per task at 0 s latency: the CPU of the workers, the supervisor
and Redis per task, minus what the SDK call alone costs on the client side (measured in
the same run by a bare AsyncAnthropic loop against the same server).

    python -m bench.throughput                       # full table (a few minutes)
    python -m bench.throughput --latency 1 --concurrency 256 --tasks 3000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil

from bench._common import bench_swarm, machine, mem_of, revision, sigterm_exits, table
from tests.harness.procs import checkout_env, wait_for
from workers import keys

FAKE = ["-P", "-m", "tests.harness.fake_api"]  # run with checkout_env()


class FakeServer:
    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen([sys.executable, *FAKE, "--port", "0", "--latency",
                                      str(latency)], stdout=subprocess.PIPE, text=True,
                                     env=checkout_env())
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"fake API did not start: {line!r}")
        self.url = line.split("listening on", 1)[1].strip()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pool(workers: int, concurrency: int) -> str:
    return (f"bench:\n  model: claude-haiku-4-5\n  workers: {workers}\n"
            f"  concurrency: {concurrency}\n  heartbeat: {{expiry: 15s}}\n"
            "  tools: {read: false, write: false, edit: false, list: false, grep: false}\n")


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def run_swarm(latency: float, concurrency: int, tasks: int, workers: int = 2,
              redis_url: str | None = None) -> dict[str, Any]:
    """``redis_url``: the swarm uses that Redis (SWARM_REDIS_URL), not its own."""
    server = FakeServer(latency)
    env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "bench"}
    if redis_url:
        env["SWARM_REDIS_URL"] = redis_url
    run = bench_swarm("tput", pool(workers, concurrency), env=env)
    try:
        run.start(workers=workers)
        from launcher.client import Swarm

        client = run.redis()
        api = Swarm("tput", client)
        worker_pids = list(run.worker_pids().values())
        redis_pid = run.redis_pid()
        groups = {"workers": worker_pids, "supervisor": [run.pid or 0],
                  "redis": [redis_pid or 0]}
        before = {k: cpu_of(v) for k, v in groups.items()}
        t0 = time.perf_counter()
        ids = api.submit_many([f"task {i}" for i in range(tasks)], pool="bench")
        submitted = time.perf_counter() - t0
        wait_for(lambda: int(client.hget(keys.counts("tput"), "done") or 0)
                 + int(client.hget(keys.counts("tput"), "failed") or 0) >= tasks,
                 tasks / 5 + 120, "every task", every=0.02)
        wall = time.perf_counter() - t0
        after = {k: cpu_of(v) for k, v in groups.items()}
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(keys.task_meta("tput", task_id), "submitted", "started", "finished",
                       "state")
        metas = pipe.execute()
        failed = sum(1 for m in metas if m[3] != "done")
        first = min(float(m[1]) for m in metas if m[1])
        last = max(float(m[2]) for m in metas if m[2])
        service = [float(m[2]) - float(m[1]) for m in metas if m[1] and m[2]]
        end_to_end = [float(m[2]) - float(m[0]) for m in metas if m[0] and m[2]]
        rss = sum(psutil.Process(p).memory_info().rss for p in worker_pids
                  if psutil.pid_exists(p))
        # the trees' memory, just before the swarm is shut down (bench/peers/throughput.py)
        workers_rss, workers_pss = mem_of(list(run.worker_pids().values()))
        tree_rss = mem_of([run.pid])[0] if run.pid else 0
        memory = {"rss": workers_rss, "pss": workers_pss,
                  "supervisor_rss": tree_rss - workers_rss}
        return {
            "latency": latency, "concurrency": concurrency, "tasks": tasks,
            "failed": failed, "tasks_per_s": tasks / (last - first), "wall": wall,
            "submit_s": submitted,
            "service_p50": statistics.median(service), "service_p95": _pct(service, 95),
            "e2e_p50": statistics.median(end_to_end), "e2e_p95": _pct(end_to_end, 95),
            "cpu": {k: after[k] - before[k] for k in groups}, "worker_rss": rss,
            "memory": memory,
        }
    finally:
        run.stop()
        server.close()


def sdk_cpu_per_call(latency: float, concurrency: int, calls: int) -> float:
    """CPU seconds per call of the bare SDK (one client, ``concurrency`` in flight)."""
    server = FakeServer(latency)
    try:
        code = f"""
import asyncio, anthropic, time, os
async def main():
    client = anthropic.AsyncAnthropic(base_url={server.url!r}, api_key='bench', max_retries=4)
    sem = asyncio.Semaphore({concurrency})
    async def one(i):
        async with sem:
            await client.messages.create(model='claude-haiku-4-5', max_tokens=4096,
                messages=[{{'role': 'user', 'content': f'task {{i}}'}}],
                system=[{{'type': 'text', 'text': 'x' * 900, 'cache_control': {{'type': 'ephemeral'}}}}])
    await asyncio.gather(*(one(i) for i in range(50)))
    t = os.times(); c0 = t.user + t.system
    await asyncio.gather(*(one(i) for i in range({calls})))
    t = os.times(); print((t.user + t.system - c0) / {calls})
asyncio.run(main())
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=600, check=True)
        return float(out.stdout.strip())
    finally:
        server.close()


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    sigterm_exits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, action="append")
    parser.add_argument("--concurrency", type=int, action="append")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per run")
    args = parser.parse_args()
    latencies = args.latency or [0.0, 1.0]
    concurrencies = args.concurrency or [1, 8, 64, 256]
    print(f"# throughput, {machine()}, swarm {revision()}")
    rows = []
    results = []
    for latency in latencies:
        for conc in concurrencies:
            in_flight = 2 * conc
            n = args.tasks or (max(40, min(4000, in_flight * 12)) if latency else
                               max(2000, min(6000, in_flight * 40)))
            if latency and conc == 1:
                n = args.tasks or 40
            res = run_swarm(latency, conc, n)
            results.append(res)
            cpu = res["cpu"]
            rows.append([f"{latency:g}s", conc, n, f"{res['tasks_per_s']:.1f}",
                         f"{res['service_p50'] * 1000:.0f}", f"{res['service_p95'] * 1000:.0f}",
                         f"{cpu['workers'] / n * 1000:.2f}", f"{cpu['supervisor'] / n * 1000:.3f}",
                         f"{cpu['redis'] / n * 1000:.3f}", f"{res['worker_rss'] / 2**20:.0f}",
                         res["failed"]])
            print(table(["latency", "conc/worker", "tasks", "tasks/s", "task p50 ms",
                         "task p95 ms", "worker CPU ms/task", "supervisor CPU ms/task",
                         "redis CPU ms/task", "worker RSS MiB", "failed"], rows[-1:]),
                  flush=True)
    print()
    print(table(["latency", "conc/worker", "tasks", "tasks/s", "task p50 ms", "task p95 ms",
                 "worker CPU ms/task", "supervisor CPU ms/task", "redis CPU ms/task",
                 "worker RSS MiB", "failed"], rows))
    zero = [r for r in results if r["latency"] == 0.0]
    if zero:
        best = max(zero, key=lambda r: r["tasks_per_s"])
        sdk = sdk_cpu_per_call(0.0, best["concurrency"], 2000)
        n = best["tasks"]
        own = (best["cpu"]["workers"] - sdk * n) / n
        print(f"\nat 0 s latency, concurrency {best['concurrency']}: workers spend "
              f"{best['cpu']['workers'] / n * 1000:.2f} ms CPU per task; the bare SDK call "
              f"costs {sdk * 1000:.2f} ms CPU; swarm's own per-task CPU in the worker "
              f"{own * 1000:.2f} ms, plus supervisor {best['cpu']['supervisor'] / n * 1000:.3f}"
              f" ms and Redis {best['cpu']['redis'] / n * 1000:.3f} ms")


if __name__ == "__main__":
    main()
