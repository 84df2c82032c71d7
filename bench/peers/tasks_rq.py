"""RQ's task (runs in /tmp/peer-venvs/rq). Started through ``python tasks_rq.py ARGS``:
it preloads this module and builds the SDK client in the worker process, as RQ's docs
advise for heavy imports, then runs ``rq worker ARGS`` (so a forked work horse inherits
the client instead of importing ``anthropic`` and building one per job)."""

from __future__ import annotations

import sys

import peer_common as pc


def call(text: str, enq: float, noop: bool = False) -> None:
    from rq import get_current_job

    t0, t1 = pc.call_sync(text, noop)
    get_current_job().connection.rpush(pc.DONE_KEY, pc.marker(text, enq, t0, t1))


if __name__ == "__main__":
    import tasks_rq  # noqa: F401 - the job function's module, imported once, before any fork
    from rq.cli import main

    pc.sync_client().messages  # noqa: B018 - the SDK imports its resources lazily
    import anthropic.types  # noqa: F401
    sys.argv = ["rq", "worker", *sys.argv[1:]]
    sys.exit(main())
