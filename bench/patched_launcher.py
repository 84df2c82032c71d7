"""``python -m launcher.cli`` with the supervisor's preload changed, for what-if
measurements in bench/worker_memory.py. Not part of swarm; the product is not changed.

    SWARM_BENCH_GC_FREEZE=1 python -m bench.patched_launcher up SPEC
    SWARM_BENCH_NO_SDK=1    python -m bench.patched_launcher up SPEC
    SWARM_BENCH_PRELOAD_ALL=1 python -m bench.patched_launcher up SPEC

(with the checkout on PYTHONPATH and ``-P``, as the benchmarks start it:
bench/_common.py's ``PATCHED_LAUNCHER``).

* SWARM_BENCH_GC_FREEZE=1: after the preload, ``gc.collect()`` then ``gc.freeze()``, so
  the objects the forks inherit are never scanned (written to) by a child's garbage
  collector, which would copy their pages.
* SWARM_BENCH_NO_SDK=1: preload ``workers.worker`` only, not the ``anthropic`` SDK.
* SWARM_BENCH_PRELOAD_ALL=1: also preload what a worker imports at boot after the fork
  (``workers.tasks``, ``workers.agent``, ``workers.tools`` and, through a throw-away
  ``AsyncAnthropic`` client, the HTTP stack it pulls in).

The shipped supervisor (``launcher.up._preload``) has since come to preload all of this
and to freeze the collector itself, so today SWARM_BENCH_GC_FREEZE and
SWARM_BENCH_PRELOAD_ALL add nothing to it; SWARM_BENCH_NO_SDK still takes from it.

(The module name contains "launcher" because ``StateDir.live_pid`` once recognised the
supervisor by that word in its command line.)
"""

from __future__ import annotations

import gc
import os

import launcher.up as up

_original = up._preload


def _preload(spec: object) -> None:
    if os.environ.get("SWARM_BENCH_NO_SDK") == "1":
        import workers.worker  # noqa: F401
    else:
        _original(spec)  # type: ignore[arg-type]
    if os.environ.get("SWARM_BENCH_PRELOAD_ALL") == "1":
        import anthropic

        import workers.agent  # noqa: F401
        import workers.tasks  # noqa: F401
        import workers.tools  # noqa: F401

        anthropic.AsyncAnthropic(api_key="unused")  # imports httpx's transport modules
    if os.environ.get("SWARM_BENCH_GC_FREEZE") == "1":
        gc.collect()
        gc.freeze()


up._preload = _preload  # type: ignore[assignment]

if __name__ == "__main__":
    from launcher.cli import app

    app(prog_name="swarm")
