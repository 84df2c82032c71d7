"""A swarm under test or under measurement: :class:`SwarmRun` (a spec in a folder of its
own and the supervisor running it), and the spec builders the tests use.

The tests get their ``SwarmRun`` from the ``make_swarm`` fixture (tests/conftest.py),
in the test's ``tmp_path``; a benchmark makes one with :meth:`SwarmRun.in_temp_folder`.
Either way ``stop()`` ends everything it started, whatever state it is in.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil

from launcher.state import StateDir
from tests.harness.procs import SWARM_CLI, cli_env, kill_all, processes_under, wait_for


class SwarmRun:
    """A swarm spec in ``folder`` (written to ``swarm.yaml``) and the supervisor running it.

    ``start()`` runs ``swarm up`` in the foreground as a child of the caller (its output
    goes to ``up.out``) and waits for the embedded Redis, then for every worker's
    heartbeat; with ``detach``, it runs ``swarm up -d --wait`` as a user does, which
    returns once every worker has beaten. ``launcher`` is the argv of a wrapper that
    behaves like ``python -m launcher.cli`` (a benchmark's patched supervisor,
    ``bench._common.PATCHED_LAUNCHER``), run in the foreground the same way.

    ``env`` is the extra environment of every swarm process it starts (CLI, supervisor,
    so its workers): on top of :func:`tests.harness.procs.cli_env`, which puts this
    checkout on ``PYTHONPATH`` and leaves out the developer's own API key, endpoint and
    Redis. ``own_session`` starts the supervisor in a session of its own (a benchmark's
    Ctrl-C then reaches only the benchmark, whose ``finally`` stops it). ``timeout``
    bounds each wait of ``start()``. ``remove_folder``: ``stop()`` also deletes ``folder``.
    """

    def __init__(self, folder: Path, spec: str, name: str | None = None,
                 env: dict[str, str] | None = None, *, launcher: list[str] | None = None,
                 detach: bool = False, own_session: bool = False, timeout: float = 20.0,
                 remove_folder: bool = False) -> None:
        self.folder = folder
        self.spec_path = folder / "swarm.yaml"
        self.spec_path.write_text(textwrap.dedent(spec))
        self.name = name or spec_name(self.spec_path.read_text())
        self.env = dict(env or {})
        self.launcher = launcher
        self.detach = detach
        self.own_session = own_session
        self.timeout = timeout
        self.remove_folder = remove_folder
        self.output = folder / "up.out"
        self.proc: subprocess.Popen[bytes] | None = None  # `swarm up` in the foreground
        self.pid: int | None = None  # the supervisor, once started
        self.startup_seconds: float | None = None
        self._client: tuple[tuple[str, str | None], Any] | None = None

    @classmethod
    def in_temp_folder(cls, name: str, pools: str, *, stop_grace: str = "5s",
                       kill_grace: str = "1s", launcher: list[str] | None = None,
                       env: dict[str, str] | None = None) -> SwarmRun:
        """A benchmark's swarm: ``pools`` (YAML, flush left) under a spec named ``name``
        in a new temporary folder that ``stop()`` removes; started as a user does
        (``swarm up -d``) unless ``launcher`` is given; ten minutes to get ready."""
        folder = Path(tempfile.mkdtemp(prefix="swarm-bench-"))
        spec = fast_spec(pools, name, stop_grace=stop_grace, kill_grace=kill_grace)
        return cls(folder, spec, name, env, launcher=launcher, detach=launcher is None,
                   own_session=True, timeout=600.0, remove_folder=True)

    @property
    def state(self) -> StateDir:
        return StateDir(self.folder / ".swarm" / self.name)

    # --- running it ------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A ``swarm`` command run in the swarm's folder, as a user runs it."""
        return subprocess.run(
            [*SWARM_CLI, *args], cwd=self.folder, env=cli_env(self.env),
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def start(self, ready: bool = True, workers: int | None = None,
              timeout: float | None = None) -> SwarmRun:
        """``swarm up``, then wait until its Redis is recorded and (``ready``) every
        worker beats (``workers``: exactly that many of them)."""
        timeout = self.timeout if timeout is None else timeout
        t0 = time.perf_counter()
        if self.detach:
            done = self.cli("up", "-d", "--wait", f"{timeout:g}", str(self.spec_path),
                            timeout=timeout + 30)
            if done.returncode != 0:
                raise AssertionError(f"swarm up -d failed: {done.stderr or done.stdout}")
        else:
            with open(self.output, "ab") as out:
                self.proc = subprocess.Popen(
                    [*(self.launcher or SWARM_CLI), "up", str(self.spec_path)],
                    cwd=self.folder, env=cli_env(self.env), stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=self.own_session,
                )
            proc = self.proc
            wait_for(lambda: self.state.read_redis() is not None or proc.poll() is not None,
                     timeout, "the supervisor to start Redis")
            assert proc.poll() is None, self.output.read_text()
            if ready:
                wait_for(lambda: self.all_beating(workers), timeout, "every worker to heartbeat",
                         every=0.1)
        self.startup_seconds = time.perf_counter() - t0
        self.pid = self.state.read_pid()
        return self

    def supervisor_pid(self) -> int:
        pid = self.state.read_pid()
        assert pid is not None, "the swarm has no supervisor pid recorded"
        return pid

    # --- looking at it -----------------------------------------------------------------

    def redis(self) -> Any:
        """A client of the swarm's Redis (the one its state folder records now: a new
        one after the swarm restarted on another Redis or password)."""
        target = self.state.read_redis()
        assert target is not None, "the swarm has no Redis recorded"
        key = (target.url, target.password)
        if self._client is None or self._client[0] != key:
            self._close_client()
            self._client = (key, target.sync(socket_timeout=10))
        return self._client[1]

    def status(self) -> dict[str, Any]:
        """What ``swarm status --json`` says."""
        from launcher.status import collect

        return collect(self.redis(), self.name)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Status rows by slot name (``a-1``): one host's workers."""
        return {row["slot"]: row for row in self.status()["workers"]}

    def all_beating(self, expected: int | None = None) -> bool:
        """Whether every worker (and, if given, ``expected`` of them) is idle or busy."""
        try:
            rows = self.status()["workers"]
        except Exception:  # noqa: BLE001 - not up yet
            return False
        if expected is not None and len(rows) != expected:
            return False
        return bool(rows) and all(r["state"] in ("idle", "busy") for r in rows)

    def worker_pids(self) -> dict[str, int]:
        return {r["worker"]: int(r["pid"]) for r in self.status()["workers"] if r["pid"]}

    def redis_pid(self) -> int | None:
        """The embedded redis-server: the supervisor's child that is not a worker."""
        if self.pid is None:
            return None
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return None
        for child in children:
            try:
                if "redis-server" in child.name():
                    return child.pid
            except psutil.Error:
                pass
        return None

    def events(self, kind: str | None = None) -> list[dict[str, str]]:
        """The swarm's event stream (of one ``kind``), oldest first."""
        from workers import keys

        entries = self.redis().xrange(keys.events(self.name))
        return [fields for _, fields in entries if kind is None or fields["kind"] == kind]

    # --- stopping it -------------------------------------------------------------------

    def stop(self) -> None:
        """End everything it started, whatever state it is in: SIGTERM to the supervisor
        (what ``swarm down`` asks: workers finish, then everything exits) with 15 s to
        exit, then SIGKILL to it and to anything left running in the folder."""
        self._close_client()
        supervisors: set[int] = set()
        pid = self.state.live_pid()  # (checks it is still the process that wrote it)
        if pid is not None:
            supervisors.add(pid)
        if self.proc is not None and self.proc.poll() is None:
            supervisors.add(self.proc.pid)
        running = []
        for pid in supervisors:
            try:
                proc = psutil.Process(pid)
                proc.send_signal(signal.SIGTERM)
                running.append(proc)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(running, timeout=15)
        kill_all(alive)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        left = processes_under(self.folder)
        if left:
            print(f"  (cleanup: killed {len(left)} leftover process(es) of swarm "
                  f"{self.name!r})", file=sys.stderr)
            kill_all(left)
        if self.remove_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _close_client(self) -> None:
        if self._client is not None:
            try:
                self._client[1].close()
            except Exception:  # noqa: BLE001 - closing a client whose Redis is gone
                pass
            self._client = None


def spec_name(spec: str) -> str:
    """The swarm name a spec gives (its top-level ``name:``), or swarm's default."""
    for line in spec.splitlines():
        if line.startswith("name:"):
            return line.split(":", 1)[1].strip().strip("'\"") or "swarm"
    return "swarm"


# --- specs ---------------------------------------------------------------------------


def fast_spec(pools: str, name: str = "t", extra: str = "", *, stop_grace: str = "3s",
              kill_grace: str = "500ms") -> str:
    """A spec with short timings, so supervision tests take seconds. ``pools`` is the
    YAML of the pools (see :func:`pool`), ``extra`` more top-level fields."""
    return (f"name: {name}\nstop_grace: {stop_grace}\nkill_grace: {kill_grace}\n{extra}pools:\n"
            + textwrap.indent(textwrap.dedent(pools), "  "))


POOL = """\
{name}:
  model: {model}
  workers: {workers}
  heartbeat: {{expiry: {expiry}, interval: {interval}}}
  restart:
    backoff: {{initial: 50ms, max: 1s}}
    max_restarts: {max_restarts}
    window: 30s
    reset_after: 10s
{extra}"""


def pool(name: str, workers: int = 1, expiry: str = "1500ms", interval: str = "300ms",
         max_restarts: int = 5, extra: str = "", model: str = "test-model") -> str:
    """One pool with a fast heartbeat and a fast restart backoff; ``extra``: more fields."""
    return POOL.format(name=name, workers=workers, expiry=expiry, interval=interval,
                       max_restarts=max_restarts, extra=textwrap.indent(extra, "  "),
                       model=model)


def api_env(server: Any, key: str = "test-key") -> dict[str, str]:
    """The environment that points a swarm's workers at a fake API."""
    return {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": key}


def finished(swarm: SwarmRun, ids: list[str]) -> bool:
    """Whether every one of these tasks has its result (``task:{id}:result``)."""
    from workers import keys

    return all(swarm.redis().mget([keys.task_result(i) for i in ids]))


def findings_of(swarm: SwarmRun, ids: list[str]) -> list[dict[str, Any]]:
    """The findings of these finished tasks, in their order."""
    import json

    from workers import keys

    r = swarm.redis()
    return [json.loads(r.get(keys.finding(r.get(keys.task_result(i))))) for i in ids]


def ledger_is(swarm: SwarmRun, billed: dict[str, Any]) -> dict[str, int]:
    """Assert the ledger's totals are ``billed`` (a fake API's ``billed()``, or its
    ``["batch"]``) to the call and the token; the totals."""
    from launcher import costs

    total = costs.read_counters(swarm.redis(), swarm.name)["total"]["*"]
    assert total["calls"] == billed["responses"]
    for ours, theirs in (("input", "input_tokens"), ("output", "output_tokens"),
                         ("cache_write", "cache_creation_input_tokens"),
                         ("cache_read", "cache_read_input_tokens")):
        assert total.get(ours, 0) == billed[theirs], ours
    return total
