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
