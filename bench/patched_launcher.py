"""``python -m launcher.cli`` with the supervisor's preload changed, for what-if
measurements in bench/worker_memory.py. Not part of swarm; the product is not changed.

    SWARM_BENCH_GC_FREEZE=1 python bench/patched_launcher.py up SPEC
    SWARM_BENCH_NO_SDK=1    python bench/patched_launcher.py up SPEC
    SWARM_BENCH_PRELOAD_ALL=1 python bench/patched_launcher.py up SPEC

* SWARM_BENCH_GC_FREEZE=1: after the preload, ``gc.collect()`` then ``gc.freeze()``, so
  the objects the forks inherit are never scanned (written to) by a child's garbage
  collector, which would copy their pages.
* SWARM_BENCH_NO_SDK=1: preload ``workers.worker`` only, not the ``anthropic`` SDK.
* SWARM_BENCH_PRELOAD_ALL=1: also preload what a worker imports at boot after the fork
  (``workers.tasks``, ``workers.agent``, ``workers.tools`` and, through a throw-away
  ``AsyncAnthropic`` client, the HTTP stack it pulls in).

(The file name contains "launcher" because ``StateDir.live_pid`` recognises the
supervisor by that word in its command line.)
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import launcher.up as up  # noqa: E402

_original = up._preload


def _preload() -> None:
    if os.environ.get("SWARM_BENCH_NO_SDK") == "1":
        import workers.worker  # noqa: F401
    else:
        _original()
    if os.environ.get("SWARM_BENCH_PRELOAD_ALL") == "1":
        import anthropic

        import workers.agent  # noqa: F401
        import workers.tasks  # noqa: F401
        import workers.tools  # noqa: F401

        anthropic.AsyncAnthropic(api_key="unused")  # imports httpx's transport modules
    if os.environ.get("SWARM_BENCH_GC_FREEZE") == "1":
        gc.collect()
        gc.freeze()


up._preload = _preload

if __name__ == "__main__":
    from launcher.cli import app

    app(prog_name="swarm")
