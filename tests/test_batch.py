"""Batch pools end to end: tasks of several turns through the fake API's Message
Batches endpoints, the ledger against the fake's own bill at batch rates, a worker
killed with batches in flight and its successor collecting them, errored and expired
results, budgets reserved for a batch's worst case, and `swarm status`/`cost`."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import pytest

from launcher import costs
from tests.harness.fake_api import text_reply, tool_use_reply
from tests.harness.fake_batches import BatchFaults
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env, fast_spec, findings_of, finished, ledger_is, pool
from workers import keys

HAIKU = "claude-haiku-4-5"
TURNS = re.compile(r"in (\d+) turns")


def first_text(request: dict[str, Any]) -> str:
    content = request["messages"][0]["content"]
    return content if isinstance(content, str) else " ".join(
        b.get("text", "") for b in content if b.get("type") == "text")


def turns_script(request: dict[str, Any]):
    """A task 'NAME in N turns' writes a file on each of its first N-1 turns (its tools
    run in the worker between batches), then answers; the reply depends only on the
    request's own content."""
    task = first_text(request).split("\n")[0]
    wanted = int(m.group(1)) if (m := TURNS.search(task)) else 1
    turn = (len(request["messages"]) + 1) // 2
    name = re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-")
    if turn < wanted:
        return tool_use_reply("write_file", {"path": f"out/{name}-{turn}.txt",
                                             "content": f"turn {turn}"},
                              input_tokens=300 + turn, output_tokens=20)
    return text_reply(f"finished {task} after {turn} turns", input_tokens=500,
                      output_tokens=40)


def batch_pool(name: str = "bulk", workers: int = 1, extra: str = "") -> str:
    return pool(name, workers=workers, model=HAIKU, extra=(
        "batch: {window: 200ms, poll: 100ms, poll_max: 500ms}\n"
        "concurrency: 50\nworkdir: work\n" + extra))


def spec_of(pools: str, extra: str = "") -> str:
    return fast_spec(pools, extra=extra)




def submit(swarm, texts: list[str], pool_name: str = "bulk") -> list[str]:
    from launcher.client import Swarm as Api

    return Api(swarm.name, swarm.redis()).submit_many(texts, pool=pool_name)


def assert_ledger_is_the_bill(swarm, fake_api) -> dict[str, int]:
    billed = fake_api.billed()["batch"]
    total = ledger_is(swarm, billed)
    assert total["batch_calls"] == billed["responses"]
    return total


@pytest.fixture
def work(make_swarm, tmp_path):
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def test_tasks_of_several_turns_run_through_batches(make_swarm, fake_api, work):
    fake_api.script = turns_script
    fake_api.batch_delay = 0.3
    swarm = make_swarm(spec_of(batch_pool()), env=api_env(fake_api)).start()
    ids = submit(swarm, [f"job {i} in {1 + i % 4} turns" for i in range(12)])
    wait_for(lambda: finished(swarm, ids), 60, "every task")
    found = findings_of(swarm, ids)
    assert [f["status"] for f in found] == ["done"] * 12
    for i, f in enumerate(found):
        n = 1 + i % 4
        assert f["turns"] == f["api_calls"] == n
        assert f["tool_calls"] == n - 1
        assert f["result"] == f"finished job {i} in {n} turns after {n} turns"
        assert len(f["files_changed"]) == n - 1
        assert all((work / p).read_text().startswith("turn") for p in f["files_changed"])
    # nothing went through the ordinary endpoint: every answer came from a batch
    assert fake_api.billed()["responses"] == 0
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["calls"] == sum(1 + i % 4 for i in range(12))
    # each of the 12 tasks' costs equals the sum the ledger holds for it
    assert sum(f["cost_nano_usd"] for f in found) == total["nano"] == total["batch_nano"]
    assert total["batch_std_nano"] == 2 * total["batch_nano"] or \
        abs(total["batch_std_nano"] - 2 * total["batch_nano"]) <= total["calls"]
    # nothing left in flight, reserved or open
    r = swarm.redis()
    assert r.hlen(keys.inflight("t")) == 0
    assert int(r.hget(keys.reserved("t"), "total") or 0) == 0
    assert r.zcard(keys.batches("t", "bulk")) == 0
    assert not r.keys("swarm:t:task:*:turn")


def sent_entries(fake_api) -> list[tuple[str, int]]:
    """(task text, turn) of every request the fake received in any batch."""
    return [(first_text(e.params).split("\n")[0], (len(e.params["messages"]) + 1) // 2)
            for b in list(fake_api.batches._batches.values()) for e in b.entries]


def test_a_worker_killed_with_batches_in_flight_loses_nothing_and_pays_once(
        make_swarm, fake_api, work):
    """SIGKILL while every task's request waits in a batch: the restarted worker adopts
    the batch, takes each answer once, and the tasks go on to their later turns; the
    ledger equals the bill, and no (task, turn) was billed twice."""
    fake_api.script = turns_script
    fake_api.batch_delay = 4.0
    swarm = make_swarm(spec_of(batch_pool()), env=api_env(fake_api)).start()
    ids = submit(swarm, [f"kill {i} in 3 turns" for i in range(10)])
    r = swarm.redis()
    wait_for(lambda: r.zcard(keys.batches("t", "bulk")) >= 1 and
             sum(1 for f in r.hkeys(keys.inflight("t")) if f.startswith("batch|")) == 10,
             30, "the first turns to wait in a batch")
    first_batch = r.zrange(keys.batches("t", "bulk"), 0, 0)[0]
    old = swarm.worker_pids()["t/" + swarm.status()["host"] + "/bulk-1"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: finished(swarm, ids), 90, "every task, after the kill")
    found = findings_of(swarm, ids)
    assert [f["status"] for f in found] == ["done"] * 10
    assert all(f["turns"] == 3 and f["tool_calls"] == 2 for f in found)
    assert {f["generation"] for f in found} == {2}
    # the batch the dead worker sent was collected by its successor, not sent again
    log = (swarm.folder / "logs" / "bulk-1.log").read_text()
    assert f"batch {first_batch}: adopted from" in log
    sent = sent_entries(fake_api)
    assert len(sent) == len(set(sent)) == 30, "a request went to a batch twice"
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["calls"] == 30
    assert total.get("lost_calls", 0) == 0
    assert sum(f["cost_nano_usd"] for f in found) == total["nano"]
    assert r.hlen(keys.inflight("t")) == 0
    assert int(r.hget(keys.reserved("t"), "total") or 0) == 0


def test_errored_and_expired_requests_are_sent_again_then_fail_with_their_reason(
        make_swarm, fake_api, work):
    fake_api.script = turns_script
    fake_api.batch_delay = 0.2
    fake_api.batch_faults = BatchFaults(errored=0.25, expired=0.25, seed=11)
    swarm = make_swarm(spec_of(batch_pool(extra="max_attempts: 1\n").replace(
        "poll_max: 500ms}", "poll_max: 500ms, retries: 1}")), env=api_env(fake_api)).start()
    ids = submit(swarm, [f"flaky {i} in 2 turns" for i in range(30)])
    wait_for(lambda: finished(swarm, ids), 90, "every task")
    found = findings_of(swarm, ids)
    done = [f for f in found if f["status"] == "done"]
    failed = [f for f in found if f["status"] != "done"]
    assert done and failed, "with half the entries faulted, some tasks should fail"
    for f in failed:  # two tries of one of its turns came back errored or expired
        assert re.fullmatch(r"batch request (errored: api_error: injected batch error|expired)"
                            r" \(sent 2 times\)", f["error"]), f["error"]
    for f in done:
        assert f["turns"] == 2 and f["result"].startswith("finished flaky")
    entries = [e for b in fake_api.batches._batches.values() for e in b.entries]
    faulted = [e for e in entries if e.fault]
    assert len(faulted) >= len(failed) * 2
    # errored and expired entries are not billed, nor recorded
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["calls"] == len(entries) - len(faulted)
    assert swarm.redis().hlen(keys.inflight("t")) == 0
    assert int(swarm.redis().hget(keys.reserved("t"), "total") or 0) == 0


def test_a_batch_is_sent_only_as_far_as_its_worst_case_fits_the_budget(
        make_swarm, fake_api, work):
    """The pool's budget admits one request's worst case at a time: one goes, the
    others wait for its reservation to be settled; once what is left cannot cover a
    worst case, the pool pauses and the rest go back to the queue untouched, then
    finish when the budget is raised."""
    from launcher.client import Swarm as Api
    from workers.pricing import PriceBook

    fake_api.script = turns_script
    fake_api.batch_delay = 0.1
    bound = PriceBook().bound_nano(HAIKU, 6_000, 4096, batch=True)  # about one request's
    budget = int(1.5 * bound)
    swarm = make_swarm(spec_of(batch_pool(extra=f"budget_usd: {budget / 1e9:.9f}\n")),
                       env=api_env(fake_api)).start()
    ids = submit(swarm, [f"thrift {i} in 1 turns" for i in range(40)])
    api = Api("t", swarm.redis())
    r = swarm.redis()
    wait_for(lambda: r.get(keys.paused("t", "bulk")), 60, "the pool to pause")
    reason = r.get(keys.paused("t", "bulk"))
    said = re.fullmatch(r"budget reached: pool bulk spent \$([\d.]+) of \$[\d.e-]+, and a batch "
                        r"request may cost up to \$([\d.]+)", reason)
    assert said, reason
    wait_for(lambda: r.hlen(keys.inflight("t")) == 0, 30, "what was sent to settle")
    sizes = [len(b.entries) for b in fake_api.batches._batches.values()]
    assert sizes and max(sizes) == 1, sizes  # one worst case in flight at a time
    total = costs.read_counters(r, "t")["total"]["*"]
    worst = round(float(said.group(2)) * 1e9)
    assert round(float(said.group(1)) * 1e9) == total["nano"] <= budget < total["nano"] + worst
    counts = api.status()["tasks"]
    assert counts["failed"] == 0 and 0 < counts["done"] == total["calls"] < 40
    assert counts["queued"] == 40 - counts["done"]
    assert int(r.hget(keys.reserved("t"), "total") or 0) == 0
    api.set_budget(1.0, pool="bulk")
    wait_for(lambda: finished(swarm, ids), 60, "every task once the budget was raised")
    assert [f["status"] for f in findings_of(swarm, ids)] == ["done"] * 40
    assert int(r.hget(keys.reserved("t"), "total") or 0) == 0
    assert_ledger_is_the_bill(swarm, fake_api)


def test_status_shows_requests_waiting_in_batches_and_down_cancels_nothing(
        make_swarm, fake_api, work):
    """While requests wait, `swarm status` says how many and since when; `swarm down`
    leaves the batches to be collected: after `up`, every task finishes, each request
    billed once."""
    fake_api.script = turns_script
    fake_api.batch_delay = 6.0
    swarm = make_swarm(spec_of(batch_pool()), env=api_env(fake_api)).start()
    ids = submit(swarm, [f"wait {i} in 2 turns" for i in range(8)])
    wait_for(lambda: swarm.status()["batches"].get("bulk", {}).get("requests") == 8, 30,
             "8 requests waiting")
    view = swarm.status()["batches"]["bulk"]
    assert view["batches"] >= 1 and 0 <= time.time() - view["since"] < 30
    shown = swarm.cli("status").stdout
    assert re.search(r"bulk: 8 request\(s\) waiting in \d+ batch\(es\), the oldest sent at "
                     r"\d\d:\d\d:\d\d \(\d+s ago\)", shown), shown
    down = swarm.cli("down")
    assert down.returncode == 0, down.stderr
    assert not any(b.canceled for b in fake_api.batches._batches.values())
    swarm.start()
    wait_for(lambda: finished(swarm, ids), 60, "every task after up")
    r = swarm.redis()
    # handed back untouched at the stop (a clean stop is not an attempt)
    assert all(int(r.hget(keys.task_meta("t", i), "attempts")) == 1 for i in ids)
    found = findings_of(swarm, ids)
    assert all(f["status"] == "done" and f["turns"] == 2 for f in found)
    sent = sent_entries(fake_api)
    assert len(sent) == len(set(sent)) == 16
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["calls"] == 16
    shown = swarm.cli("cost").stdout
    assert re.search(r"batch: \$[\d.]+ in 16 calls \(saved \$[\d.]+ against standard "
                     r"prices, 50\.0%\)", shown), shown


def load_spec(tmp_path, text: str):
    from launcher.spec import load

    path = tmp_path / "swarm.yaml"
    path.write_text(text)
    return load(path)


def test_batch_true_takes_the_defaults_and_hours_of_task_timeout(tmp_path):
    spec = load_spec(tmp_path, f"pools:\n  bulk:\n    model: {HAIKU}\n    batch: true\n"
                               f"  quick:\n    model: {HAIKU}\n    batch: false\n")
    bulk, quick = spec.pools["bulk"], spec.pools["quick"]
    assert bulk.batch is not None and quick.batch is None
    assert (bulk.batch.window, bulk.batch.max_requests, bulk.batch.poll,
            bulk.batch.poll_max, bulk.batch.retries) == (2.0, 10_000, 10.0, 300.0, 2)
    assert bulk.task_timeout == 86_400 and bulk.concurrency == 1000
    assert quick.task_timeout == 600 and quick.concurrency == 1
    spec = load_spec(tmp_path, f"pools:\n  bulk:\n    model: {HAIKU}\n    task_timeout: 2h\n"
                               "    concurrency: 64\n    batch: {window: 30s, retries: 0}\n")
    bulk = spec.pools["bulk"]
    assert (bulk.task_timeout, bulk.concurrency) == (7200, 64)
    assert (bulk.batch.window, bulk.batch.retries, bulk.batch.poll) == (30.0, 0, 10.0)


@pytest.mark.parametrize("pools, said", [
    ("  w:\n    model: m\n  l:\n    model: m\n    role: lead\n    delegates_to: [w]\n"
     "    batch: true\n", "swarm.yaml:8: pools.l.batch: is for worker pools"),
    ("  w:\n    model: m\n    batch: {max_requests: 200000}\n",
     "swarm.yaml:4: pools.w.batch.max_requests: must be <= 100000"),
    ("  w:\n    model: m\n    batch: {windw: 1s}\n", "swarm.yaml:4: pools.w.batch.windw: "),
    ("  w:\n    model: m\n    batch: yes please\n", "swarm.yaml:4: pools.w.batch: "),
])
def test_a_batch_setting_that_cannot_work_is_refused_in_one_line(tmp_path, pools, said):
    from tests.harness.procs import SWARM_CLI, cli_env
    import subprocess

    (tmp_path / "swarm.yaml").write_text("pools:\n" + pools)
    run = subprocess.run([*SWARM_CLI, "up", "swarm.yaml"], cwd=tmp_path, env=cli_env(),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert said in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_a_rate_limit_holds_batch_requests_too(make_swarm, fake_api, work):
    """rpm 60 admits one request a second (a bucket of one): gathered for 200 ms,
    no batch holds more than one request, where unlimited they would all go in one."""
    fake_api.script = turns_script
    fake_api.batch_delay = 0.1
    swarm = make_swarm(spec_of(batch_pool(), extra=f"rate_limits:\n  {HAIKU}: {{rpm: 60}}\n"),
                       env=api_env(fake_api)).start()
    ids = submit(swarm, [f"slow {i} in 1 turns" for i in range(4)])
    wait_for(lambda: finished(swarm, ids), 60, "every task")
    sizes = [len(b.entries) for b in fake_api.batches._batches.values()]
    assert sizes == [1, 1, 1, 1], sizes
    assert_ledger_is_the_bill(swarm, fake_api)


def test_a_task_cancelled_while_its_request_waits_is_still_billed_exactly(
        make_swarm, fake_api, work):
    """`swarm cancel` cannot take one request out of a batch: the task ends cancelled at
    once, and when the batch ends its answer is recorded against the task, unused."""
    fake_api.script = turns_script
    fake_api.batch_delay = 3.0
    swarm = make_swarm(spec_of(batch_pool()), env=api_env(fake_api)).start()
    [task] = submit(swarm, ["doomed in 2 turns"])
    r = swarm.redis()
    wait_for(lambda: r.zcard(keys.batches("t", "bulk")) == 1, 30, "the request in a batch")
    assert swarm.cli("cancel", task).returncode == 0
    wait_for(lambda: r.hget(keys.task_meta("t", task), "state") == "cancelled", 30,
             "the task to end cancelled")
    assert not r.exists(keys.task_turn("t", task))
    wait_for(lambda: r.zcard(keys.batches("t", "bulk")) == 0, 30, "the batch collected")
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["calls"] == 1
    assert int(r.zscore(keys.task_costs("t"), task)) == total["nano"] > 0
    assert r.hlen(keys.inflight("t")) == 0
    assert not r.exists(keys.task_turn("t", task))  # the late answer was not stored
    assert len(sent_entries(fake_api)) == 1  # its second turn never went


def test_requests_gathering_when_their_worker_dies_are_counted_lost_and_sent_again(
        make_swarm, fake_api, work):
    """Killed while its requests were gathering (before their batch was sent): their
    fate is unknown to the ledger, so they count as lost in flight with an upper bound,
    as an ordinary call cut off would; the successor sends them, each billed once."""
    fake_api.script = turns_script
    fake_api.batch_delay = 0.2
    swarm = make_swarm(spec_of(batch_pool().replace("window: 200ms", "window: 5s")),
                       env=api_env(fake_api)).start()
    ids = submit(swarm, [f"early {i} in 1 turns" for i in range(5)])
    r = swarm.redis()
    wait_for(lambda: len(r.hkeys(keys.inflight("t"))) == 5, 30, "5 requests gathering")
    assert not any(f.startswith("batch|") for f in r.hkeys(keys.inflight("t")))
    os.kill(swarm.worker_pids()["t/" + swarm.status()["host"] + "/bulk-1"], signal.SIGKILL)
    wait_for(lambda: finished(swarm, ids), 60, "every task, after the kill")
    assert all(f["status"] == "done" for f in findings_of(swarm, ids))
    assert len(sent_entries(fake_api)) == 5  # none had left: each went once
    total = assert_ledger_is_the_bill(swarm, fake_api)
    assert total["calls"] == 5 and total["lost_calls"] == 5
    assert total["lost_bound_nano"] > total["nano"]
    assert int(r.hget(keys.reserved("t"), "total") or 0) == 0
