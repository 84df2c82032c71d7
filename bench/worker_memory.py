"""Memory per worker: swarm's forked workers vs workers started as fresh interpreters.

    python -m bench.worker_memory [--workers 16] [--settle 30]

For each variant, ``--workers`` idle workers are started and, once every one has
beaten, their memory is read with psutil ``memory_full_info()`` twice: 2 s after they
are all up, and ``--settle`` seconds after that (forked pages are shared copy-on-write,
so a fork's own memory can grow as it runs). Reported per worker (median) and summed:

* RSS: resident pages, shared ones counted in every process that maps them;
* PSS: each shared page divided among the processes that share it: the sum of PSS is
  the real total (the supervisor's PSS is added for the forked variants, since it holds
  the other share of the pages);
* USS: the pages only that process has, i.e. what killing it would free.

Variants:

1. swarm as shipped: ``swarm up -d``; the supervisor imports ``workers.worker`` and the
   ``anthropic`` SDK, then forks.
2. the same, but each worker runs one full ``gc.collect()`` at boot (on_start hook
   tests.harness.hooks:full_gc): what any long-running worker eventually does by itself, and
   which writes to every inherited object, so their pages get copied.
3. as 2, but the supervisor calls ``gc.freeze()`` after its preload
   (bench/patched_launcher.py), so inherited objects are out of the child's collector's
   reach.
4. as 3, and the supervisor also preloads what a worker imports at boot after the fork
   (``workers.tasks``, ``workers.agent``, ``workers.tools``, the SDK's HTTP stack).
5. swarm, supervisor does not preload the SDK (the worker imports it after the fork).
6. fresh interpreters: ``python -m bench.standalone_worker`` as plain subprocesses (what
   supervisord would start), importing the same modules.

Workers get a dummy ANTHROPIC_API_KEY so they build their SDK client at boot as in real
use (no request is made: no task is submitted).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench._common import (
    PATCHED_LAUNCHER,
    LoneRedis,
    MachineLoad,
    bench_swarm,
    kill_leftovers,
    machine,
    pool_yaml,
    sigterm_exits,
    standalone_cmd,
    standalone_env,
    table,
)
from tests.harness.procs import wait_for
from workers import keys


def snapshot(pids: list[int], supervisor: int | None) -> dict[str, Any]:
    workers = [psutil.Process(pid).memory_full_info() for pid in pids]
    sup = psutil.Process(supervisor).memory_full_info() if supervisor else None
    return {"workers": workers, "supervisor": sup}


def measure(pids: list[int], supervisor: int | None, settle: float) -> list[dict[str, Any]]:
    time.sleep(2)
    first = snapshot(pids, supervisor)
    time.sleep(settle)
    return [first, snapshot(pids, supervisor)]


def forked(n: int, settle: float, patch: dict[str, str] | None = None,
           full_gc: bool = False) -> dict[str, Any]:
    """``patch``: run the supervisor through bench/patched_launcher.py with these
    settings; ``full_gc``: each worker does one full collection at boot."""
    env = dict(patch or {})
    hook = "tests.harness.hooks:full_gc" if full_gc else None
    run = bench_swarm("mem", pool_yaml("m", n, on_start=hook),
                   launcher=PATCHED_LAUNCHER if patch else None, env=env)
    try:
        run.start(workers=n)
        up = run.startup_seconds
        pids = list(run.worker_pids().values())
        snaps = measure(pids, run.pid, settle)
        assert sorted(run.worker_pids().values()) == sorted(pids), "a worker restarted"
        return {"snaps": snaps, "up": up}
    finally:
        run.stop()


def fresh(n: int, settle: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="swarm-bench-mem-"))
    redis_server = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_server = LoneRedis(tmp)
        client = redis_server.client()
        env = standalone_env(redis_server.password)
        start = time.perf_counter()
        with open(tmp / "workers.log", "wb") as log:
            for i in range(1, n + 1):
                procs.append(subprocess.Popen(
                    standalone_cmd(f"m-{i}", redis_server.url, swarm="mem", expiry=15),
                    cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT))
        wait_for(lambda: all(client.exists(keys.heartbeat(f"m-{i}")) for i in range(1, n + 1)),
                 300, "every fresh worker to beat", every=0.1)
        up = time.perf_counter() - start
        snaps = measure([p.pid for p in procs], None, settle)
        assert all(p.poll() is None for p in procs), "a fresh worker exited"
        return {"snaps": snaps, "up": up}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if redis_server is not None:
            redis_server.close()
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def mib(num: float) -> str:
    return f"{num / 2**20:.1f}"


def rows_for(label: str, result: dict[str, Any], settle: float) -> list[list[str]]:
    rows = []
    for when, snap in zip(("+2 s", f"+{settle + 2:g} s"), result["snaps"]):
        w = snap["workers"]
        sup = snap["supervisor"]
        rss = [m.rss for m in w]
        pss = [m.pss for m in w]
        uss = [m.uss for m in w]
        total = sum(pss) + (sup.pss if sup else 0)
        rows.append([
            label, when,
            mib(statistics.median(rss)), mib(statistics.median(pss)), mib(statistics.median(uss)),
            mib(sum(rss)), mib(sum(uss)),
            f"{mib(sup.rss)} / {mib(sup.uss)}" if sup else "-",
            mib(total), f"{result['up']:.1f} s",
        ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds between the two measurements")
    args = parser.parse_args()
    sigterm_exits()
    print(machine())
    n, settle = args.workers, args.settle

    freeze = {"SWARM_BENCH_GC_FREEZE": "1"}
    variants = [
        ("swarm fork (as shipped)", lambda: forked(n, settle)),
        ("swarm fork, worker did a full gc", lambda: forked(n, settle, full_gc=True)),
        ("swarm fork + gc.freeze(), worker did a full gc",
         lambda: forked(n, settle, freeze, full_gc=True)),
        ("swarm fork + gc.freeze() + preload all, worker did a full gc",
         lambda: forked(n, settle, {**freeze, "SWARM_BENCH_PRELOAD_ALL": "1"}, full_gc=True)),
        ("swarm fork, no SDK preload", lambda: forked(n, settle, {"SWARM_BENCH_NO_SDK": "1"})),
        ("fresh interpreters (as under supervisord)", lambda: fresh(n, settle)),
    ]
    load = MachineLoad()
    rows = []
    for label, measure_variant in variants:
        print(f"{label} ...", file=sys.stderr)
        rows += rows_for(label, measure_variant(), settle)

    print(f"\nsettings: {n} idle workers per variant, heartbeat expiry 15s / interval 5s; "
          "MiB; per-worker columns are medians over the workers")
    print(load.report())
    print("\n## Memory\n")
    print(table(["variant", "when", "RSS/worker", "PSS/worker", "USS/worker",
                 f"sum RSS ({n})", f"sum USS ({n})", "supervisor RSS / USS",
                 "total PSS (workers + supervisor)", "all up in"], rows))


if __name__ == "__main__":
    main()
