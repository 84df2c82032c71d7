"""Chaos: a soak under fire, and nothing lost, nothing duplicated, every billed call
accounted for.

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
import time

import pytest

from conftest import api_env, fast_spec, pool, processes_under, wait_for
from fake_api import Faults, text_reply
from launcher import costs
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

    ids = Api("t", swarm.redis()).submit_many([f"soak {i}" for i in range(TASKS)])
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
            rows = [r for r in swarm.workers().values() if r["pid"] and r["state"] in ("idle", "busy")]
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
    wait_for(lambda: all(r.mget([keys.task_result(i) for i in ids])), TASKS * 0.3 + 120,
             "every task's finding", every=0.5)
    time.sleep(1.0)  # let the last hand-backs and lost-call counts land
    results = r.mget([keys.task_result(i) for i in ids])
    stored = sum(1 for _ in r.scan_iter("finding:*", count=1000))
    findings = [json.loads(r.get(keys.finding(f))) for f in results]
    duplicated = len(results) - len(set(results))
    lost = sum(1 for f in results if f is None)
    billed = fake_api.billed()["responses"]
    total = costs.read_counters(r, "t")["total"]["*"]
    restarts = sum(int(json.loads(v)["restarts"]) for host in r.smembers(keys.hosts("t"))
                   for v in r.hgetall(keys.host_slots("t", host)).values())
    print(f"\nchaos: tasks {TASKS}, seconds {SECONDS:g}, kills {figures['kills']}, "
          f"hangs {figures['hangs']}, restarts {len(swarm.events('restart'))} "
          f"(slots now {restarts}), redis restarts {figures['redis_kills']}, "
          f"swarm restarts {figures['swarm_restarts']}, lost {lost}, duplicated {duplicated}, "
          f"billed calls {billed}, ledger calls {total['calls']}, "
          f"lost-in-flight calls {total.get('lost_calls', 0)}, "
          f"faults {sum(fake_api.errors().values())}")
    assert lost == 0 and duplicated == 0
    assert stored == TASKS, f"{stored} findings stored for {TASKS} tasks"
    assert sorted(f["task_id"] for f in findings) == sorted(ids)
    assert all(f["status"] == "done" for f in findings), [f["error"] for f in findings if f["status"] != "done"][:3]
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
    At the end each swarm has exactly one finding per task of its own, and the two
    ledgers plus their calls lost in flight account for every call the API billed."""
    from hosts import Host, SharedRedis, pool_text, spec_for
    from launcher.client import Swarm as Api

    rng = random.Random(int(os.environ.get("SWARM_CHAOS_SEED", "2")))
    fake_api.script = lambda req: text_reply("ok", delay=rng.random() * 0.2)
    fake_api.latency = 0.05
    fake_api.faults = Faults(rate=0.1, statuses=(429, 529, 500), seed=5)
    fake_api.retry_after = 0.05
    server = SharedRedis(tmp_path / "redis").start()
    pools = pool_text("a", workers=2, model="claude-haiku-4-5",
                      extra="concurrency: 8\nmax_attempts: 50\nmax_retries: 10\n")
    env = api_env(fake_api)
    made = [Host(tmp_path / "h-a", "h-a", spec_for("t", pools), server.url, env=env),
            Host(tmp_path / "h-b", "h-b", spec_for("t", pools), server.url, env=env),
            Host(tmp_path / "h-c", "h-c", spec_for("u", pools), server.url, env=env)]
    cut, other, beside = made
    try:
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
        wait_for(lambda: all(r.mget([keys.task_result(i) for i in everything])),
                 TWO_HOST_TASKS * 0.6 + 120, "every task's finding", every=0.5)
        time.sleep(2.0)  # the last hand-backs and lost-call counts
        billed = fake_api.billed()["responses"]
        calls = lost = 0
        for name, tasks in ids.items():
            results = r.mget([keys.task_result(i) for i in tasks])
            found = [json.loads(r.get(keys.finding(f))) for f in results]
            assert len(set(results)) == len(tasks), f"{name}: a task has two findings"
            assert sorted(f["task_id"] for f in found) == sorted(tasks)
            assert all(f["worker_id"].startswith(f"{name}/") for f in found), \
                f"a task of {name} was run by another swarm"
            assert all(f["status"] == "done" for f in found), \
                [f["error"] for f in found if f["status"] != "done"][:3]
            total = costs.read_counters(r, name)["total"]["*"]
            calls += total["calls"]
            lost += total.get("lost_calls", 0)
        stored = sum(1 for _ in r.scan_iter("finding:*", count=1000))
        print(f"\nchaos, two hosts and a second swarm: tasks {len(everything)}, seconds "
              f"{SECONDS:g}, kills {figures['kills']}, hangs {figures['hangs']}, power cuts "
              f"{figures['power_cuts']}, findings {stored}, billed calls {billed}, ledger "
              f"calls {calls}, lost-in-flight calls {lost}, "
              f"faults {sum(fake_api.errors().values())}")
        assert stored == len(everything)
        assert calls <= billed <= calls + lost
        assert figures["power_cuts"] == 1 and figures["kills"] + figures["hangs"] >= 3
    finally:
        for host in made:
            host.stop()
        server.kill()


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
