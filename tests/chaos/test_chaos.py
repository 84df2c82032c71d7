"""Chaos: a soak under fire, and nothing lost, nothing duplicated, every billed call
accounted for.

Lost: a task with no finding once the run is over (after a bounded wait that asserts
nothing itself). Duplicated: a task with a second finding (each ``finding:*`` names its
task) or a second completion (``channel:completions``, listened to from before the first
task is submitted until the end, in a thread).

The fake API injects 429/529/500 faults and latency jitter while a driver randomly
SIGKILLs and SIGSTOPs workers, SIGKILLs the embedded Redis once (the supervisor brings it
back from its append-only file) and restarts the whole swarm once (`swarm down`, then
`swarm up`). The short version runs in CI; the full one:

    SWARM_CHAOS_TASKS=1000 SWARM_CHAOS_SECONDS=60 python -m pytest tests/chaos -s
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from launcher import costs
from tests.harness.fake_api import Faults, text_reply
from tests.harness.procs import processes_under, settle, wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys

TASKS = int(os.environ.get("SWARM_CHAOS_TASKS", "300"))
SECONDS = float(os.environ.get("SWARM_CHAOS_SECONDS", "20"))


@pytest.mark.timeout(int(SECONDS * 4 + TASKS * 0.3 + 180))
def test_soak_under_chaos(make_swarm, fake_api):
    rng = random.Random(int(os.environ.get("SWARM_CHAOS_SEED", "1")))
    fake_api.script = lambda req: text_reply("ok", delay=rng.random() * 0.2)
    fake_api.latency = 0.05
    fake_api.faults = Faults(rate=0.1, statuses=(429, 529, 500), seed=3)
    fake_api.retry_after = 0.05
    spec = fast_spec(pool("a", workers=4, expiry="1500ms", interval="300ms",
                          max_restarts=1000, model="claude-haiku-4-5",
                          extra="concurrency: 8\nmax_attempts: 50\nmax_retries: 10\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    from launcher.client import Swarm as Api

    # the Redis the swarm records now: after a restart, the new one
    completions = Completions(lambda: swarm.state.read_redis().sync(socket_timeout=5)).start()
    try:
        _soak(swarm, fake_api, rng, completions, Api("t", swarm.redis()))
    finally:
        completions.stop()


def _soak(swarm, fake_api, rng, completions, api):  # type: ignore[no-untyped-def]
    ids = api.submit_many([f"soak {i}" for i in range(TASKS)])
    figures = {"kills": 0, "hangs": 0, "redis_kills": 0, "swarm_restarts": 0}
    started = time.monotonic()
    redis_at, restart_at = SECONDS / 3, SECONDS * 2 / 3
    while time.monotonic() - started < SECONDS:
        time.sleep(rng.uniform(0.3, 1.2))
        elapsed = time.monotonic() - started
        if figures["redis_kills"] == 0 and elapsed >= redis_at:
            pid = int(swarm.redis().info("server")["process_id"])
            os.kill(pid, signal.SIGKILL)
            figures["redis_kills"] += 1
            wait_for(lambda: swarm.redis().ping(), 15, "Redis back")
            continue
        if figures["swarm_restarts"] == 0 and elapsed >= restart_at:
            down = swarm.cli("down", "--timeout", "60")
            assert down.returncode == 0, down.stderr
            assert processes_under(swarm.folder) == [], "swarm down left processes"
            swarm.proc.wait(10)
            swarm.start()
            figures["swarm_restarts"] += 1
            continue
        try:
            rows = [r for r in swarm.workers().values()
                    if r["pid"] and r["state"] in ("idle", "busy")]
        except Exception:  # noqa: BLE001 - Redis restarting
            continue
        if not rows:
            continue
        victim = rng.choice(rows)["pid"]
        if rng.random() < 0.6:
            os.kill(victim, signal.SIGKILL)
            figures["kills"] += 1
        else:
            os.kill(victim, signal.SIGSTOP)
            figures["hangs"] += 1

    r = swarm.redis()
    settle(lambda: all(r.mget([keys.task_result(i) for i in ids])), TASKS * 0.3 + 120)
    time.sleep(1.0)  # let the last hand-backs, completions and lost-call counts land
    r = swarm.redis()
    found = findings_by_task(r)
    lost = [i for i in ids if not found.get(i)]
    twice = {i: len(found[i]) for i in ids if len(found.get(i, [])) > 1}
    announced = completions.counts()
    billed = fake_api.billed()["responses"]
    total = costs.read_counters(r, "t")["total"]["*"]
    restarts = sum(int(json.loads(v)["restarts"]) for host in r.smembers(keys.hosts("t"))
                   for v in r.hgetall(keys.host_slots("t", host)).values())
    print(f"\nchaos: tasks {TASKS}, seconds {SECONDS:g}, kills {figures['kills']}, "
          f"hangs {figures['hangs']}, restarts {len(swarm.events('restart'))} "
          f"(slots now {restarts}), redis restarts {figures['redis_kills']}, "
          f"swarm restarts {figures['swarm_restarts']}, lost {len(lost)}, "
          f"duplicated findings {len(twice)}, completions {sum(announced.values())}, "
          f"billed calls {billed}, ledger calls {total['calls']}, "
          f"lost-in-flight calls {total.get('lost_calls', 0)}, "
          f"faults {sum(fake_api.errors().values())}, "
          f"completions listener off the air {completions.gaps}")
    assert not lost, f"{len(lost)} tasks have no finding, e.g. {lost[:3]}"
    assert not twice, f"tasks with more than one finding: {dict(list(twice.items())[:3])}"
    assert sorted(found) == sorted(ids), "a finding names a task that was never submitted"
    completions.assert_once_each(ids)
    done = [f for i in ids for f in found[i]]
    assert all(f["status"] == "done" for f in done), \
        [f["error"] for f in done if f["status"] != "done"][:3]
    assert total["calls"] <= billed <= total["calls"] + total.get("lost_calls", 0)
    assert figures["kills"] + figures["hangs"] >= 3
    down = swarm.cli("down", "--timeout", "60")
    assert down.returncode == 0, down.stderr
    assert processes_under(swarm.folder) == []


TWO_HOST_TASKS = int(os.environ.get("SWARM_CHAOS_TASKS", "150"))


@pytest.mark.timeout(int(SECONDS * 4 + TWO_HOST_TASKS * 0.6 + 240))
def test_soak_on_two_hosts_beside_a_second_swarm(tmp_path, fake_api):
    """Swarm t on hosts h-a and h-b, swarm u on h-c, one Redis. Workers are killed and
    hung as above; h-a loses power a third of the way in and comes back at two thirds.
    At the end each swarm has exactly one finding and one completion per task of its
    own, and the two ledgers plus their calls lost in flight account for every call the
    API billed."""
    from launcher.client import Swarm as Api
    from tests.harness.hosts import Host, SharedRedis, pool_text, spec_for

    rng = random.Random(int(os.environ.get("SWARM_CHAOS_SEED", "2")))
    fake_api.script = lambda req: text_reply("ok", delay=rng.random() * 0.2)
    fake_api.latency = 0.05
    fake_api.faults = Faults(rate=0.1, statuses=(429, 529, 500), seed=5)
    fake_api.retry_after = 0.05
    server = SharedRedis(tmp_path / "redis").start()
    completions = Completions(server.client)
    pools = pool_text("a", workers=2, model="claude-haiku-4-5",
                      extra="concurrency: 8\nmax_attempts: 50\nmax_retries: 10\n")
    env = api_env(fake_api)
    made = [Host(tmp_path / "h-a", "h-a", spec_for("t", pools), server.url, env=env),
            Host(tmp_path / "h-b", "h-b", spec_for("t", pools), server.url, env=env),
            Host(tmp_path / "h-c", "h-c", spec_for("u", pools), server.url, env=env)]
    cut, other, beside = made
    try:
        completions.start()
        for host in made:
            host.start()
        r = server.client()
        ids = {"t": Api("t", r).submit_many([f"soak t {i}" for i in range(TWO_HOST_TASKS)]),
               "u": Api("u", r).submit_many([f"soak u {i}" for i in range(TWO_HOST_TASKS // 3)])}
        figures = {"kills": 0, "hangs": 0, "power_cuts": 0, "reboots": 0}
        started = time.monotonic()
        while time.monotonic() - started < SECONDS:
            time.sleep(rng.uniform(0.3, 1.0))
            elapsed = time.monotonic() - started
            if figures["power_cuts"] == 0 and elapsed >= SECONDS / 3:
                cut.power_cut()
                figures["power_cuts"] += 1
                continue
            if figures["reboots"] == 0 and elapsed >= SECONDS * 2 / 3:
                cut.start()
                figures["reboots"] += 1
                continue
            host = rng.choice([h for h in made if h.proc is not None and h.proc.poll() is None])
            try:
                rows = [row for row in host.rows(host.swarm_name())
                        if row["pid"] and row["state"] in ("idle", "busy")]
            except Exception:  # noqa: BLE001 - between lease renewals
                continue
            if not rows:
                continue
            victim = _host_pid(host, rng.choice(rows)["pid"])
            if victim is None:
                continue
            if rng.random() < 0.6:
                os.kill(victim, signal.SIGKILL)
                figures["kills"] += 1
            else:
                os.kill(victim, signal.SIGSTOP)
                figures["hangs"] += 1
        everything = ids["t"] + ids["u"]
        settle(lambda: all(r.mget([keys.task_result(i) for i in everything])),
               TWO_HOST_TASKS * 0.6 + 120)
        time.sleep(2.0)  # the last hand-backs, completions and lost-call counts
        billed = fake_api.billed()["responses"]
        found = findings_by_task(r)
        lost = [i for i in everything if not found.get(i)]
        twice = {i: len(found[i]) for i in everything if len(found.get(i, [])) > 1}
        calls = lost_calls = 0
        for name in ids:
            total = costs.read_counters(r, name)["total"]["*"]
            calls += total["calls"]
            lost_calls += total.get("lost_calls", 0)
        print(f"\nchaos, two hosts and a second swarm: tasks {len(everything)}, seconds "
              f"{SECONDS:g}, kills {figures['kills']}, hangs {figures['hangs']}, power cuts "
              f"{figures['power_cuts']}, lost {len(lost)}, duplicated findings {len(twice)}, "
              f"completions {sum(completions.counts().values())}, billed calls {billed}, "
              f"ledger calls {calls}, lost-in-flight calls {lost_calls}, "
              f"faults {sum(fake_api.errors().values())}")
        assert not lost, f"{len(lost)} tasks have no finding, e.g. {lost[:3]}"
        assert not twice, f"tasks with more than one finding: {dict(list(twice.items())[:3])}"
        assert sorted(found) == sorted(everything), "a finding names a task never submitted"
        completions.assert_once_each(everything)
        for name, tasks in ids.items():
            done = [f for i in tasks for f in found[i]]
            assert all(f["worker_id"].startswith(f"{name}/") for f in done), \
                f"a task of {name} was run by another swarm"
            assert all(f["status"] == "done" for f in done), \
                [f["error"] for f in done if f["status"] != "done"][:3]
        assert calls <= billed <= calls + lost_calls
        assert figures["power_cuts"] == 1 and figures["kills"] + figures["hangs"] >= 3
    finally:
        completions.stop()
        for host in made:
            host.stop()
        server.kill()


def findings_by_task(client: Any) -> dict[str, list[dict[str, Any]]]:
    """Every finding stored (``finding:*``), by the task it names."""
    names = list(client.scan_iter("finding:*", count=1000))
    by_task: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(names), 1000):
        for raw in client.mget(names[start:start + 1000]):
            if raw is not None:
                finding = json.loads(raw)
                by_task.setdefault(finding["task_id"], []).append(finding)
    return by_task


class Completions:
    """Counts ``channel:completions`` messages per task id, in a thread, from ``start()``
    to ``stop()``. ``connect`` gives a client of the Redis to listen on: when the
    connection drops (Redis killed, swarm restarted) the thread subscribes again at once,
    to whatever Redis ``connect`` gives then; ``gaps`` are the windows (wall clock) it was
    off the air, said when a count is wrong."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self.gaps: list[tuple[float, float]] = []

    def start(self) -> Completions:
        self._thread.start()
        assert self._subscribed.wait(15), "could not subscribe to channel:completions"
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(10)

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)

    def assert_once_each(self, ids: list[str]) -> None:
        counts = self.counts()
        twice = {i: n for i, n in counts.items() if n > 1}
        never = [i for i in ids if counts[i] == 0]
        assert not twice, f"tasks completed more than once: {dict(list(twice.items())[:3])}"
        assert not never, (f"{len(never)} tasks never announced as completed, e.g. "
                           f"{never[:3]} (listener off the air: {self.gaps})")
        assert set(counts) <= set(ids), "a completion names a task that was never submitted"

    def _listen(self) -> None:
        off_since: float | None = None
        while not self._stop.is_set():
            try:
                pubsub = self._connect().pubsub()
                pubsub.subscribe(keys.CHANNEL_COMPLETIONS)
                wait_for(lambda: (pubsub.get_message(timeout=0.2) or {}).get("type")
                         == "subscribe", 5, "the subscription")
            except Exception:  # noqa: BLE001 - Redis not (yet) there
                off_since = off_since or time.time()
                time.sleep(0.01)
                continue
            if off_since is not None:
                self.gaps.append((off_since, time.time()))
                off_since = None
            self._subscribed.set()
            heard = time.time()
            try:
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    heard = time.time()
                    if message and message["type"] == "message":
                        with self._lock:
                            self._counts[message["data"]] += 1
            except Exception:  # noqa: BLE001 - the connection dropped: subscribe again
                off_since = heard
            finally:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001
                    pass


def _host_pid(host, pid):  # type: ignore[no-untyped-def]
    """The pid, as the test sees it, of a worker a host reported with its own pid (in a
    pid namespace of its own the numbers differ): the process under the host's folder
    whose namespace pid is ``pid``."""
    if not host.isolated:
        return pid
    for proc in processes_under(host.folder):
        try:
            status = open(f"/proc/{proc.pid}/status").read()
        except OSError:
            continue
        inner = [line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:")]
        if inner and inner[0] == str(pid) and proc.name().startswith("python"):
            return proc.pid
    return None
