"""Failure recovery, swarm beside RQ, arq, Celery and Dramatiq: how long after a worker
is SIGKILLed (or SIGSTOPped: a hang) in the middle of a task does that task run again?

Each case is its own system with 2 worker units, its own Redis and its own fake API with
a 30 s latency (so the task is mid-call when the fault strikes). One task is submitted;
once the fake API sees its request, the process that sent it (found from the request's
client port) gets the fault; "running again" is the fake API receiving a second request
with the same task text. Faults:

  kill       SIGKILL the process making the call (swarm worker, RQ work horse, Celery pool
             child, Dramatiq worker process, arq worker), its parent left alive
  kill-unit  SIGKILL the whole worker command: that process and its parent (RQ's worker,
             Celery's main process, Dramatiq's main process); n/a for swarm and arq
  hang       SIGSTOP the process making the call

with each system's defaults, then its recovery knobs where they are cheap ("best").
Every case runs at the same time (they mostly wait); faults are 1 s apart.

    python -m bench.peers.recovery              # every case, 420 s cap (~9 min)
    python -m bench.peers.recovery --quick      # swarm + peers' best settings, 45 s cap
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench import throughput as swarm_tp
from bench._common import bench_swarm, machine, sigterm_exits, table, tree
from bench.peers import _peers as P
from tests.harness.procs import wait_for
from tests.harness.swarm import SwarmRun

LATENCY = 30.0
CELERY_BEST = {
    "task_acks_late": True, "task_reject_on_worker_lost": True, "task_acks_on_timeout": False,
    "task_time_limit": 35, "worker_prefetch_multiplier": 1,
    "broker_transport_options": {"visibility_timeout": 40, "unacked_restore_interval": 2,
                                 "unacked_restore_throttle": 1},
}
DRAMATIQ_BEST = {"heartbeat_timeout": 5000, "maintenance_chance": 100_000}

SETTINGS = {
    ("swarm", "default"): "2 workers, heartbeat expiry 15 s, kill_grace 2 s (spec defaults)",
    ("swarm", "best"): "heartbeat expiry 3 s (beat every 1 s)",
    ("rq", "default"): "2 x `rq worker` (fork), job timeout 180 s, no Retry",
    ("rq", "best"): "Retry(max=2), job_timeout 35 s, --job-monitoring-interval 5 "
                    "--maintenance-interval 5 --worker-ttl 20",
    ("arq", "default"): "2 x `arq`, job_timeout 300 s",
    ("arq", "best"): "job_timeout 35 s",
    ("celery", "default"): "2 x `celery worker -c 1` (prefork), acks on receipt",
    ("celery", "best"): "acks_late, reject_on_worker_lost, acks_on_timeout off, time_limit 35 s, "
                        "prefetch 1, visibility_timeout 40 s, restore sweep every 2 s",
    ("dramatiq", "default"): "2 x `dramatiq --processes 1` (8 threads), heartbeat_timeout 60 s, "
                             "maintenance_chance 1000/1e6",
    ("dramatiq", "best"): "heartbeat_timeout 5 s, maintenance_chance 100000/1e6 (10%)",
}

# what the documentation / the code says happens with the defaults
EXPECT = {
    ("swarm", "kill"): "handed back when the supervisor reaps the worker (SIGCHLD)",
    ("swarm", "hang"): "heartbeat key expires (expiry after the last beat; beats every "
                       "expiry/3), SIGABRT+SIGCONT, reaped, handed back",
    ("rq", "kill", "default"): "work horse death: job failed at once; re-run only with Retry",
    ("rq", "kill-unit", "default"): "abandoned job: moved to FailedJobRegistry by a later "
                                    "maintenance (every 10 min, run between dequeues; an idle "
                                    "worker blocks 405 s), after 30+60 s; no Retry",
    ("rq", "hang", "default"): "horse killed at job timeout + 60 s (240 s), then failed",
    ("rq", "kill", "best"): "job failed, Retry re-enqueues it at once",
    ("rq", "kill-unit", "best"): "abandoned once its registry entry expires (monitoring "
                                 "interval + 60 s = 65 s) at the next maintenance, then Retry",
    ("rq", "hang", "best"): "horse killed at job timeout + 60 s (95 s), then Retry",
    ("arq", "kill", "default"): "in-progress key expires after job_timeout + 10 s (310 s)",
    ("arq", "hang", "default"): "in-progress key expires after job_timeout + 10 s (310 s)",
    ("arq", "kill", "best"): "in-progress key expires after 45 s",
    ("arq", "hang", "best"): "in-progress key expires after 45 s",
    ("celery", "kill", "default"): "message acked on receipt: WorkerLostError, task lost",
    ("celery", "kill-unit", "default"): "message acked on receipt: task lost",
    ("celery", "hang", "default"): "no time limit: never",
    ("celery", "kill", "best"): "WorkerLostError, rejected and requeued at once",
    ("celery", "kill-unit", "best"): "restored after visibility_timeout (40 s from delivery)",
    ("celery", "hang", "best"): "hard time limit (35 s) kills the child, requeued",
    ("dramatiq", "kill", "default"): "node shuts down; requeued by a maintenance run (0.1% "
                                     "of commands) once the heartbeat is 60 s old",
    ("dramatiq", "kill-unit", "default"): "same: 60 s heartbeat, then 0.1% chance per command",
    ("dramatiq", "hang", "default"): "same: 60 s heartbeat, then 0.1% chance per command",
    ("dramatiq", "kill", "best"): "5 s heartbeat, then 10% chance per command",
    ("dramatiq", "kill-unit", "best"): "5 s heartbeat, then 10% chance per command",
    ("dramatiq", "hang", "best"): "5 s heartbeat, then 10% chance per command",
}


@dataclass
class Case:
    system: str
    variant: str
    fault: str
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    t_first: float = 0.0
    t_fault: float = 0.0
    t_again: float | None = None
    victim: str = ""
    rerun_by: str = ""
    stopped: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.system}-{self.variant}-{self.fault}"

    @property
    def text(self) -> str:
        return f"recover {self.name}"

    def expectation(self) -> str:
        return (EXPECT.get((self.system, self.fault, self.variant))
                or EXPECT.get((self.system, self.fault)) or "")


def all_cases(quick: bool) -> list[Case]:
    cases = [Case("swarm", "default", "kill"), Case("swarm", "default", "hang"),
             Case("swarm", "best", "hang")]
    for peer in ("rq", "arq", "celery", "dramatiq"):
        for variant in (("best",) if quick else ("default", "best")):
            for fault in ("kill", "kill-unit", "hang"):
                if fault == "kill-unit" and peer == "arq":
                    continue
                cases.append(Case(peer, variant, fault))
    return cases


# --- one system under test ----------------------------------------------------------


class System:
    """A case's system: started, given the task, faulted, stopped."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.folder = P.temp_folder(f"recover-{case.name}-")
        self.procs = P.Procs(self.folder)
        self.fake = P.FakeLog(self.procs, LATENCY)
        self.units: list[subprocess.Popen[Any]] = []
        self.swarm: SwarmRun | None = None
        self.redis: P.PlainRedis | None = None
        self.env: dict[str, str] = {}

    def start(self) -> None:
        c = self.case
        if c.system == "swarm":
            pools = swarm_tp.pool(2, 8)
            if c.variant == "best":
                pools = pools.replace("expiry: 15s", "expiry: 3s")
            name = f"rec{os.getpid() % 1000}{c.fault[:2]}{c.variant[:1]}"
            self.swarm = bench_swarm(name, pools, stop_grace="5s", kill_grace="2s",
                                     env={"ANTHROPIC_BASE_URL": self.fake.url,
                                          "ANTHROPIC_API_KEY": "bench"})
            self.swarm.start(workers=2)
            return
        self.redis = P.PlainRedis(self.procs, self.folder)
        self.env = P.peer_env(self.redis.url, self.fake.url, 8)
        best = c.variant == "best"
        if c.system == "rq":
            cmd = [P.venv_python("rq"), str(P.PEERS_DIR / "tasks_rq.py")]
            if best:
                # an idle worker runs maintenance only between dequeues, and blocks in
                # BLPOP for worker_ttl - 15 s (405 s by default): hence --worker-ttl 20
                cmd += ["--job-monitoring-interval", "5", "--maintenance-interval", "5",
                        "--worker-ttl", "20"]
            cmds = [cmd + ["bench"]] * 2
        elif c.system == "arq":
            if best:
                self.env["BENCH_ARQ"] = json.dumps({"job_timeout": 35})
            cmds = [[P.venv_bin("arq", "arq"), "tasks_arq.WorkerSettings"]] * 2
        elif c.system == "celery":
            if best:
                self.env["BENCH_CELERY"] = json.dumps(CELERY_BEST)
            cmds = [[P.venv_bin("celery", "celery"), "-A", "tasks_celery", "worker", "-c", "1",
                     "-n", f"w{i}@%h"] for i in (1, 2)]
        else:
            if best:
                self.env["BENCH_DRAMATIQ"] = json.dumps(DRAMATIQ_BEST)
            cmds = [[P.venv_bin("dramatiq", "dramatiq"), "tasks_dramatiq", "--queues", "bench",
                     "--processes", "1"]] * 2
        logs = []
        for i, cmd in enumerate(cmds):
            logs.append(f"unit{i}.log")
            self.units.append(self.procs.start(cmd, env=self.env, log=logs[-1]))
        wait_for(lambda: P.peer_ready(c.system, self.redis.client, self.folder, logs, 2), 180,
                 f"{c.name} workers", every=0.2)

    def submit(self) -> None:
        c = self.case
        if self.swarm is not None:
            from launcher.client import Swarm

            Swarm(self.swarm.name, self.swarm.redis()).submit(c.text, pool="bench")
            return
        opts = {"job_timeout": 35, "retry": 2} if (c.system, c.variant) == ("rq", "best") else {}
        subprocess.run([P.venv_python(c.system), str(P.PEERS_DIR / "submit.py"), c.system, "one",
                        c.text, "--opts", json.dumps(opts)], env=self.env, cwd=self.folder,
                       check=True, capture_output=True, timeout=60)

    def unit_of(self, pid: int) -> list[psutil.Process]:
        """The whole worker command (process tree) that ``pid`` belongs to."""
        for unit in self.units:
            family = tree(unit.pid)
            if any(p.pid == pid for p in family):
                return family
        return []

    def describe(self, pid: int | None) -> str:
        if pid is None:
            return "?"
        try:
            proc = psutil.Process(pid)
            parent = proc.parent()
            return f"pid {pid} (parent {parent.pid if parent else '?'})"
        except psutil.Error:
            return f"pid {pid}"

    def close(self) -> None:
        for pid in self.case.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.swarm is not None:
            self.swarm.stop()
        self.procs.close()
        P.remove(self.folder)


def run_case(case: Case, go: threading.Event, slot: Any, cap: float,
             release: threading.Event, abort: threading.Event) -> None:
    system = None
    try:
        system = System(case)
        system.start()
        case.ready.set()
        go.wait()
        if abort.is_set():
            return
        time.sleep(max(0.0, slot() - time.time()))
        system.submit()
        first = system.fake.wait_for(case.text, 1, 60)
        if not first:
            raise RuntimeError("the task never reached the API")
        case.t_first = first[0].t
        pid = P.pid_of_port(first[0].port)
        if pid is None:
            raise RuntimeError("no process owns the request's connection")
        case.victim = system.describe(pid)
        time.sleep(2.0)  # well inside the 30 s call
        case.t_fault = time.time()
        if case.fault == "kill":
            os.kill(pid, signal.SIGKILL)
        elif case.fault == "hang":
            os.kill(pid, signal.SIGSTOP)
            case.stopped.append(pid)
        else:
            family = system.unit_of(pid)
            if not family:
                raise RuntimeError(f"pid {pid} is in no worker unit")
            for proc in family:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        again = system.fake.wait_for(case.text, 2, cap)
        if len(again) >= 2:
            case.t_again = again[1].t
            case.rerun_by = system.describe(P.pid_of_port(again[1].port))
    except Exception as exc:  # noqa: BLE001 - reported in the table
        case.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        case.ready.set()
        case.done.set()
        release.wait()
        if system is not None:
            try:
                system.close()
            except Exception:  # noqa: BLE001
                traceback.print_exc()


def main() -> None:
    sigterm_exits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="swarm + peers' best, 45 s cap")
    parser.add_argument("--cap", type=float, default=None, help="seconds to wait for a re-run")
    parser.add_argument("--system", action="append")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = parser.parse_args()
    cap = args.cap or (45.0 if args.quick else 420.0)
    cases = [c for c in all_cases(args.quick) if not args.system or c.system in args.system]
    P.ensure_venvs(sorted({c.system for c in cases} - {"swarm"}))
    quiet = P.Quiet(0 if args.no_wait else 1200)
    quiet.wait()
    print(f"# peers/recovery{' --quick' if args.quick else ''}: {len(cases)} cases at once, "
          f"fake API latency {LATENCY:g} s, re-run awaited {cap:g} s\n# {machine()}\n"
          f"# {P.peer_versions(sorted({c.system for c in cases} - {'swarm'}))}", flush=True)
    t0 = time.time()
    go, release, abort = threading.Event(), threading.Event(), threading.Event()
    start_at = [time.time() + 3600]  # set for real once every system is up
    threads = []
    slots: dict[str, float] = {}
    # a fault every second, interleaving systems so that their aftermaths do not pile up
    order = sorted(cases, key=lambda c: (["kill", "hang", "kill-unit"].index(c.fault),
                                         c.variant, c.system))
    for i, case in enumerate(order):
        slots[case.name] = float(i)
    try:
        for case in cases:
            t = threading.Thread(target=run_case, daemon=True, args=(
                case, go, lambda n=case.name: start_at[0] + slots[n], cap, release, abort))
            threads.append(t)
        for t in threads:
            t.start()
            time.sleep(0.5)  # do not start 25 systems in the same instant
        for case in cases:
            case.ready.wait(300)
        startup = time.time() - t0
        start_at[0] = time.time() + 1
        go.set()
        for case in cases:
            case.done.wait(len(cases) + 60 + 2 + cap + 60)
        quiet.note()
    except BaseException:
        abort.set()
        raise
    finally:
        go.set()
        release.set()
        deadline = time.time() + 180
        for t in threads:
            t.join(max(0.1, deadline - time.time()))

    rows = []
    for case in order:
        if case.error:
            took = f"error: {case.error[:80]}"
        elif case.t_again is None:
            took = f"not re-run within {cap:g} s"
        else:
            took = f"{case.t_again - case.t_fault:.2f} s"
        rows.append([case.system, case.variant, case.fault, took, case.expectation(),
                     case.victim, case.rerun_by or "-"])
    print(f"\n## Fault to re-run (startup of all {len(cases)} systems: {startup:.0f} s)\n")
    print(table(["system", "settings", "fault", "fault to re-run", "expected (docs/code)",
                 "faulted process", "re-run by"], rows))
    print("\n## Settings\n")
    print(table(["system", "variant", "settings"],
                [[s, v, d] for (s, v), d in SETTINGS.items()
                 if any(c.system == s and c.variant == v for c in cases)]))
    print(f"\n# {quiet.report()}; total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
