"""Cost you can trust: the ledger against the fake server's own count of what it billed,
budgets, per-task limits, swarm-wide rate limits, and `swarm cost` in every format."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from decimal import Decimal
from typing import Any

import pytest

from launcher import costs
from tests.harness.fake_api import Faults, error_reply, last_user_text, text_reply, tool_use_reply
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys
from workers.pricing import PriceBook, Rates, Usage

HAIKU = "claude-haiku-4-5"


def ledger_view(swarm) -> dict[str, dict[str, dict[str, int]]]:
    return costs.read_counters(swarm.redis(), swarm.name)


def cached_usage(request: dict[str, Any]):
    """A reply whose usage has every kind of token, deterministic per task text."""
    rng = random.Random(last_user_text(request))
    return text_reply("ok " + last_user_text(request), input_tokens=rng.randint(50, 500),
                      output_tokens=rng.randint(5, 300),
                      cache_creation_input_tokens=rng.choice([0, 0, 120, 900]),
                      cache_read_input_tokens=rng.choice([0, 1500, 3000]))


def submit_all(swarm, n: int, prefix: str = "job") -> list[str]:
    from launcher.client import Swarm as Api

    return Api(swarm.name, swarm.redis()).submit_many([f"{prefix} {i}" for i in range(n)])


def finished(swarm, ids: list[str]) -> bool:
    return all(swarm.redis().mget([keys.task_result(i) for i in ids]))


def test_ledger_equals_what_the_server_billed_to_the_token(make_swarm, fake_api):
    fake_api.script = cached_usage
    fake_api.faults = Faults(rate=0.1, statuses=(429, 529, 500), seed=7)
    fake_api.retry_after = 0.01
    spec = fast_spec(pool("a", workers=2, model=HAIKU, extra="concurrency: 8\nmax_retries: 10\n")
                     + pool("b", workers=1, extra="concurrency: 8\nmax_retries: 10\n"),
                     extra="prices:\n  test-model: {input: 3, output: 15}\n")
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    from launcher.client import Swarm as Api

    api = Api("t", swarm.redis())
    ids = api.submit_many([f"job {i}" for i in range(200)], pool="a")
    ids += api.submit_many([f"other {i}" for i in range(100)], pool="b")
    wait_for(lambda: finished(swarm, ids), 90, "every task")
    billed = fake_api.billed()
    assert sum(fake_api.errors().values()) > 10, "no faults were injected"
    view = ledger_view(swarm)
    total = view["total"]["*"]
    assert total["calls"] == billed["responses"] == 300
    assert total["input"] == billed["input_tokens"]
    assert total["output"] == billed["output_tokens"]
    assert total["cache_write"] == billed["cache_creation_input_tokens"]
    assert total["cache_read"] == billed["cache_read_input_tokens"]
    for model, figures in billed["by_model"].items():
        assert view["model"][model]["input"] == figures["input_tokens"]
        assert view["model"][model]["output"] == figures["output_tokens"]
    # money: each call priced on its own, summed as integers: every cut adds up exactly
    for dim in ("worker", "pool", "model"):
        for metric in ("calls", "input", "output", "cache_write", "cache_read", "nano", "ref_nano"):
            assert sum(v.get(metric, 0) for v in view[dim].values()) == total.get(metric, 0), (dim, metric)
    task_sum = sum(int(score) for _, score in
                   swarm.redis().zrange(keys.task_costs("t"), 0, -1, withscores=True))
    assert task_sum == total["nano"]
    # and the money is what the price data (and the spec's override) says for exactly
    # each call's tokens (every task here is one call, so its finding is that call)
    book = PriceBook({"test-model": Rates(Decimal(3), Decimal(15), Decimal("3.75"),
                                          Decimal("0.3"), Decimal(6))})
    findings = [json.loads(swarm.redis().get(keys.finding(swarm.redis().get(keys.task_result(i)))))
                for i in ids]
    assert sum(f["cost_nano_usd"] for f in findings) == total["nano"]
    for f in findings:
        u = f["usage"]
        expected = book.nano(f["model"], Usage(u["input"], u["output"], u["cache_creation"],
                                               u["cache_read"]))
        assert f["cost_nano_usd"] == expected
    assert float(swarm.redis().get("cost:haiku")) == pytest_approx(view["model"][HAIKU]["nano"] / 1e9)


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, rel=1e-9, abs=1e-9)


def test_killed_workers_calls_are_counted_lost_never_dropped(make_swarm, fake_api):
    fake_api.script = cached_usage
    fake_api.latency = 0.3
    spec = fast_spec(pool("a", workers=3, expiry="1500ms", interval="300ms", model=HAIKU,
                          extra="concurrency: 8\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    ids = submit_all(swarm, 120)
    wait_for(lambda: sum(1 for v in swarm.redis().mget([keys.task_result(i) for i in ids]) if v)
             >= 20, 30, "work under way")
    rows = swarm.workers()
    os.kill(rows["a-1"]["pid"], signal.SIGKILL)
    os.kill(rows["a-2"]["pid"], signal.SIGSTOP)
    wait_for(lambda: finished(swarm, ids), 90, "every task")
    time.sleep(0.5)
    billed = fake_api.billed()
    total = ledger_view(swarm)["total"]["*"]
    lost = total.get("lost_calls", 0)
    assert lost > 0, "nothing was in flight on the killed workers"
    # every call the server billed is either in the ledger or among those counted lost
    assert total["calls"] <= billed["responses"] <= total["calls"] + lost
    assert billed["responses"] - total["calls"] <= lost
    book = PriceBook()
    unrecorded = (billed["input_tokens"] - total["input"], billed["output_tokens"] - total["output"])
    assert unrecorded[0] >= 0 and unrecorded[1] >= 0
    worst = book.nano(HAIKU, Usage(unrecorded[0], unrecorded[1],
                                   billed["cache_creation_input_tokens"] - total.get("cache_write", 0),
                                   billed["cache_read_input_tokens"] - total.get("cache_read", 0)))
    assert worst <= total["lost_bound_nano"], "the bound on lost calls does not hold"
    assert swarm.redis().hlen(keys.inflight("t")) == 0
    # the tasks of the killed workers ran again, and each task's bill holds every call
    # recorded for it, those of the runs before included: a task billed for more than
    # one call (one call per run here) ran more than once, and says so
    metas = [swarm.redis().hgetall(keys.task_meta("t", t)) for t in ids]
    ran_again = [m for m in metas if int(m["attempts"]) >= 2]
    assert ran_again, "no task ran again after its worker died"
    assert sum(int(m.get("calls", 0)) for m in metas) == total["calls"]
    assert all(int(m["attempts"]) >= 2 for m in metas if int(m.get("calls", 0)) > 1)
    assert swarm.events("calls_lost")


def test_budget_stops_new_work_and_says_why(make_swarm, fake_api):
    fake_api.script = lambda req: text_reply("ok", input_tokens=1000, output_tokens=100)
    # each call: 1000 x $1/M + 100 x $5/M = $0.0015; budget: 5 calls' worth
    spec = fast_spec(pool("a", workers=1, model=HAIKU),
                     extra="budget_usd: 0.0075\n")
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    ids = submit_all(swarm, 20)
    wait_for(lambda: swarm.status()["paused"], 20, "the budget to pause the swarm")
    time.sleep(1.0)
    status = swarm.status()
    assert status["paused"].startswith("budget reached: the swarm spent $0.00")
    assert "of $0.0075" in status["paused"]
    done = status["tasks"]["done"]
    assert 5 <= done < 20 and status["tasks"]["queued"] == 20 - done
    assert fake_api.billed()["responses"] == done
    assert swarm.events("budget_reached")
    time.sleep(1.0)
    assert fake_api.billed()["responses"] == done, "work started after the budget was reached"
    spent = ledger_view(swarm)["total"]["*"]["nano"]
    assert spent >= 7_500_000 and spent <= 7_500_000 + 1_500_000  # one call in flight at most


def test_task_over_its_own_cost_limit_stops_and_fails(make_swarm, fake_api, tmp_path):
    (tmp_path / "x.txt").write_text("x")
    fake_api.script = lambda req: tool_use_reply("list_files", {}, input_tokens=2000,
                                                 output_tokens=100)
    spec = fast_spec(pool("a", workers=1, model=HAIKU,
                          extra="max_cost_usd: 0.005\nmax_turns: 50\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    finding = json.loads(swarm.cli("submit", "loop forever", "--wait", "--json").stdout)
    assert finding["status"] == "failed"
    assert finding["error"].startswith("task cost limit reached: $0.00")
    assert finding["error"].endswith("of max_cost_usd $0.005")
    # each call costs $0.0025: it stops at the 2nd, not the 50th
    assert finding["api_calls"] == 2 and fake_api.billed()["responses"] == 2


def test_rate_limit_holds_the_swarm_wide_request_rate(make_swarm, fake_api):
    times: list[float] = []

    def script(request: dict[str, Any]):
        times.append(time.monotonic())
        return text_reply("ok")

    fake_api.script = script
    spec = fast_spec(pool("a", workers=3, extra="concurrency: 8\n"),
                     extra="rate_limits:\n  test-model: {rpm: 600}\n")  # 10 per second
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    ids = submit_all(swarm, 50)
    wait_for(lambda: finished(swarm, ids), 30, "every task")
    span = times[-1] - times[0]
    rate = (len(times) - 10) / span  # the first second's worth may come at once
    assert span >= 3.5, f"50 requests in {span:.2f}s: the limit did not hold"
    assert rate <= 10 * 1.15, f"{rate:.1f} requests/s over a limit of 10/s"
    for start in times:  # no one-second window holds more than a second's worth + burst
        assert sum(1 for t in times if start <= t < start + 1.0) <= 21


@pytest.mark.parametrize("tpm", [6_000_000, 60_000])  # burst 100,000; burst 1,000 < bound
def test_token_limit_charges_what_calls_used_not_the_estimate(make_swarm, fake_api, tpm):
    """Admission charges the token bucket a bound (characters / 4 + max_tokens, at most
    the bucket's size); the settle gives back the difference, so the bucket ends charged
    with what was used."""
    fake_api.script = lambda req: text_reply("ok", input_tokens=1234, output_tokens=56)
    spec = fast_spec(pool("a", workers=1),
                     extra=f"rate_limits:\n  test-model: {{tpm: {tpm}}}\n")
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    finding = json.loads(swarm.cli("submit", "one call", "--wait", "--json").stdout)
    assert finding["tokens_used"] == 1234 + 56
    level = float(swarm.redis().hget(keys.rate("t", "test-model"), "tok"))
    assert level == tpm / 60 - (1234 + 56)


def test_a_429_slows_the_whole_swarm(make_swarm, fake_api):
    seen: list[tuple[float, str]] = []

    def script(request: dict[str, Any]):
        text = last_user_text(request)
        seen.append((time.monotonic(), text))
        if text == "trip" and sum(1 for _, t in seen if t == "trip") == 1:
            return error_reply(429, "rate_limit_error", "slow down", retry_after=1.5)
        return text_reply("ok")

    fake_api.script = script
    spec = fast_spec(pool("a", workers=2, extra="concurrency: 4\n"))
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    from launcher.client import Swarm as Api

    api = Api("t", swarm.redis())
    api.submit("trip")
    wait_for(lambda: seen, 10, "the first request")
    ids = api.submit_many([f"after {i}" for i in range(10)])
    wait_for(lambda: finished(swarm, ids), 20, "the other tasks")
    tripped = seen[0][0]
    others = [t for t, text in seen if text.startswith("after")]
    assert min(others) - tripped >= 1.2, "other workers kept calling during the cool-down"


def test_swarm_cost_reports_in_every_format(make_swarm, fake_api):
    fake_api.script = lambda req: text_reply("ok", input_tokens=1000, output_tokens=200,
                                             cache_read_input_tokens=10_000)
    spec = fast_spec(pool("a", workers=1, model=HAIKU)
                     + pool("b", workers=1), extra="prices:\n  test-model: {input: 2, output: 10}\n")
    swarm = make_swarm(spec, env=api_env(fake_api)).start()
    from launcher.client import Swarm as Api

    api = Api("t", swarm.redis())
    ids = api.submit_many(["x1", "x2"], pool="a") + api.submit_many(["y1"], pool="b")
    wait_for(lambda: finished(swarm, ids), 20, "tasks")
    # per call, in USD per million: haiku 1000 x 1 + 200 x 5 + 10000 x 0.1 = $0.003;
    # test-model (spec override) 1000 x 2 + 200 x 10 + 10000 x 0.2 (cache reads: 0.1 x input)
    # = $0.006
    report = json.loads(swarm.cli("cost", "--json").stdout)
    rows = {(r["kind"], r["key"]): r for r in report["rows"]}
    host = swarm.workers()["a-1"]["host"]
    a1 = ("worker", f"t/{host}/a-1")
    assert rows[a1]["cost_usd"] == 0.006 and rows[a1]["calls"] == 2
    hosts = json.loads(swarm.cli("cost", "--by", "host", "--json").stdout)["rows"]
    assert [(r["kind"], r["key"], r["cost_usd"]) for r in hosts if r["kind"] == "host"] == \
        [("host", host, 0.012)]
    assert rows[("model", "test-model")]["cost_usd"] == 0.006
    assert rows[("total", "total")]["cost_usd"] == 0.012
    assert rows[("total", "total")]["cache_read"] == 30_000
    reference = report["reference_model"]
    assert reference.startswith("claude-sonnet-") and report["price_source"].startswith("genai-prices")
    assert rows[("total", "total")]["reference_usd"] > 0
    assert report["price_source"].endswith("spec overrides: test-model")
    table = swarm.cli("cost")
    assert table.returncode == 0
    for needle in ("a-1", "b-1", "pool a", "model claude-haiku-4-5", "total", "$0.012000",
                   f"ON {reference}", "SAVED"):
        assert needle in table.stdout, needle
    # into a pipe (80 columns by default) the table is not wrapped: a row per line
    lines = table.stdout.splitlines()
    assert lines[0].split()[0] == "WORKER" and lines[0].endswith("LOST IN FLIGHT")
    assert len(lines[0]) > 80 and [line.split()[0] for line in lines[1:3]] == \
        [f"{host}/a-1", f"{host}/b-1"]
    by_host = swarm.cli("cost", "--by", "host").stdout.splitlines()
    assert by_host[0].split()[0] == "HOST" and by_host[1].split()[:2] == [host, "3"]
    csv_text = swarm.cli("cost", "--by", "pool", "--csv").stdout.splitlines()
    assert csv_text[0].startswith("kind,key,calls,input,output")
    assert any(line.startswith("pool,a,2,2000,400") for line in csv_text)
    by_task = json.loads(swarm.cli("cost", "--by", "task", "--json").stdout)["rows"]
    assert {r["key"] for r in by_task} == set(ids)
    recent = json.loads(swarm.cli("cost", "--since", "10m", "--json").stdout)
    assert {(r["kind"], r["key"]): r["cost_usd"] for r in recent["rows"]}[("total", "total")] == 0.012
    bad = swarm.cli("cost", "--by", "nope")
    assert bad.returncode == 2 and "--by must be one of" in bad.stderr
    bad_since = swarm.cli("cost", "--since", "soon")
    assert bad_since.returncode == 2 and bad_since.stderr.startswith("swarm: --since must be a duration")


def test_every_request_carries_a_cache_breakpoint_on_the_shared_prefix(make_swarm, fake_api):
    swarm = make_swarm(fast_spec(pool("a", workers=1)), env=api_env(fake_api)).start()
    swarm.redis().set("context:active", "the shared context")
    ids = submit_all(swarm, 3)
    wait_for(lambda: finished(swarm, ids), 20, "tasks")
    systems = [json.dumps(r["system"]) for r in fake_api.received()]
    assert len(set(systems)) == 1, "workers must share one identical prefix"
    system = fake_api.received()[0]["system"]
    assert system[-1]["cache_control"] == {"type": "ephemeral"}
    assert "the shared context" in system[-1]["text"]


@pytest.fixture
def ledger_redis(tmp_path) -> Any:
    """A real embedded Redis with nothing in it, for ledgers written by hand."""
    from launcher.redis_server import EmbeddedRedis
    from launcher.state import StateDir

    server = EmbeddedRedis(StateDir(tmp_path / "state"), tmp_path / "redis.log")
    client = server.start().sync()
    try:
        yield client
    finally:
        client.close()
        server.stop()


def record(redis: Any, swarm: str, pool_name: str, counts: dict[str, int]) -> None:
    """Add one pool's calls to every cut of the ledger, as the RECORD script does."""
    from workers import ledger_format

    cuts = (("total", "*"), ("worker", f"{swarm}/h1/{pool_name}-1"), ("host", "h1"),
            ("pool", pool_name), ("model", HAIKU))
    for dim, key in cuts:
        for metric, n in counts.items():
            redis.hincrby(keys.ledger(swarm), ledger_format.field(dim, key, metric), n)


def rendered(rows: list[costs.Row], by: str) -> str:
    import io

    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, soft_wrap=True, highlight=False, emoji=False).print(
        costs.render(rows, "claude-sonnet-4-5", "genai-prices", by))
    return buffer.getvalue()


def test_swarm_cost_shows_batch_spend_apart_and_what_it_saved(ledger_redis):
    # haiku per call, 1000 in + 200 out: standard $1 + $5 per million = $0.002000;
    # batch half of that = $0.001000
    book = PriceBook()
    standard = book.nano(HAIKU, Usage(1000, 200))
    batch = book.nano(HAIKU, Usage(1000, 200), batch=True)
    assert (standard, batch) == (2_000_000, 1_000_000)
    record(ledger_redis, "bt", "bulk", {"calls": 3, "input": 3000, "output": 600,
                                        "nano": 3 * batch, "batch_calls": 3,
                                        "batch_nano": 3 * batch, "batch_std_nano": 3 * standard})
    record(ledger_redis, "bt", "live", {"calls": 2, "input": 2000, "output": 400,
                                        "nano": 2 * standard})
    rows = costs.rows_by(costs.read_counters(ledger_redis, "bt"), "pool")
    got = {(r.kind, r.key): r.as_dict() for r in rows}
    total = got[("total", "total")]
    assert total["cost_usd"] == 0.007 and total["calls"] == 5
    assert (total["batch_usd"], total["batch_calls"], total["batch_saved_usd"],
            total["batch_saved_pct"], total["standard_usd"], total["standard_calls"]) == \
        (0.003, 3, 0.003, 50.0, 0.004, 2)
    assert (got[("pool", "bulk")]["batch_usd"], got[("pool", "bulk")]["standard_usd"]) == (0.003, 0)
    live = got[("pool", "live")]
    assert (live["batch_calls"], live["batch_usd"], live["batch_saved_usd"],
            live["batch_saved_pct"], live["standard_usd"]) == (0, 0, 0, None, 0.004)
    assert "batch_nano" not in total and "batch_std_nano" not in total  # money is in USD
    for by in ("pool", "worker"):
        text = rendered(costs.rows_by(costs.read_counters(ledger_redis, "bt"), by), by)
        lines = text.splitlines()
        under_total = lines[next(i for i, line in enumerate(lines)
                                 if line.startswith("total")) + 1]
        assert under_total == ("batch: $0.003000 in 3 calls (saved $0.003000 against standard "
                               "prices, 50.0%); standard: $0.004000 in 2 calls"), text
    header = costs.to_csv(rows).splitlines()[0]
    assert "batch_calls" in header and "batch_saved_usd" in header


def test_swarm_cost_without_batch_calls_prints_nothing_new(ledger_redis):
    record(ledger_redis, "st", "live", {"calls": 1, "input": 1000, "output": 200,
                                        "nano": 2_000_000})
    rows = costs.rows_by(costs.read_counters(ledger_redis, "st"), "pool")
    assert "batch" not in rendered(rows, "pool")
    total = rows[-1].as_dict()
    assert (total["batch_calls"], total["batch_usd"], total["batch_saved_pct"],
            total["standard_usd"], total["standard_calls"]) == (0, 0, None, 0.002, 1)
