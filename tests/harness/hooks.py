"""``on_start`` hooks for the tests and the benchmarks: they make a worker misbehave on
purpose, or do what a long-running one eventually does. They run inside the worker
process once it has booted (the spec's ``on_start: tests.harness.hooks:NAME``; the
worker finds this checkout through the ``PYTHONPATH`` that
:func:`tests.harness.procs.cli_env` sets)."""

from __future__ import annotations

import gc
import os
import signal
import time

_ballast: list[bytes] = []


def crash(worker: object) -> None:
    raise RuntimeError("this worker always fails to boot")


def hog_memory(worker: object) -> None:
    """Hold (and touch) SWARM_TEST_HOG_MB megabytes, so RSS really grows."""
    megabytes = int(os.environ.get("SWARM_TEST_HOG_MB", "200"))
    _ballast.append(b"x" * (megabytes * 1024 * 1024))


def spawn_child(worker: object) -> None:
    """Start a grandchild (like a tool's shell command) that would outlive a careless
    supervisor; its pid goes to a file named by SWARM_TEST_CHILD_PIDS."""
    import subprocess

    child = subprocess.Popen(["sleep", "300"])
    with open(os.environ["SWARM_TEST_CHILD_PIDS"], "a") as handle:
        handle.write(f"{child.pid}\n")


def block_loop_soon(worker: object) -> None:
    """Block the worker's event loop one second from now, with its process still
    running (not stopped): only a heartbeat that comes from the loop notices."""
    import asyncio

    asyncio.get_running_loop().call_later(1.0, time.sleep, 3600)


def poison_before_call(worker: object) -> None:
    """A task whose description holds 'poison' fails inside the worker before any API
    call, outside the agent's own error handling (as a bug or a bad payload would)."""
    from workers.agent import Agent

    original = Agent.run

    async def run(self, task, toolbox, context, task_id="",  # type: ignore[no-untyped-def]
                  run_context=None):
        if "poison" in task.description:
            raise RuntimeError("poisoned before the call")
        return await original(self, task, toolbox, context, task_id, run_context)

    Agent.run = run  # type: ignore[method-assign]


def block_on_usr1(worker: object) -> None:
    """After SIGUSR1 the worker's event loop is blocked for good (a Python signal handler
    that never returns): the process keeps running but stops heartbeating, a real hang,
    unlike SIGSTOP, which also tells the parent (SIGCHLD with CLD_STOPPED)."""

    def _block(signum: int, frame: object) -> None:
        while True:
            time.sleep(3600)

    signal.signal(signal.SIGUSR1, _block)


def full_gc(worker: object) -> None:
    """One full garbage collection, as a long-running worker eventually does on its own:
    it walks (writes to) every tracked object it inherited, copying their pages."""
    gc.collect()
