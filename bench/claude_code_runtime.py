"""Claude Code as a worker runtime against the built-in loop: time, CPU, memory and
request size per task, and how many Claude Code tasks this machine holds at once.

    .venv/bin/python -m bench.claude_code_runtime            # full size, 5-8 min
    .venv/bin/python -m bench.claude_code_runtime --small    # a quick look, ~1 min
    .venv/bin/python -m bench.claude_code_runtime --keep     # keep the swarm's logs

One swarm, one fake Messages API (tests/harness/fake_api.py, in this process), the same
model (tests.harness.claude_code.MODEL) and the same task for both runtimes: ``write
out-NNNN.txt: hello``, which the model does with its write tool (Claude Code's ``Write``,
the built-in loop's ``write_file``), then answers: two API calls per task. Four pools,
one worker each: ``bi`` (built-in) and ``cc`` (``runtime: claude-code``) at
``--concurrency`` (4), and ``bi_wide`` / ``cc_wide`` at the widest step of the ramp.
Claude Code is the real CLI of claude-agent-sdk, run by the worker through its sandbox
wrapper (``/bin/sh`` exec'ing ``python -I -S workers/_sandbox_init.py``, which forks the
CLI as pid 1 of its namespaces and waits for it), every call through the worker's
metering proxy to the fake.

1. Wall time: ``--singles`` tasks one at a time (submit -> result in Redis; the two
   runtimes interleaved), then ``--batch`` tasks submitted at once to each runtime's
   pool (first submit -> last result).
2. CPU per task, over the batch: the worker's own user+system CPU plus its
   ``children_user``/``children_system`` (what its reaped children, and what they
   reaped, used: the sandbox's outer process waits for the CLI, the worker for the
   outer process), read once every CLI of the batch has exited, divided by the tasks.
   A sampler also reads each live descendant's own CPU every 0.2 s, as a check that the
   reaped totals hold everything (it misses what a process did after its last sample).
   The fake API and the supervisor are not counted (the same for both).
3. Memory per task in flight: the fake holds each task's first call unanswered until
   N tasks have sent theirs (all N CLIs are then up and waiting), the worker's process
   tree (psutil ``memory_full_info``: RSS and PSS, every descendant) is read every
   0.5 s, and the peak minus the same worker idle, divided by N, is the cost of a task
   in flight; the tree's CPU over 3 s of that wait is what a waiting task burns. Then
   the calls are released and the tasks finish. The wide pools run one task each
   first, so their prompts are cached and the built-in loop's cache gate (one first
   call alone for a prefix new to the worker) does not hold the others back.
4. Request size: the first request of each task of the batch (no tool_result yet), its
   input tokens as the fake counts them (~4 characters a token: tools, system prompt,
   messages), the task's own words apart; and what the batch was billed per task
   (input, cache writes, cache reads, output, and dollars from the ledger).
5. The ramp: Claude Code tasks held in flight on one worker, N = ``--ramp`` (8, 16,
   32, 64, 128) as in 3: how long until all N CLIs have sent their first call, memory at
   that point, time to finish once released, the longest the worker's heartbeat went
   unrenewed (it beats every 2 s, expiry 60 s here; swarm's default expiry is 15 s),
   and the step's cache writes and dollars per task. A step is skipped if the previous
   step's memory per task says it would leave less than 3 GiB available, and a step
   ends (released) when all N are in, after ``--hold`` seconds, or if available memory
   falls under 2 GiB or the worker is gone (the tasks then go on unheld, and the step
   reports how many ended done). The built-in loop's in-flight memory is read first, at
   the smallest and the widest N.

The task numbers have one width (``out-0042.txt``): Claude Code's first system block is
``x-anthropic-billing-header: cc_version=2.1.332.4ee; ...`` whose last three hex digits
change with the task's text (``out-0.txt`` and ``out-100.txt`` get different ones), and
the fake counts that block in the cached prefix, so tasks whose numbers differ in
length would each write the ~9,500-token prompt to the cache again. Each pool's prompt
is its own too (it names the workdir's memory folder).

Every wait is bounded; the swarm is stopped and its folder removed at the end, and any
Claude Code process left running (a CLI or its sandbox) is reported and killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench._common import MachineLoad, bench_swarm, machine, sigterm_exits, table
from launcher import costs
from tests.harness.claude_code import MODEL, claude_code_script
from tests.harness.fake_api import (
    FakeAPI,
    Reply,
    Request,
    request_layout,
    text_reply,
    tool_use_reply,
)
from tests.harness.swarm import SwarmRun, api_env
from workers import keys

GiB = 2**30
TASK = "write out-{n:04d}.txt: hello"  # one width: see the module's docstring
TASK_RE = re.compile(r"write out-(\d+)\.txt")
POLL = 0.02
CLI_MARK = "_bundled/claude"  # in the argv of the CLI and of its sandbox's outer process
RUNTIMES = {"bi": "built-in", "cc": "claude-code"}


# --- the fake model: one script for both runtimes ------------------------------------


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def is_first(request: Request) -> bool:
    """The first call of a task: no tool_result in it yet."""
    return not any(b.get("type") == "tool_result" for m in request.get("messages") or []
                   for b in _blocks(m))


def is_claude_code(request: Request) -> bool:
    return any(isinstance(t, dict) and t.get("name") == "Write"
               for t in request.get("tools") or [])


def builtin_script(request: Request) -> Reply:
    """``write FILE: TEXT`` with the built-in ``write_file`` tool, then ``done`` and the
    tool's result (what claude_code_script does for Claude Code)."""
    messages = request.get("messages") or []
    results = [b for m in messages for b in _blocks(m) if b.get("type") == "tool_result"]
    if results:
        said = results[-1].get("content")
        said = said if isinstance(said, str) else "".join(
            b.get("text", "") for b in said or [] if isinstance(b, dict))
        return text_reply(f"done\n{said}")
    task = " ".join(b.get("text", "") for b in _blocks(messages[0]) if b.get("type") == "text")
    name, _, text = task.partition(":")
    return tool_use_reply("write_file", {"path": name.removeprefix("write ").strip(),
                                         "content": text.strip()})


class Model:
    """The fake's script. While ``holding``, a task's first call is answered only once
    ``release`` is set (or after ``hold_max`` s): its CLI stays up, waiting."""

    def __init__(self, hold_max: float) -> None:
        self.hold_max = hold_max
        self.holding = False
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.arrived = 0  # first calls received while holding
        # task number -> monotonic times: its first call arrived, its last answer given
        self.first_call: dict[int, float] = {}
        self.last_answer: dict[int, float] = {}

    def hold(self) -> None:
        with self._lock:
            self.arrived = 0
        self.release.clear()
        self.holding = True

    def let_go(self) -> None:
        self.holding = False
        self.release.set()

    async def __call__(self, request: Request) -> Reply:
        reply = (claude_code_script(request) if is_claude_code(request)
                 else builtin_script(request))
        first = is_first(request)
        if m := TASK_RE.search(json.dumps(request.get("messages"))):
            number = int(m.group(1))
            if first:
                self.first_call.setdefault(number, time.monotonic())
            elif reply.stop_reason != "tool_use":
                self.last_answer[number] = time.monotonic()
        if self.holding and first:
            with self._lock:
                self.arrived += 1
            deadline = time.monotonic() + self.hold_max
            while not self.release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return reply


# --- the swarm -----------------------------------------------------------------------


def pool_yaml(name: str, runtime: str, concurrency: int) -> str:
    extra = "runtime: claude-code\n" if runtime == "cc" else ""
    return textwrap.dedent(f"""\
        {name}:
          model: {MODEL}
          workers: 1
          concurrency: {concurrency}
          workdir: work-{name}
          task_timeout: 300s
          heartbeat: {{expiry: 60s, interval: 2s}}
        """) + textwrap.indent(extra, "  ")


def submit(swarm: SwarmRun, pool: str, texts: list[str]) -> list[str]:
    from launcher.client import Swarm as Api

    return Api(swarm.name, swarm.redis()).submit_many(texts, pool=pool)


def wait_results(swarm: SwarmRun, ids: list[str], timeout: float) -> float | None:
    """Seconds until every task has a result (polled every 20 ms), None past ``timeout``."""
    r = swarm.redis()
    names = [keys.task_result(i) for i in ids]
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if all(r.mget(names)):
            return time.perf_counter() - start
        time.sleep(POLL)
    return None


def findings(swarm: SwarmRun, ids: list[str]) -> list[dict[str, Any]]:
    r = swarm.redis()
    out = []
    for fid in r.mget([keys.task_result(i) for i in ids]):
        raw = r.get(keys.finding(fid)) if fid else None
        out.append(json.loads(raw) if raw else {"status": "missing", "error": "no result"})
    return out


def worker_pid(swarm: SwarmRun, pool: str) -> int:
    [pid] = [int(row["pid"]) for row in swarm.status()["workers"] if row["pool"] == pool]
    return pid


def children_gone(pid: int, timeout: float = 30.0) -> bool:
    """Wait (bounded) until the worker has no child process left (every CLI exited);
    True at once for a worker that is gone (see :func:`orphans`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not psutil.Process(pid).children(recursive=True):
                return True
        except psutil.Error:
            return True
        time.sleep(0.1)
    return False


def orphans(swarm: SwarmRun, pool: str) -> list[psutil.Process]:
    """Claude Code processes (CLI or sandbox) working in this swarm's folder that are not
    under the pool's current worker: what a killed worker would have left behind."""
    folder = str(swarm.folder)
    try:
        mine = {p.pid for p in psutil.Process(worker_pid(swarm, pool)).children(True)}
    except Exception:  # noqa: BLE001 - no current worker: every such process is left over
        mine = set()
    return [p for p in psutil.process_iter() if p.pid not in mine and _is_cli(p)
            and _in(p, folder)]


# --- processes: CPU and memory of a worker's tree -----------------------------------


def reaped_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds: the worker's own, and its reaped children's (and theirs); NaN for a
    worker that is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan"), float("nan")
    return t.user + t.system, t.children_user + t.children_system


class Sampler:
    """Every ``every`` s, each live descendant of ``pid``: its own CPU so far (kept per
    process: the last value seen)."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid = pid
        self.last: dict[tuple[int, float], float] = {}  # (pid, create_time) -> CPU s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._done.wait(every):
            try:
                procs = psutil.Process(self.pid).children(recursive=True)
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    with proc.oneshot():
                        t = proc.cpu_times()
                        self.last[(proc.pid, proc.create_time())] = t.user + t.system
                except psutil.Error:
                    pass

    def stop(self) -> float:
        self._done.set()
        self._thread.join(5)
        return sum(self.last.values())


@dataclass
class Mem:
    rss: int = 0
    pss: int = 0
    procs: int = 0
    clis: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [PSS of each]


def kind_of(proc: psutil.Process, root: int) -> str:
    if proc.pid == root:
        return "worker"
    try:
        line = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    if "_sandbox_init.py" in line:
        return "sandbox (outer python)"
    if CLI_MARK in line:
        return "claude CLI"
    return "other"


def tree_mem(pid: int) -> Mem:
    mem = Mem()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return mem
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        kind = kind_of(proc, pid)
        pss = getattr(info, "pss", info.rss)
        mem.rss += info.rss
        mem.pss += pss
        mem.procs += 1
        mem.clis += kind == "claude CLI"
        mem.by_kind.setdefault(kind, []).append(pss)
    return mem


def tree_cpu(pid: int) -> float:
    """The live tree's own CPU seconds so far (the worker and every descendant)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def idle_mem(pid: int, reads: int = 3) -> Mem:
    """The idle worker: the smallest of a few reads."""
    found = []
    for _ in range(reads):
        found.append(tree_mem(pid))
        time.sleep(0.3)
    return min(found, key=lambda m: m.pss)


class BeatWatch:
    """The longest the worker's heartbeat went unrenewed while watched: its timestamp
    (``keys.heartbeat``) read every 0.25 s, age = now - the last beat."""

    def __init__(self, swarm: SwarmRun, pool: str) -> None:
        [self.worker] = [row["worker"] for row in swarm.status()["workers"]
                         if row["pool"] == pool]
        target = swarm.state.read_redis()
        assert target is not None
        self.client = target.sync(socket_timeout=10)
        self.longest = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from datetime import datetime

        while not self._done.wait(0.25):
            try:
                beat = self.client.get(keys.heartbeat(self.worker))
            except Exception:  # noqa: BLE001 - Redis busy or gone: try again
                continue
            if beat:
                stamp = beat.decode() if isinstance(beat, bytes) else beat
                age = time.time() - datetime.fromisoformat(stamp).timestamp()
                self.longest = max(self.longest, age)

    def stop(self) -> float:
        self._done.set()
        self._thread.join(5)
        self.client.close()
        return self.longest


def available() -> int:
    return psutil.virtual_memory().available


# --- the measurements ------------------------------------------------------------------


@dataclass
class Batch:
    wall: float | None
    cpu: float  # worker + reaped children
    own: float  # the worker process itself
    sampled: float
    done: int
    failed: list[str]
    billed: dict[str, int]
    cost_nano: int
    calls: int
    tree_left: bool
    silence: float


def billed_now(fake: FakeAPI) -> dict[str, int]:
    b = fake.billed()
    return {k: int(b[k]) for k in ("responses", "input_tokens", "output_tokens",
                                     "cache_creation_input_tokens", "cache_read_input_tokens")}


def run_batch(swarm: SwarmRun, fake: FakeAPI, pool: str, first: int, n: int,
              timeout: float) -> tuple[Batch, list[str]]:
    pid = worker_pid(swarm, pool)
    children_gone(pid)
    cpu0, bill0 = reaped_cpu(pid), billed_now(fake)
    sampler, beats = Sampler(pid), BeatWatch(swarm, pool)
    t0 = time.perf_counter()
    ids = submit(swarm, pool, [TASK.format(n=i) for i in range(first, first + n)])
    waited = wait_results(swarm, ids, timeout)
    wall = None if waited is None else time.perf_counter() - t0
    left = not children_gone(pid)
    sampled, silence = sampler.stop(), beats.stop()
    own1, children1 = reaped_cpu(pid)
    own, cpu = own1 - cpu0[0], own1 + children1 - sum(cpu0)
    bill1 = billed_now(fake)
    found = findings(swarm, ids)
    return Batch(
        wall=wall, cpu=cpu, own=own, sampled=sampled,
        done=sum(f["status"] == "done" for f in found),
        failed=[f"{f['status']}: {f.get('error')}" for f in found if f["status"] != "done"],
        billed={k: bill1[k] - bill0[k] for k in bill0},
        cost_nano=sum(int(f.get("cost_nano_usd") or 0) for f in found),
        calls=sum(int(f.get("api_calls") or 0) for f in found),
        tree_left=left, silence=silence), ids


def singles(swarm: SwarmRun, model: Model, count: int,
            first: int) -> dict[str, dict[str, list[float]]]:
    """One task at a time, each runtime in turn (the first of each untimed: a warm-up):
    submit -> result, submit -> its first call at the fake, its last answer -> result."""
    times: dict[str, dict[str, list[float]]] = {
        p: {"total": [], "to_first_call": [], "after_answer": []} for p in ("bi", "cc")}
    n = first
    for i in range(count + 1):
        for pool in ("bi", "cc"):
            children_gone(worker_pid(swarm, pool))
            t0, m0 = time.perf_counter(), time.monotonic()
            [tid] = submit(swarm, pool, [TASK.format(n=n)])
            waited = wait_results(swarm, [tid], 120)
            m1 = time.monotonic()
            if waited is None:
                raise RuntimeError(f"a single {RUNTIMES[pool]} task took over 120 s")
            [f] = findings(swarm, [tid])
            if f["status"] != "done":
                raise RuntimeError(f"a single {RUNTIMES[pool]} task failed: {f.get('error')}")
            if i:
                times[pool]["total"].append(time.perf_counter() - t0)
                times[pool]["to_first_call"].append(model.first_call[n] - m0)
                times[pool]["after_answer"].append(m1 - model.last_answer[n])
            n += 1
    return times


@dataclass
class Step:
    runtime: str
    n: int
    arrived: int = 0
    all_in: float | None = None  # s from submit until every first call arrived
    peak: Mem = field(default_factory=Mem)
    idle: Mem = field(default_factory=Mem)
    finish: float | None = None  # s from release until every result
    done: int = 0
    failed: list[str] = field(default_factory=list)
    cpu: float = 0.0
    waiting_cpu: float | None = None  # cores per task, while all N wait on their call
    silence: float = 0.0  # the longest the worker's heartbeat went unrenewed
    cost_nano: int = 0
    cache_write: int = 0
    min_available: int = 0
    note: str = ""

    @property
    def per_task_pss(self) -> float:
        return (self.peak.pss - self.idle.pss) / self.n

    @property
    def per_task_rss(self) -> float:
        return (self.peak.rss - self.idle.rss) / self.n


def in_flight(swarm: SwarmRun, fake: FakeAPI, model: Model, pool: str, n: int, first: int,
              hold: float, floor: int) -> Step:
    """``n`` tasks held in flight on ``pool``'s worker (see the module's docstring, 3)."""
    pid = worker_pid(swarm, pool)
    step = Step(RUNTIMES[pool.split("_")[0]], n)
    children_gone(pid)
    step.idle = idle_mem(pid)
    cpu0, bill0 = reaped_cpu(pid), billed_now(fake)
    step.min_available = available()
    beats = BeatWatch(swarm, pool)
    model.hold()
    t0, wall0 = time.perf_counter(), time.time()
    ids: list[str] = []
    try:
        ids = submit(swarm, pool, [TASK.format(n=i) for i in range(first, first + n)])
        settled, read_at = 0, 0.0
        while time.perf_counter() - t0 < hold:
            if step.all_in is None and model.arrived >= n:
                step.all_in = time.perf_counter() - t0
            if time.perf_counter() - read_at >= 0.5:  # memory every 0.5 s
                read_at = time.perf_counter()
                mem = tree_mem(pid)
                step.min_available = min(step.min_available, available())
                if mem.pss > step.peak.pss:
                    step.peak = mem
                if step.all_in is not None:
                    settled += 1
                    if settled == 1:
                        waiting0 = (tree_cpu(pid), time.perf_counter())
                    if settled >= 7:  # 3 s of reads with every task waiting on its call
                        used = tree_cpu(pid) - waiting0[0]
                        step.waiting_cpu = used / (time.perf_counter() - waiting0[1]) / n
                        break
                if step.min_available < floor:
                    step.note = (f"stopped: available memory fell to "
                                 f"{step.min_available / GiB:.1f} GiB")
                    break
                if not psutil.pid_exists(pid):
                    step.note = (f"released at +{time.perf_counter() - t0:.0f} s: the "
                                 "worker is gone")
                    break
            time.sleep(0.05)
        step.arrived = model.arrived
        if step.all_in is None and not step.note:
            step.note = f"only {step.arrived} of {n} first calls within {hold:g} s"
    finally:
        model.let_go()
    t1 = time.perf_counter()
    waited = wait_results(swarm, ids, 180) if ids else None
    step.finish = None if waited is None else time.perf_counter() - t1
    if not children_gone(pid):
        step.note += " (CLI processes still running 30 s after the results)"
    if left := orphans(swarm, pool):
        step.note += f" ({len(left)} Claude Code process(es) left by a replaced worker)"
    step.cpu = sum(reaped_cpu(pid)) - sum(cpu0)
    step.silence = beats.stop()
    if not psutil.pid_exists(pid) or worker_pid(swarm, pool) != pid:
        events = [e for e in swarm.events() if e.get("pool") == pool
                  and float(e.get("ts", 0)) >= wall0]
        said = ", ".join(f"{e['kind']} at +{float(e['ts']) - wall0:.0f} s"
                         + (f" ({e['reason']})" if e.get("reason") else "") for e in events)
        step.note += f" worker {pid} replaced during the step: {said or 'no event'}"
    found = findings(swarm, ids)
    step.done = sum(f["status"] == "done" for f in found)
    step.failed = [f"{f['status']}: {f.get('error')}" for f in found if f["status"] != "done"]
    step.cost_nano = sum(int(f.get("cost_nano_usd") or 0) for f in found)
    step.cache_write = (billed_now(fake)["cache_creation_input_tokens"]
                        - bill0["cache_creation_input_tokens"])
    return step


# --- request sizes ---------------------------------------------------------------------


@dataclass
class Size:
    tools: int
    tool_tokens: int
    system_tokens: int
    message_tokens: int
    total: int
    task_tokens: int
    bytes_: int
    names: str


def first_request_sizes(requests: list[Request], cc: bool, tasks: set[str]) -> list[Size]:
    sizes = []
    for req in requests:
        if is_claude_code(req) != cc or not is_first(req):
            continue
        text = json.dumps(req.get("messages"))
        task = next((t for t in tasks if t in text), None)
        if task is None:
            continue
        layout = request_layout(req)
        n_tools = len(req.get("tools") or [])
        system = req.get("system")
        n_system = (len(system) if isinstance(system, list) else 1 if system else 0)
        tools_end = layout.upto(n_tools - 1)
        system_end = layout.upto(n_tools + n_system - 1)
        sizes.append(Size(n_tools, tools_end, system_end - tools_end,
                          layout.total - system_end, layout.total, len(task) // 4,
                          len(json.dumps(req)),
                          ", ".join(str(t.get("name")) for t in req.get("tools") or [])))
    return sizes


# --- output ----------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.1f}x" if a / b >= 10 else f"{a / b:.2f}x"


def mib(num: float) -> str:
    return f"{num / 2**20:.1f} MiB"


def secs(s: float | None) -> str:
    if s is None or s != s:
        return "-"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=20, help="tasks per runtime at once")
    parser.add_argument("--concurrency", type=int, default=4, help="of the bi and cc pools")
    parser.add_argument("--singles", type=int, default=5, help="single tasks per runtime")
    parser.add_argument("--ramp", default="8,16,32,64,128",
                        help="Claude Code tasks held in flight, one step each")
    parser.add_argument("--hold", type=float, default=240.0,
                        help="seconds a ramp step waits for all its first calls")
    parser.add_argument("--floor", type=float, default=2.0,
                        help="GiB of available memory under which a step is ended")
    parser.add_argument("--keep", action="store_true",
                        help="keep the swarm's folder (logs) and print where it is")
    parser.add_argument("--small", action="store_true",
                        help="--batch 8 --singles 2 --ramp 4,8")
    args = parser.parse_args()
    if args.small:
        args.batch, args.singles, args.ramp = 8, 2, "4,8"
    ramp = [int(x) for x in args.ramp.split(",") if x.strip()]
    sigterm_exits()
    print(machine())
    started = time.perf_counter()

    model = Model(hold_max=args.hold + 30)
    fake = FakeAPI(script=model).start()
    wide = max(ramp)
    pools = "".join([pool_yaml("bi", "bi", args.concurrency),
                     pool_yaml("cc", "cc", args.concurrency),
                     pool_yaml("bi_wide", "bi", wide), pool_yaml("cc_wide", "cc", wide)])
    swarm = bench_swarm("ccbench", pools, env=api_env(fake))
    swarm.remove_folder = not args.keep
    for name in ("bi", "cc", "bi_wide", "cc_wide"):
        (swarm.folder / f"work-{name}").mkdir()
    load = MachineLoad()
    leftovers: list[str] = []
    try:
        swarm.start(timeout=120)
        print(f"swarm up in {swarm.startup_seconds:.1f} s", file=sys.stderr)
        n = 0

        print("single tasks ...", file=sys.stderr)
        single = singles(swarm, model, args.singles, n)
        n += 2 * (args.singles + 1)

        print("batches ...", file=sys.stderr)
        batches: dict[str, Batch] = {}
        sizes: dict[str, list[Size]] = {}
        for pool in ("bi", "cc"):
            seen = len(fake.received())
            batches[pool], _ = run_batch(swarm, fake, pool, n, args.batch, timeout=300)
            tasks = {TASK.format(n=i) for i in range(n, n + args.batch)}
            sizes[pool] = first_request_sizes(fake.received()[seen:], pool == "cc", tasks)
            n += args.batch

        print("in flight ...", file=sys.stderr)
        # one task each first: the wide workers' prompts are then cached (a pool's
        # workdir is in Claude Code's system prompt), and the built-in loop does not
        # hold its first calls behind the first writer of a prefix new to it
        warm = [submit(swarm, pool, [TASK.format(n=n + i)])[0]
                for i, pool in enumerate(("bi_wide", "cc_wide"))]
        n += 2
        if wait_results(swarm, warm, 120) is None:
            raise RuntimeError("the wide pools' warm-up tasks took over 120 s")
        floor = int(args.floor * GiB)
        builtin_steps = []
        for size in sorted({min(ramp), wide}):
            print(f"  built-in x {size} ...", file=sys.stderr)
            builtin_steps.append(in_flight(swarm, fake, model, "bi_wide", size, n, 60,
                                           floor))
            n += size
        steps: list[Step] = []
        per_task = 0.0
        for size in ramp:
            need = per_task * size
            if per_task and available() - need < 3 * GiB:
                steps.append(Step("claude-code", size, note=(
                    f"skipped: ~{need / GiB:.1f} GiB needed, "
                    f"{available() / GiB:.1f} GiB available")))
                break
            print(f"  claude-code x {size} ...", file=sys.stderr)
            step = in_flight(swarm, fake, model, "cc_wide", size, n, args.hold, floor)
            n += size
            steps.append(step)
            per_task = max(per_task, step.per_task_pss)
            if step.note:
                break

        # the ledger against the fake's bill, and what runs under the workers now
        counters = costs.read_counters(swarm.redis(), swarm.name)
        total = counters.get("total", {}).get("*", {})
        bill = fake.billed()
        ledger_ok = (total.get("calls", 0) == bill["responses"]
                     and total.get("input", 0) == bill["input_tokens"]
                     and total.get("output", 0) == bill["output_tokens"]
                     and total.get("cache_write", 0) == bill["cache_creation_input_tokens"]
                     and total.get("cache_read", 0) == bill["cache_read_input_tokens"])
        for pool in ("bi", "cc", "bi_wide", "cc_wide"):
            pid = worker_pid(swarm, pool)
            if not children_gone(pid, 10):
                leftovers.append(f"{pool}: {len(psutil.Process(pid).children(True))} "
                                 "process(es) under the worker after its tasks")
        elapsed = time.perf_counter() - started
        supervision: dict[str, int] = {}
        for e in swarm.events():
            if e["kind"] not in ("swarm_start", "swarm_stop", "swarm_stopped"):
                supervision[e["kind"]] = supervision.get(e["kind"], 0) + 1
    finally:
        model.let_go()
        under = [p for pool in ("bi", "cc", "bi_wide", "cc_wide") for p in _tree(swarm, pool)]
        swarm.stop()
        fake.stop()
    time.sleep(1)
    # ours only: under our workers before the stop, or working in our folder (another
    # session's Claude Code processes may be running on the machine)
    stray = [p for p in under if _alive(p)]
    stray += [p for p in psutil.process_iter() if _is_cli(p) and _in(p, str(swarm.folder))
              and p.pid not in {q.pid for q in stray}]
    for proc in stray:
        try:
            line = " ".join(proc.cmdline())[:120]
            proc.kill()
        except psutil.Error:
            continue
        leftovers.append(f"pid {proc.pid} still running after the swarm stopped "
                         f"(killed): {line}")

    report(args, single, batches, sizes, steps, builtin_steps, ledger_ok, total, bill,
           leftovers, load, elapsed)
    print("supervision events (besides the swarm's start): "
          + (", ".join(f"{k} x{v}" for k, v in sorted(supervision.items())) or "none"))
    if args.keep:
        print(f"swarm folder kept: {swarm.folder}")


def _tree(swarm: SwarmRun, pool: str) -> list[psutil.Process]:
    try:
        return psutil.Process(worker_pid(swarm, pool)).children(recursive=True)
    except Exception:  # noqa: BLE001 - a swarm that is not answering: nothing to list
        return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _in(proc: psutil.Process, folder: str) -> bool:
    try:
        return proc.cwd().startswith(folder)
    except psutil.Error:
        return False


def _is_cli(proc: psutil.Process) -> bool:
    try:
        return CLI_MARK in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def report(args: argparse.Namespace, single: dict[str, dict[str, list[float]]],
           batches: dict[str, Batch], sizes: dict[str, list[Size]], steps: list[Step],
           builtin_steps: list[Step], ledger_ok: bool, total: dict[str, int],
           bill: dict[str, Any], leftovers: list[str], load: MachineLoad,
           elapsed: float) -> None:
    bi, cc = batches["bi"], batches["cc"]
    print(f"\nsettings: model {MODEL}; task 'write out-NNNN.txt: hello' (one tool call, then "
          f"an answer); batch {args.batch} tasks per runtime on one worker at concurrency "
          f"{args.concurrency}; {args.singles} single tasks per runtime (after one "
          f"warm-up); fake API latency 0; whole run {elapsed:.0f} s")
    print(load.report())

    print("\n## Per task: Claude Code against the built-in loop\n")
    rows = []
    s_bi, s_cc = med(single["bi"]["total"]), med(single["cc"]["total"])
    rows.append(["single task, submit -> result (median)", secs(s_bi), secs(s_cc),
                 ratio(s_cc, s_bi)])
    rows.append(["single task, min / max",
                 f"{min(single['bi']['total']):.2f} / {max(single['bi']['total']):.2f} s",
                 f"{min(single['cc']['total']):.2f} / {max(single['cc']['total']):.2f} s", ""])
    for label, key in (("  submit -> its first API call (median)", "to_first_call"),
                       ("  its last answer -> result (median)", "after_answer")):
        a, b = med(single["bi"][key]), med(single["cc"][key])
        rows.append([label, secs(a), secs(b), ratio(b, a)])
    w_bi = bi.wall / args.batch if bi.wall else None
    w_cc = cc.wall / args.batch if cc.wall else None
    rows.append([f"batch of {args.batch}, wall time", secs(bi.wall), secs(cc.wall),
                 ratio(cc.wall, bi.wall)])
    rows.append(["batch: wall time per task", secs(w_bi), secs(w_cc), ratio(w_cc, w_bi)])
    rows.append(["batch: tasks/s", f"{args.batch / bi.wall:.1f}" if bi.wall else "-",
                 f"{args.batch / cc.wall:.2f}" if cc.wall else "-",
                 ratio(bi.wall, cc.wall)])
    c_bi, c_cc = bi.cpu / args.batch, cc.cpu / args.batch
    rows.append(["CPU per task (worker + reaped children)", f"{c_bi * 1000:.0f} ms",
                 f"{c_cc * 1000:.0f} ms", ratio(c_cc, c_bi)])
    rows.append(["  of which the worker process itself", f"{bi.own / args.batch * 1000:.0f} ms",
                 f"{cc.own / args.batch * 1000:.0f} ms", ratio(cc.own, bi.own)])
    rows.append(["  descendants' own CPU, sampled live every 0.2 s (check)",
                 f"{bi.sampled / args.batch * 1000:.0f} ms",
                 f"{cc.sampled / args.batch * 1000:.0f} ms", ""])
    m_bi = next((s for s in builtin_steps if s.n == min(x.n for x in builtin_steps)), None)
    m_cc = next((s for s in steps if s.n == (m_bi.n if m_bi else 0) and s.peak.pss), None)
    if m_bi and m_cc:
        rows.append([f"memory per task in flight, PSS ({m_cc.n} at once)",
                     mib(m_bi.per_task_pss), mib(m_cc.per_task_pss),
                     ratio(m_cc.per_task_pss, m_bi.per_task_pss)])
        rows.append([f"memory per task in flight, RSS ({m_cc.n} at once)",
                     mib(m_bi.per_task_rss), mib(m_cc.per_task_rss),
                     ratio(m_cc.per_task_rss, m_bi.per_task_rss)])
    wide_bi = max(builtin_steps, key=lambda s: s.n, default=None)
    wide_cc = next((s for s in steps if wide_bi and s.n == wide_bi.n and s.peak.pss), None)
    if wide_bi and wide_cc and wide_bi is not m_bi:
        rows.append([f"memory per task in flight, PSS ({wide_cc.n} at once)",
                     mib(wide_bi.per_task_pss), mib(wide_cc.per_task_pss),
                     ratio(wide_cc.per_task_pss, wide_bi.per_task_pss)])
    z_bi, z_cc = sizes["bi"], sizes["cc"]
    if z_bi and z_cc:
        t_bi, t_cc = med([z.total for z in z_bi]), med([z.total for z in z_cc])
        rows.append(["first request: input tokens (median)", f"{t_bi:,.0f}", f"{t_cc:,.0f}",
                     ratio(t_cc, t_bi)])
        o_bi = med([z.total - z.task_tokens for z in z_bi])
        o_cc = med([z.total - z.task_tokens for z in z_cc])
        rows.append(["  of which before the task's own words", f"{o_bi:,.0f}",
                     f"{o_cc:,.0f}", ratio(o_cc, o_bi)])
        rows.append(["  tools (count) / system / messages, tokens",
                     f"{med([z.tool_tokens for z in z_bi]):,.0f} "
                     f"({z_bi[0].tools}) / {med([z.system_tokens for z in z_bi]):,.0f} / "
                     f"{med([z.message_tokens for z in z_bi]):,.0f}",
                     f"{med([z.tool_tokens for z in z_cc]):,.0f} "
                     f"({z_cc[0].tools}) / {med([z.system_tokens for z in z_cc]):,.0f} / "
                     f"{med([z.message_tokens for z in z_cc]):,.0f}", ""])
        rows.append(["  tools offered", z_bi[0].names, z_cc[0].names, ""])
        rows.append(["  request body, JSON", f"{med([z.bytes_ for z in z_bi]) / 1024:.1f} KiB",
                     f"{med([z.bytes_ for z in z_cc]) / 1024:.1f} KiB",
                     ratio(med([z.bytes_ for z in z_cc]), med([z.bytes_ for z in z_bi]))])
    for label, key in (("billed per task: input", "input_tokens"),
                       ("billed per task: cache writes", "cache_creation_input_tokens"),
                       ("billed per task: cache reads", "cache_read_input_tokens"),
                       ("billed per task: output", "output_tokens")):
        a, b = bi.billed[key] / args.batch, cc.billed[key] / args.batch
        rows.append([label, f"{a:,.0f}", f"{b:,.0f}", ratio(b, a)])
    rows.append(["API calls per task (fake's count / findings')",
                 f"{bi.billed['responses'] / args.batch:g} / {bi.calls / args.batch:g}",
                 f"{cc.billed['responses'] / args.batch:g} / {cc.calls / args.batch:g}", ""])
    d_bi, d_cc = bi.cost_nano / args.batch / 1e9, cc.cost_nano / args.batch / 1e9
    rows.append(["cost per task (ledger)", f"${d_bi:.5f}", f"${d_cc:.5f}", ratio(d_cc, d_bi)])
    rows.append(["tasks done", f"{bi.done}/{args.batch}", f"{cc.done}/{args.batch}", ""])
    rows.append(["batch: longest heartbeat silence (beat every 2 s)", f"{bi.silence:.1f} s",
                 f"{cc.silence:.1f} s", ""])
    print(table(["per task", "built-in", "claude-code", "claude-code / built-in"], rows))

    print("\n## Claude Code tasks in flight on one worker (first calls held)\n")
    rows = []
    for s in [*steps, *builtin_steps]:
        if not s.peak.pss:
            rows.append([s.runtime, str(s.n), *["-"] * 12, s.note])
            continue
        kinds = ", ".join(f"{k} {len(v)} x {mib(statistics.median(v))}"
                          for k, v in sorted(s.peak.by_kind.items()) if k != "worker")
        rows.append([
            s.runtime, str(s.n), f"{s.arrived}/{s.n}", secs(s.all_in),
            f"{s.n / s.all_in:.1f}" if s.all_in else "-",
            f"{mib(s.peak.pss)} / {mib(s.peak.rss)}",
            f"{mib(s.per_task_pss)} / {mib(s.per_task_rss)}",
            f"{s.cpu / s.n * 1000:.0f} ms",
            "-" if s.waiting_cpu is None else f"{s.waiting_cpu * 100:.2f}%",
            secs(s.finish), f"{s.silence:.1f} s",
            f"{s.cache_write / s.n:,.0f} / ${s.cost_nano / s.n / 1e9:.4f}",
            f"{s.done}/{s.n}; min avail {s.min_available / GiB:.1f} GiB",
            "; ".join(x for x in [kinds, s.note] if x)])
    print(table(["runtime", "N", "first calls in", "all N in flight after", "tasks up/s",
                 "worker tree PSS / RSS at peak", "per task PSS / RSS (minus idle)",
                 "CPU per task", "CPU per waiting task (of a core)", "released -> all done",
                 "longest heartbeat silence",
                 "cache writes / cost per task", "done", "processes at peak"],
                rows))
    idle = steps[0].idle if steps and steps[0].peak.pss else None
    if idle:
        print(f"\nidle claude-code worker: PSS {mib(idle.pss)}, RSS {mib(idle.rss)}")
    if builtin_steps:
        print(f"idle built-in worker: PSS {mib(builtin_steps[0].idle.pss)}, "
              f"RSS {mib(builtin_steps[0].idle.rss)}")
    print(f"\nledger vs the fake's bill (whole run): {'equal' if ledger_ok else 'DIFFERENT'} "
          f"(calls {total.get('calls', 0)} / {bill['responses']}, input "
          f"{total.get('input', 0)} / {bill['input_tokens']}, cache writes "
          f"{total.get('cache_write', 0)} / {bill['cache_creation_input_tokens']}, cache "
          f"reads {total.get('cache_read', 0)} / {bill['cache_read_input_tokens']}, output "
          f"{total.get('output', 0)} / {bill['output_tokens']})")
    failed = bi.failed + cc.failed + [f for s in [*steps, *builtin_steps] for f in s.failed]
    if failed:
        print(f"failed tasks: {len(failed)}; first: {failed[:3]}")
    print("leftover processes: " + ("; ".join(leftovers) if leftovers else "none"))
    if bi.tree_left or cc.tree_left:
        print("note: a batch's worker still had children 30 s after its last result")


if __name__ == "__main__":
    main()
