"""`swarm run GOAL`: a lead model plans, hands tasks to worker pools, acts on each finding
as it arrives, and synthesizes with citations, within limits kept in code; a lead that
dies is resumed from its checkpoint without handing out or paying for anything twice.

Real swarms (supervisor, forked workers, the embedded Redis, the real SDK) against the
fake Messages API, whose scripts answer by what each request contains: the lead's
system prompt or a worker's, the task's text, the findings the lead has been shown.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from tests.harness import lead_script as ls
from tests.harness.fake_api import FakeAPI, Reply, text_reply, tool_use_reply
from tests.harness.procs import wait_for
from tests.harness.swarm import api_env, fast_spec, pool
from workers import keys, ledger_format

pytestmark = pytest.mark.timeout(180)

PRICES = ("prices:\n  test-model: {input: 1, output: 5}\n"
          "  lead-model: {input: 0.3, output: 1.5}\n")


def lead_spec(lead_extra: str = "", cheap_extra: str = "", workers: int = 2,
              leads: int = 1, more_pools: str = "") -> str:
    cheap = pool("cheap", workers=workers, extra="concurrency: 8\nmax_tokens: 1000\n"
                 "max_turns: 4\n" + cheap_extra)
    lead = pool("lead", workers=leads, model="lead-model", extra=(
        "role: lead\ndelegates_to: [cheap]\nconcurrency: 2\nmax_tokens: 2000\n"
        "task_timeout: 5m\n" + lead_extra))
    return fast_spec(cheap + more_pools + lead, extra=PRICES)


def start(make_swarm: Any, fake_api: FakeAPI, spec: str) -> Any:
    swarm = make_swarm(spec, env=api_env(fake_api))
    swarm.start()
    return swarm


def run_info(swarm: Any, run_id: str) -> dict[str, Any]:
    from launcher.client import Swarm

    info = Swarm(swarm.name, swarm.redis()).run_info(run_id)
    assert info is not None
    return info


def ledger(swarm: Any) -> dict[str, str]:
    return dict(swarm.redis().hgetall(keys.ledger(swarm.name)))


def worker_requests(fake: FakeAPI, word: str) -> list[dict[str, Any]]:
    return [r for r in fake.received() if not ls.is_lead(r) and word in ls.task_text(r)]


# --- a fast finding acted on while a slow task still runs; citations checked ------------


def test_fast_finding_acted_on_while_slow_runs(make_swarm: Any, fake_api: FakeAPI) -> None:
    follow_up_done = threading.Event()

    async def script(req: dict[str, Any]) -> Reply:
        if not ls.is_lead(req):
            task = ls.task_text(req)
            if "SLOW" in task and len(req["messages"]) > 1:
                # the slow task ends only once the follow-up (handed out after the fast
                # finding) has reported: a lead that waited for every task first would
                # never get there
                await asyncio.to_thread(follow_up_done.wait, 60)
                return text_reply("slow answer: 42")
            if "FOLLOWUP" in task and len(req["messages"]) > 1:
                follow_up_done.set()
            return ls.worker_answer(req, f"answer about {task.split()[0]}")
        seen, said = ls.findings_shown(req), ls.asked(req)
        if len(req["messages"]) == 1:
            return ls.hand_out(("FAST look at a", "a line"), ("SLOW look at b", "a line"))
        if "FOLLOWUP" not in said and "answer about FAST" in ls.shown(req):
            return ls.hand_out(("FOLLOWUP dig into what FAST found", "a line"))
        if len(seen) < 3:
            return ls.wait()
        if "Refused:" not in ls.shown(req):  # first a citation that is not the run's
            return ls.synthesis("All done.", [*seen, "finding_0123456789abcdef"])
        return ls.synthesis("All done: 42.", list(seen))

    fake_api.script = script
    swarm = start(make_swarm, fake_api, lead_spec())
    result = swarm.cli("run", "find the answer", "--wait", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["state"] == "done", info
    tasks = {t["id"]: t for t in info["tasks"]}
    assert len(tasks) == 3
    metas = {tid: swarm.redis().hgetall(keys.task_meta(swarm.name, tid)) for tid in tasks}
    slow = next(t for t in tasks if "SLOW" in swarm.redis().get(keys.task(t)))
    follow = next(t for t in tasks if "FOLLOWUP" in swarm.redis().get(keys.task(t)))
    # the follow-up was handed out while the slow task was still running
    assert float(metas[follow]["submitted"]) < float(metas[slow]["finished"])
    # evidence: every worker looked (one list_files) before answering
    assert all(t["tool_calls"] == 1 for t in info["tasks"]), info["tasks"]
    result_finding = info["result"]
    assert sorted(result_finding["citations"]) == sorted(t["finding"] for t in info["tasks"])
    assert "finding_0123456789abcdef" not in result_finding["result"]
    assert result_finding["run"] == info["id"] and result_finding["partial"] is False
    # the lead was told its foreign citation was refused, and wrote again
    refused = [r for r in fake_api.received() if ls.is_lead(r) and "Refused:" in ls.shown(r)]
    assert refused and "finding_0123456789abcdef" in ls.last_shown(refused[0])
    # the seed's format: the run's result is a finding like any other
    for field in ("finding_id", "worker_id", "timestamp", "task", "result", "files_changed",
                  "citations", "tokens_used", "cost"):
        assert field in result_finding
    # and what it cost is the ledger's: every call of the lead and of its tasks
    assert info["spent_nano"] == int(ledger(swarm)[ledger_format.field(
        "run", info["id"], "nano")])
    assert info["calls"] == fake_api.requests


# --- the lead SIGKILLed mid-run, resumed from its checkpoint by another lead worker -----


def test_killed_lead_resumes_without_handing_out_or_paying_twice(make_swarm: Any,
                                                                  fake_api: FakeAPI) -> None:
    import os
    import signal

    release = threading.Event()

    async def script(req: dict[str, Any]) -> Reply:
        if not ls.is_lead(req):
            task = ls.task_text(req)
            if "BRAVO" in task and len(req["messages"]) > 1:
                await asyncio.to_thread(release.wait, 60)
            return ls.worker_answer(req, f"answer about {task.split()[0]}")
        seen = ls.findings_shown(req)
        if len(req["messages"]) == 1:
            return ls.hand_out(("ALPHA look", "a line"), ("BRAVO look", "a line"))
        if len(seen) < 2:
            return ls.wait()
        return ls.synthesis("Both answered.", list(seen))

    fake_api.script = script
    swarm = start(make_swarm, fake_api, lead_spec(leads=2))
    from launcher.client import Swarm

    api = Swarm(swarm.name, swarm.redis())
    run_id = api.run("look at both")
    checkpoint = keys.run_checkpoint(swarm.name, run_id)

    def waiting_for_bravo() -> bool:
        raw = swarm.redis().get(checkpoint)
        if not raw:
            return False
        state = json.loads(raw)
        last = state["messages"][-1]
        return (state["phase"] == "answered" and "answer about ALPHA" in raw
                and any(b.get("name") == "wait_for_findings" for b in last["content"]))

    wait_for(waiting_for_bravo, 60, "the lead waiting for BRAVO after ALPHA's finding")
    time.sleep(0.3)  # well inside the wait tool (no API call of the lead in flight)
    lead_worker = swarm.redis().hget(keys.task_meta(swarm.name, run_id), "worker")
    pid = swarm.worker_pids()[lead_worker.split("#")[0]]
    lead_calls_before = len([r for r in fake_api.received() if ls.is_lead(r)])
    os.kill(pid, signal.SIGKILL)
    release.set()
    info = api.wait_run(run_id, timeout=90)
    assert info["state"] == "done", info
    assert int(swarm.redis().hget(keys.task_meta(swarm.name, run_id), "attempts")) == 2
    # nothing handed out twice: two tasks, each run once (a look and an answer)
    assert [t["id"] for t in info["tasks"]] == [f"{run_id}.1.1", f"{run_id}.1.2"]
    assert info["handed"] == 2
    assert len(worker_requests(fake_api, "ALPHA")) == 2
    assert len(worker_requests(fake_api, "BRAVO")) == 2
    # the resumed lead went on from its checkpoint: one more call (the synthesis after
    # BRAVO's finding), not the run again
    lead_calls = [r for r in fake_api.received() if ls.is_lead(r)]
    assert len(lead_calls) == lead_calls_before + 1 == 4
    assert sorted(info["result"]["citations"]) == sorted(t["finding"] for t in info["tasks"])
    # and the ledger is the fake's bill, to the token, per model
    billed, counted = fake_api.billed(), ledger(swarm)
    for model, figures in billed["by_model"].items():
        for metric, name in (("calls", "responses"), ("input", "input_tokens"),
                             ("output", "output_tokens"),
                             ("cache_write", "cache_creation_input_tokens"),
                             ("cache_read", "cache_read_input_tokens")):
            assert int(counted.get(ledger_format.field("model", model, metric), 0)) == \
                figures[name], (model, metric)
    assert not counted.get(ledger_format.field("total", "*", "lost_calls"))


# --- limits: fan-out clamped, the budget refusing work, an honest partial end ------------


def test_fan_out_is_clamped_by_the_run_limits(make_swarm: Any, fake_api: FakeAPI) -> None:
    def script(req: dict[str, Any]) -> Reply:
        if not ls.is_lead(req):
            return text_reply(f"ok {ls.task_text(req).split()[0]}")
        shown, seen = ls.shown(req), ls.findings_shown(req)
        if len(req["messages"]) == 1:
            return ls.hand_out(*[(f"Q{i} answer it", "a word") for i in range(30)])
        if "max_tasks" not in shown:
            if "max_in_flight" in ls.last_shown(req) or "handed out to" in ls.last_shown(req):
                return ls.wait()
            return ls.hand_out(*[(f"R{i} answer it", "a word") for i in range(30)])
        if "No task of this run is in flight" not in ls.last_shown(req):
            return ls.wait()
        return ls.synthesis("Partial answers.", list(seen))

    fake_api.script = script
    swarm = start(make_swarm, fake_api, lead_spec())
    from launcher.client import Swarm

    api = Swarm(swarm.name, swarm.redis())
    run_id = api.run("answer sixty questions", max_tasks=10, max_in_flight=4)
    info = api.wait_run(run_id, timeout=90)
    first = next(r for r in fake_api.received()
                 if ls.is_lead(r) and len(r["messages"]) == 3)
    answer = ls.last_shown(first)
    assert answer.count("handed out to cheap") == 4
    assert answer.count("refused: max_in_flight") == 26
    assert info["handed"] == 10 and len(info["tasks"]) == 10
    assert "refused: max_tasks" in ls.shown(fake_api.received()[-1]) or any(
        "refused: max_tasks" in ls.shown(r) for r in fake_api.received() if ls.is_lead(r))
    assert info["state"] == "partial" and info["limit"].startswith("max_tasks")
    assert info["result"]["result"].startswith("[partial: max_tasks")
    assert info["result"]["partial"] is True


def test_budget_refuses_work_and_the_run_ends_partial(make_swarm: Any,
                                                      fake_api: FakeAPI) -> None:
    wanted = 8

    def script(req: dict[str, Any]) -> Reply:
        if not ls.is_lead(req):  # each task bills 5,000 input tokens: $0.005 and a bit
            return text_reply(f"ok {ls.task_text(req).split()[0]}", input_tokens=5000)
        shown, last = ls.shown(req), ls.last_shown(req)
        accepted = shown.count("handed out to cheap")
        if len(req["messages"]) == 1:
            return ls.hand_out(*[(f"Q{i} answer it", "a word") for i in range(wanted)])
        if "LIMIT REACHED" in last or "No task of this run is in flight" in last:
            return ls.synthesis("What we have.", list(ls.findings_shown(req)))
        if "refused: budget" in last and "wait for their findings" not in last:
            return ls.wait()  # the budget itself is spent: no more hand-outs
        if ls.findings_shown(req) and accepted < wanted and "[finding_" in last:
            return ls.hand_out(*[(f"R{accepted + i} answer it", "a word")
                                 for i in range(wanted - accepted)])
        return ls.wait()

    fake_api.script = script
    # a cheap task costs at most $0.01 (max_cost_usd): with $0.035, three fit at once
    # beside what the lead keeps back for its own last call (about $0.005 here)
    swarm = start(make_swarm, fake_api, lead_spec(cheap_extra="max_cost_usd: 0.01\n"))
    from launcher.client import Swarm

    api = Swarm(swarm.name, swarm.redis())
    run_id = api.run("answer eight questions", budget_usd=0.035)
    info = api.wait_run(run_id, timeout=90)
    first = ls.last_shown(next(r for r in fake_api.received()
                               if ls.is_lead(r) and len(r["messages"]) == 3))
    # at first the reservations of the tasks in flight hold the rest back (not a limit)
    at_once = first.count("handed out to cheap")
    assert 1 <= at_once < wanted
    assert first.count("wait for their findings, then hand it out again") == wanted - at_once
    # later the money itself runs out: the run's limit, and an honest partial end
    assert info["handed"] < wanted and info["handed"] > at_once
    assert info["state"] == "partial" and info["limit"].startswith("budget"), info["limit"]
    assert info["spent_nano"] <= 35_000_000
    assert info["result"]["result"].startswith("[partial: budget")
    assert len(info["result"]["citations"]) == info["handed"] == info["finished"]


def test_the_lead_turns_limit_ends_with_a_synthesis_without_tools(
        make_swarm: Any, fake_api: FakeAPI) -> None:
    def script(req: dict[str, Any]) -> Reply:
        if not ls.is_lead(req):
            return text_reply(f"ok {ls.task_text(req).split()[0]}")
        if "LIMIT REACHED" in ls.last_shown(req):
            return ls.synthesis("Out of turns; what we have.", list(ls.findings_shown(req)))
        if len(req["messages"]) == 1:
            return ls.hand_out(("Q1 answer it", "a word"))
        return tool_use_reply("run_status", {})  # a lead that never stops looking

    fake_api.script = script
    swarm = start(make_swarm, fake_api, lead_spec(lead_extra="max_turns: 4\n"))
    from launcher.client import Swarm

    api = Swarm(swarm.name, swarm.redis())
    info = api.wait_run(api.run("answer one question"), timeout=60)
    leads = [r for r in fake_api.received() if ls.is_lead(r)]
    assert len(leads) == 4
    assert leads[-1]["tool_choice"] == {"type": "none"}
    assert all("tool_choice" not in r for r in leads[:-1])
    assert "LIMIT REACHED (max lead turns: 4" in ls.last_shown(leads[-1])
    assert "lead turns: 2 of 4" in ls.shown(leads[-1])  # what run_status told it
    assert info["state"] == "partial" and info["limit"].startswith("max lead turns")
    assert info["result"]["result"].startswith("[partial: max lead turns")
    assert info["result"]["citations"] == [info["tasks"][0]["finding"]]


# --- hand-back: seen as such by a lead; escalated outside a run ---------------------------


def test_hand_back_is_seen_by_the_lead_and_escalated_outside_a_run(
        make_swarm: Any, fake_api: FakeAPI) -> None:
    def script(req: dict[str, Any]) -> Reply:
        task = ls.task_text(req)
        if not ls.is_lead(req):
            if req["model"] == "test-model" and "HARD" in task:
                return tool_use_reply("hand_back", {"reason": "it needs a proof I cannot give"})
            return text_reply(f"proved, by {req['model']}")
        last = ls.last_shown(req)
        if len(req["messages"]) == 1:
            return ls.hand_out(("HARD prove the lemma", "the proof"))
        if "HANDED BACK" in last:
            return ls.hand_out({"objective": "HARD prove the lemma, carefully",
                                "output": "the proof", "pool": "strong"})
        if "proved, by strong-model" in last:
            return ls.synthesis("Proved.", list(ls.findings_shown(req)))
        return ls.wait()

    fake_api.script = script
    strong = pool("strong", model="strong-model", extra="concurrency: 4\n")
    spec = lead_spec(cheap_extra="escalate_to: strong\n", more_pools=strong,
                     lead_extra="").replace("delegates_to: [cheap]",
                                            "delegates_to: [cheap, strong]")
    spec = spec.replace("prices:\n", "prices:\n  strong-model: {input: 3, output: 15}\n")
    swarm = start(make_swarm, fake_api, spec)
    from launcher.client import Swarm

    api = Swarm(swarm.name, swarm.redis())
    # outside a run: handed back by cheap, run again on strong, with the reason
    task_id = api.submit("HARD prove the lemma", pool="cheap")
    finding = api.wait(task_id, timeout=60)
    assert finding["status"] == "done" and finding["pool"] == "strong"
    assert finding["result"] == "proved, by strong-model"
    meta = swarm.redis().hgetall(keys.task_meta(swarm.name, task_id))
    assert meta["escalated_from"] == "cheap" and meta["pool"] == "strong"
    strong_asked = [r for r in fake_api.received()
                    if r["model"] == "strong-model" and "HARD prove the lemma" == ls.task_text(
                        r).split("\n")[0]]
    assert "it needs a proof I cannot give" in ls.task_text(strong_asked[0])
    # inside a run: the lead sees the hand-back as such, and decides (no escalation)
    run_id = api.run("prove the lemma")
    info = api.wait_run(run_id, timeout=60)
    assert info["state"] == "done"
    first, second = info["tasks"]
    assert (first["pool"], first["state"]) == ("cheap", "handed_back")
    assert (second["pool"], second["state"]) == ("strong", "done")
    assert any("HANDED BACK (needs deeper reasoning): it needs a proof I cannot give"
               in ls.shown(r) for r in fake_api.received() if ls.is_lead(r))
    assert swarm.status()["tasks"]["handed_back"] == 1


# --- 200 findings of 3,000 tokens: the lead's requests stay bounded -----------------------


def test_two_hundred_long_findings_keep_the_lead_request_bounded(
        make_swarm: Any, fake_api: FakeAPI) -> None:
    from workers.lead import COMPACT_AT, TURN_RESULT_CHARS

    long_answer = "x" * 11_990  # 3,000 tokens at the fake's 4 characters a token

    def script(req: dict[str, Any]) -> Reply:
        if not ls.is_lead(req):
            return text_reply(f"{ls.task_text(req).split()[0]} {long_answer}")
        said, last = ls.asked(req), ls.last_shown(req)
        if len(req["messages"]) == 1:
            return ls.hand_out(*[(f"A{i:03d} measure it", "the figure") for i in range(100)])
        if "B000" not in said:
            return ls.hand_out(*[(f"B{i:03d} measure it", "the figure") for i in range(100)])
        if "No task of this run is in flight" in last:
            return ls.synthesis("All measured.", list(ls.findings_shown(req))[-5:])
        return ls.wait()

    fake_api.script = script
    swarm = start(make_swarm, fake_api, lead_spec(lead_extra="max_turns: 60\n"))
    from launcher.client import Swarm

    api = Swarm(swarm.name, swarm.redis())
    run_id = api.run("measure two hundred things", budget_usd=10, max_tasks=200,
                     max_in_flight=200)
    info = api.wait_run(run_id, timeout=150)
    assert info["state"] == "done" and info["finished"] == 200, info.get("limit")
    sizes = [len(json.dumps(r)) for r in fake_api.received() if ls.is_lead(r)]
    # the bound: the conversation kept under COMPACT_AT, plus the last answer (the hand-out
    # of 100 tasks, about 9,000 characters) and its results (at most TURN_RESULT_CHARS),
    # plus the tools and system prompt (about 9,000)
    bound = COMPACT_AT + TURN_RESULT_CHARS + 20_000
    assert max(sizes) <= bound, (max(sizes), bound)
    print(f"largest lead request: {max(sizes):,} characters of JSON (bound {bound:,})")
    # while the findings' whole text was 2.4 MB: they came cut short, and the oldest
    # results were later replaced by their digests
    assert 200 * len(long_answer) > 10 * bound
    lead_texts = [ls.shown(r) for r in fake_api.received() if ls.is_lead(r)]
    assert any("more characters: read_finding finding_" in t for t in lead_texts)
    assert any("[shortened: read_finding gives one whole]" in t for t in lead_texts)


# --- the CLI: run --wait, runs, show RUN, cost --by run; a swarm with no lead ------------


def test_the_cli_runs_lists_shows_and_costs_a_run(make_swarm: Any, fake_api: FakeAPI) -> None:
    def script(req: dict[str, Any]) -> Reply:
        if not ls.is_lead(req):
            return ls.worker_answer(req, "the answer is 7")
        if len(req["messages"]) == 1:
            return ls.hand_out(("COUNT the modules", "a number"))
        seen = ls.findings_shown(req)
        return ls.synthesis("There are 7.", list(seen)) if seen else ls.wait()

    fake_api.script = script
    swarm = start(make_swarm, fake_api, lead_spec())
    done = swarm.cli("run", "how many modules?", "--wait", "--budget", "1.5", timeout=90)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    run_id = lines[0].split()[1]
    assert run_id.startswith("run_")
    assert any("handed out 1 · findings back 1" in line for line in lines), lines
    assert "There are 7. [finding_" in done.stdout and "done: $" in done.stdout
    listed = swarm.cli("runs")
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(run_id))
    assert " done " in row and " 1/1 " in row and "$1.50" in row and "how many modules?" in row
    shown = swarm.cli("show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert f"{run_id}.1.1 · cheap · done · attempts 1" in shown.stdout
    assert "1 tool calls" in shown.stdout and "the answer is 7" in shown.stdout
    costs = json.loads(swarm.cli("cost", "--by", "run", "--json").stdout)
    row = next(r for r in costs["rows"] if r["kind"] == "run")
    assert row["key"] == run_id and row["calls"] == fake_api.requests == 5
    total = next(r for r in costs["rows"] if r["kind"] == "total")
    assert row["cost_usd"] == total["cost_usd"] > 0


def test_run_refuses_what_it_cannot_do_in_one_line(make_swarm: Any, fake_api: FakeAPI) -> None:
    swarm = start(make_swarm, fake_api, fast_spec(pool("cheap")))
    for args, words in ((["a goal"], "has no lead pool: add a pool with 'role: lead'"),
                        (["a goal", "--budget", "0"], "the budget must be more than 0"),
                        (["  "], "the goal is empty")):
        result = swarm.cli("run", *args)
        assert result.returncode == 2, result
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
