"""Crash-to-replacement and hang-to-replacement latency: swarm vs supervisord.

    python -m bench.restart_latency [--events 20] [--expiry 3] [--gap 2]

What is measured, for one worker slot, event after event:

* crash: SIGKILL the worker; the latency runs from the kill until the replacement's
  first heartbeat is in Redis, i.e. until the worker hash ``swarm:{name}:worker:{id}``
  is written by a new pid while ``worker:status:{id}`` exists. The moment is taken from
  Redis keyspace notifications on that hash (no polling), so it is when the beat
  *arrived in Redis*, as any watcher would see it.
* hang: SIGSTOP the worker (alive, but its event loop no longer runs); the latency runs
  from the SIGSTOP until the replacement's first heartbeat, and is set against the
  heartbeat expiry (goal: within expiry + 1 s). The key expires ``expiry`` after the
  *last* beat, which was up to one interval before the SIGSTOP, so a latency a little
  under the expiry is normal. SIGSTOP also sends the parent a SIGCHLD (CLD_STOPPED),
  which wakes swarm's supervisor, so the same is done a second way, as a real hang:
  SIGUSR1, which the on_start hook tests.harness.hooks:block_on_usr1 turns into a blocked
  event loop.

swarm runs the worker as its supervisor's fork (``swarm up -d``); supervisord runs the
same worker as a fresh interpreter (``python -m bench.standalone_worker``, with autorestart) against
a separate embedded Redis. supervisord has no notion of a heartbeat, so for the hang it
is shown that it never replaces the worker within 2x expiry. A what-if crash run starts
swarm's supervisor through ``python -m bench.patched_launcher`` with SWARM_BENCH_PRELOAD_ALL=1 (it
also preloads what a worker imports at boot), to show what that preload gap costs.
Where the time goes is read from swarm's event stream and supervisord's log.

Restart policy used for swarm (reported in the output): backoff initial 100ms (the
default) doubling within ``reset_after`` = 1s, max_restarts 1000 in a 10s window, so 20
kills never make the slot FATAL; events are ``--gap`` seconds apart (> reset_after) so
every restart starts from the initial backoff. supervisord: autorestart=true,
startsecs=1; the gap also lets each new process reach RUNNING (past startsecs).

Needs supervisor (``pip install supervisor``, the ``bench`` extra) for the comparison.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._common import (
    PATCHED_LAUNCHER,
    LoneRedis,
    MachineLoad,
    bench_swarm,
    kill_leftovers,
    machine,
    ms,
    pool_yaml,
    sigterm_exits,
    standalone_cmd,
    standalone_env,
    summary,
    table,
)
from tests.harness.procs import PYTHON, wait_for
from workers import keys

SUPERVISORD = str(Path(PYTHON).with_name("supervisord"))
SUPERVISORCTL = str(Path(PYTHON).with_name("supervisorctl"))


def iso_ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def run_host() -> str:
    """The host name the swarm this benchmark starts runs under."""
    from launcher.spec import machine_host

    return os.environ.get("SWARM_HOST") or machine_host()


class BeatWatch:
    """Says when a worker's report hash is written by a new pid (its first heartbeat),
    from keyspace notifications on that hash."""

    def __init__(self, client: Any, swarm: str, worker_id: str) -> None:
        self.client = client
        self.hash_key = keys.worker(swarm, worker_id)
        self.beat_key = keys.heartbeat(worker_id)
        client.config_set("notify-keyspace-events", "Kh")
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(f"__keyspace@0__:{self.hash_key}")
        self.pubsub.get_message(timeout=1.0)  # the subscribe confirmation

    def current(self) -> tuple[int | None, str | None]:
        pid, beat = self.client.hmget(self.hash_key, "pid", "beat")
        return (int(pid) if pid else None), beat

    def drain(self) -> None:
        while self.pubsub.get_message(timeout=0) is not None:
            pass

    def wait_new(self, old_pid: int, timeout: float) -> tuple[float, int, str] | None:
        """(perf_counter when seen, new pid, the worker's own beat timestamp) or None."""
        deadline = time.perf_counter() + timeout
        while (left := deadline - time.perf_counter()) > 0:
            msg = self.pubsub.get_message(timeout=left)
            seen = time.perf_counter()
            if msg is None or msg.get("data") != "hset":
                continue
            pid, beat = self.current()
            if pid is not None and pid != old_pid and self.client.exists(self.beat_key):
                return seen, pid, beat or ""
        return None

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:  # noqa: BLE001
            pass


JITTER = 1.0  # set to the heartbeat interval by main()


def pause(gap: float) -> None:
    """``gap`` seconds plus up to one heartbeat interval at random, so events do not fall
    at a fixed phase of the interval (which would bias the hang latency)."""
    time.sleep(gap + random.uniform(0.0, JITTER))


def crash_events(watch: BeatWatch, n: int, gap: float, label: str) -> list[dict[str, Any]]:
    results = []
    for i in range(n):
        pid, _ = watch.current()
        assert pid is not None
        watch.drain()
        wall = time.time()
        start = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        got = watch.wait_new(pid, timeout=30)
        if got is None:
            print(f"  {label} crash {i + 1}: NOT replaced within 30s", file=sys.stderr)
            results.append({"old": pid, "latency": None})
            break
        seen, new, beat = got
        results.append({"old": pid, "new": new, "wall": wall, "latency": seen - start,
                        "beat_latency": iso_ts(beat) - wall, "beat": iso_ts(beat)})
        print(f"  {label} crash {i + 1:2d}: pid {pid} -> {new} in {ms(seen - start)}",
              file=sys.stderr)
        pause(gap)
    return results


def hang_events(watch: BeatWatch, n: int, gap: float, expiry: float, wait: float,
                label: str, expect_replacement: bool, mode: str = "sigstop") -> list[dict[str, Any]]:
    """mode "sigstop": SIGSTOP the worker; "blocked": SIGUSR1, which blocks its event loop
    (tests.harness.hooks:block_on_usr1 must be its on_start hook)."""
    results = []
    for i in range(n):
        pid, last_beat = watch.current()
        assert pid is not None and last_beat
        watch.drain()
        wall = time.time()
        start = time.perf_counter()
        got = None
        os.kill(pid, signal.SIGSTOP if mode == "sigstop" else signal.SIGUSR1)
        try:
            got = watch.wait_new(pid, timeout=wait)
        finally:
            if mode == "sigstop" and (not expect_replacement or got is None):
                os.kill(pid, signal.SIGCONT)  # let the old one go on (or be killed)
        row: dict[str, Any] = {"old": pid, "wall": wall, "last_beat": iso_ts(last_beat)}
        if got is None:
            row["latency"] = None
            print(f"  {label} hang ({mode}) {i + 1:2d}: pid {pid} not replaced within {wait:g}s",
                  file=sys.stderr)
        else:
            seen, new, beat = got
            row.update(new=new, latency=seen - start, beat=iso_ts(beat))
            print(f"  {label} hang ({mode}) {i + 1:2d}: pid {pid} -> {new} in "
                  f"{ms(seen - start)} (expiry {expiry:g}s)", file=sys.stderr)
        results.append(row)
        if not expect_replacement:
            wait_for(lambda: watch.client.exists(watch.beat_key), 10, "the worker to beat again")
        pause(gap)
    return results


# --- swarm -------------------------------------------------------------------------


def swarm_events(args: argparse.Namespace, preload_all: bool = False) -> dict[str, Any]:
    """``preload_all``: what-if run, crashes only, with the supervisor started through
    ``python -m bench.patched_launcher`` so it also preloads what a worker imports at boot."""
    pools = pool_yaml("w", 1, expiry=f"{args.expiry:g}s", backoff_initial=args.backoff_initial,
                      backoff_max="30s", max_restarts=1000, window="10s", reset_after="1s",
                      on_start="tests.harness.hooks:block_on_usr1")
    env: dict[str, str] = {}
    launcher = None
    if preload_all:
        env["SWARM_BENCH_PRELOAD_ALL"] = "1"
        launcher = PATCHED_LAUNCHER
    run = bench_swarm("rl", pools, kill_grace="1s", env=env, launcher=launcher)
    watch = None
    label = "swarm" + (" (preload all)" if preload_all else "")
    try:
        run.start(workers=1)
        watch = BeatWatch(run.redis(), "rl", keys.worker_id("rl", run_host(), "w-1"))
        print(f"{label}: supervisor pid {run.pid}, worker pid {watch.current()[0]}",
              file=sys.stderr)
        crash = crash_events(watch, args.events, args.gap, label)
        if preload_all:
            events = [fields for _, fields in run.redis().xrange(keys.events("rl"))]
            return {"crash": crash, "hang": [], "blocked": [], "events": events}
        hang = hang_events(watch, args.hang_events, args.gap, args.expiry,
                           wait=3 * args.expiry + 10, label="swarm", expect_replacement=True)
        blocked = hang_events(watch, args.hang_events, args.gap, args.expiry,
                              wait=3 * args.expiry + 10, label="swarm", expect_replacement=True,
                              mode="blocked")
        events = [fields for _, fields in run.redis().xrange(keys.events("rl"))]
        status = run.status()["workers"][0]
        return {"crash": crash, "hang": hang, "blocked": blocked, "events": events,
                "status": status}
    finally:
        if watch:
            watch.close()
        run.stop()


def swarm_breakdown(result: dict[str, Any], expiry: float, hang_key: str = "hang"
                    ) -> dict[str, list[float]]:
    """Where the time goes, from the supervisor's own event stream (wall clock)."""
    by: dict[tuple[str, str], dict[str, str]] = {}
    for ev in result["events"]:
        if "pid" in ev:
            by[(ev["kind"], ev["pid"])] = ev
    parts: dict[str, list[float]] = {k: [] for k in (
        "crash: kill -> reaped", "crash: reaped -> forked (backoff)", "crash: forked -> first beat",
        "hang: stop -> key expired", "hang: key expired -> hang seen", "hang: seen -> exited",
        "hang: exited -> forked (backoff)", "hang: forked -> first beat")}
    for row in result["crash"]:
        if row.get("latency") is None:
            continue
        exit_ = by.get(("exit", str(row["old"])))
        fork = by.get(("restart", str(row["new"])))
        if exit_ and fork:
            parts["crash: kill -> reaped"].append(float(exit_["ts"]) - row["wall"])
            parts["crash: reaped -> forked (backoff)"].append(float(fork["ts"]) - float(exit_["ts"]))
            parts["crash: forked -> first beat"].append(row["beat"] - float(fork["ts"]))
    for row in result[hang_key]:
        if row.get("latency") is None:
            continue
        hang = by.get(("hang", str(row["old"])))
        exit_ = by.get(("exit", str(row["old"])))
        fork = by.get(("restart", str(row["new"])))
        if hang and exit_ and fork:
            expired = row["last_beat"] + expiry
            parts["hang: stop -> key expired"].append(expired - row["wall"])
            parts["hang: key expired -> hang seen"].append(float(hang["ts"]) - expired)
            parts["hang: seen -> exited"].append(float(exit_["ts"]) - float(hang["ts"]))
            parts["hang: exited -> forked (backoff)"].append(float(fork["ts"]) - float(exit_["ts"]))
            parts["hang: forked -> first beat"].append(row["beat"] - float(fork["ts"]))
    return parts


# --- supervisord -------------------------------------------------------------------

SUPERVISORD_CONF = """\
[unix_http_server]
file={tmp}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
silent=true
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
childlogdir={tmp}
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{tmp}/supervisor.sock

[program:w]
command={command}
directory={tmp}
autostart=true
autorestart=true
startsecs=1
startretries=3
stopsignal=TERM
stopwaitsecs=5
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={tmp}/w.log
"""


def supervisord_events(args: argparse.Namespace, n_hang: int) -> dict[str, Any]:
    if not Path(SUPERVISORD).exists():
        raise SystemExit("supervisord is not installed: .venv/bin/pip install -e '.[bench]'")
    tmp = Path(tempfile.mkdtemp(prefix="swarm-bench-sv-"))
    redis_server = supervisord = watch = None
    try:
        redis_server = LoneRedis(tmp)
        command = " ".join(standalone_cmd("w-1", redis_server.url, swarm="svbench",
                                          expiry=args.expiry))
        conf = tmp / "supervisord.conf"
        conf.write_text(SUPERVISORD_CONF.format(tmp=tmp, command=command))
        client = redis_server.client()
        watch = BeatWatch(client, "svbench", "w-1")
        env = standalone_env(redis_server.password)
        with open(tmp / "supervisord.out", "wb") as out:
            supervisord = subprocess.Popen([SUPERVISORD, "-c", str(conf)], cwd=tmp, env=env,
                                           stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT)
        wait_for(lambda: client.exists(keys.heartbeat("w-1")), 30, "the first beat")
        time.sleep(args.gap)  # past startsecs: RUNNING
        label = "supervisord"
        print(f"{label}: supervisord pid {supervisord.pid}, worker pid {watch.current()[0]}",
              file=sys.stderr)
        crash = crash_events(watch, args.events, args.gap, label)
        hang = hang_events(watch, n_hang, args.gap, args.expiry, wait=2 * args.expiry,
                           label=label, expect_replacement=False)
        ctl = subprocess.run([SUPERVISORCTL, "-c", str(conf), "status", "w"],
                             capture_output=True, text=True).stdout.strip()
        return {"crash": crash, "hang": hang, "log": (tmp / "supervisord.log").read_text(),
                "ctl": ctl}
    finally:
        if watch:
            watch.close()
        if supervisord is not None:
            if supervisord.poll() is None:
                supervisord.send_signal(signal.SIGTERM)
            try:
                supervisord.wait(15)
            except subprocess.TimeoutExpired:
                supervisord.kill()
                supervisord.wait(5)
        if redis_server is not None:
            redis_server.close()
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def supervisord_breakdown(result: dict[str, Any]) -> dict[str, list[float]]:
    """From supervisord's own log (millisecond timestamps, local time)."""
    exited: list[float] = []
    spawned: dict[int, float] = {}
    for line in result["log"].splitlines():
        m = re.match(r"^(\S+ \S+),(\d{3}) \w+ (exited|spawned): .*", line)
        if not m:
            continue
        ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
        if m.group(3) == "exited":
            exited.append(ts)
        else:
            pid = re.search(r"with pid (\d+)", line)
            if pid:
                spawned[int(pid.group(1))] = ts
    parts: dict[str, list[float]] = {"crash: kill -> exit noticed": [],
                                     "crash: noticed -> spawned": [],
                                     "crash: spawned -> first beat": []}
    for row in result["crash"]:
        if row.get("latency") is None or row["new"] not in spawned:
            continue
        spawn = spawned[row["new"]]
        noticed = max((t for t in exited if t <= spawn + 0.001), default=None)
        if noticed is None:
            continue
        parts["crash: kill -> exit noticed"].append(noticed - row["wall"])
        parts["crash: noticed -> spawned"].append(spawn - noticed)
        parts["crash: spawned -> first beat"].append(row["beat"] - spawn)
    return parts


# --- report ------------------------------------------------------------------------


def latency_row(label: str, rows: list[dict[str, Any]], total: int) -> list[Any]:
    values = [r["latency"] for r in rows if r.get("latency") is not None]
    s = summary(values)
    return [label, f"{len(values)}/{total}", ms(s["median"]), ms(s["p95"]), ms(s["min"]),
            ms(s["max"])]


def breakdown_rows(parts: dict[str, list[float]]) -> list[list[Any]]:
    return [[name, len(v), ms(statistics.median(v)), ms(max(v))] for name, v in parts.items() if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20, help="crash events per supervisor")
    parser.add_argument("--hang-events", type=int, default=20, help="hang events for swarm")
    parser.add_argument("--supervisord-hang-events", type=int, default=3)
    parser.add_argument("--expiry", type=float, default=3.0, help="heartbeat expiry, seconds")
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between events")
    parser.add_argument("--backoff-initial", default="100ms", help="swarm restart.backoff.initial")
    parser.add_argument("--no-supervisord", action="store_true")
    parser.add_argument("--no-what-if", action="store_true",
                        help="skip the crash run with the supervisor preloading everything")
    args = parser.parse_args()
    sigterm_exits()
    global JITTER
    JITTER = args.expiry / 3

    print(machine())
    load = MachineLoad()
    print(f"settings: heartbeat expiry {args.expiry:g}s, interval {args.expiry / 3:g}s; "
          f"swarm restart backoff initial {args.backoff_initial} max 30s (x2 per restart "
          f"within reset_after 1s), max_restarts 1000 / window 10s; events {args.gap:g}s apart "
          f"after each replacement, plus 0-{JITTER:g}s at random")
    sw = swarm_events(args)
    what_if = None if args.no_what_if else swarm_events(args, preload_all=True)
    sv = None
    if not args.no_supervisord:
        sv = supervisord_events(args, n_hang=args.supervisord_hang_events)

    print("\n## Crash (SIGKILL) -> replacement's first heartbeat in Redis\n")
    rows = [latency_row("swarm (fork of the preloaded supervisor)", sw["crash"], args.events)]
    if what_if:
        rows.append(latency_row("swarm, what-if: supervisor also preloads the worker's boot "
                                "imports", what_if["crash"], args.events))
    if sv:
        rows.append(latency_row("supervisord (fresh interpreter)", sv["crash"], args.events))
    print(table(["supervisor", "replaced", "median", "p95", "min", "max"], rows))
    base = statistics.median([r["latency"] for r in sw["crash"] if r.get("latency")])
    if sv:
        other = statistics.median([r["latency"] for r in sv["crash"] if r.get("latency")])
        print(f"\nsupervisord / swarm, median: {other / base:.1f}x")
    beat_lag = [r["latency"] - r["beat_latency"] for r in sw["crash"] if r.get("latency")]
    print(f"\n(check: the worker's own beat timestamp is {ms(statistics.median(beat_lag))} "
          f"median before the beat is seen in Redis)")

    print("\n## Hang -> replacement's first heartbeat in Redis\n")
    rows = []
    for label, key in (("swarm, SIGSTOP", "hang"), ("swarm, blocked event loop", "blocked")):
        ok = [r["latency"] for r in sw[key] if r.get("latency") is not None]
        s = summary(ok)
        within = sum(1 for v in ok if v <= args.expiry + 1)
        over = [v - args.expiry for v in ok]
        rows.append([label, f"{args.expiry:g} s", f"{len(ok)}/{len(sw[key])}",
                     ms(s["median"]), ms(s["p95"]), ms(s["max"]),
                     f"{'+' if max(over) >= 0 else ''}{ms(max(over))}",
                     f"{within}/{len(sw[key])} within expiry + 1 s"])
    if sv:
        replaced = sum(1 for r in sv["hang"] if r.get("latency") is not None)
        rows.append(["supervisord, SIGSTOP", f"{args.expiry:g} s (not known to it)",
                     f"{replaced}/{len(sv['hang'])}", "never", "never", "never", "-",
                     f"not replaced within {2 * args.expiry:g} s; then: "
                     f"`{' '.join(sv['ctl'].split())}`"])
    print(table(["supervisor, hang", "expiry", "replaced", "median", "p95", "max",
                 "max - expiry", "goal"], rows))

    print("\n## Where the time goes (swarm, from its event stream)\n")
    parts = swarm_breakdown(sw, args.expiry)
    blocked = swarm_breakdown(sw, args.expiry, "blocked")
    parts.update({name.replace("hang:", "blocked loop:"): values
                  for name, values in blocked.items() if name.startswith("hang:")})
    print(table(["phase", "n", "median", "max"], breakdown_rows(parts)))
    if what_if:
        print("\n## Where the time goes (swarm what-if: preload all)\n")
        parts = {k: v for k, v in swarm_breakdown(what_if, args.expiry).items()
                 if k.startswith("crash")}
        print(table(["phase", "n", "median", "max"], breakdown_rows(parts)))
    if sv:
        print("\n## Where the time goes (supervisord, from its log)\n")
        print(table(["phase", "n", "median", "max"], breakdown_rows(supervisord_breakdown(sv))))
    print(f"\n{load.report()}")
    st = sw["status"]
    print(f"\nswarm slot after the run: state {st['state']}, restarts {st['restarts']}, "
          f"last exit: {st['last_exit']}")


if __name__ == "__main__":
    main()
