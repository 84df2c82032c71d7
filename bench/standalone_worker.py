"""One swarm worker as a fresh interpreter, for running under another supervisor
(supervisord) or as a plain subprocess, so the benchmarks can compare against swarm's
forked workers. It runs exactly ``workers.worker.run`` with a ``WorkerConfig``, like a
forked worker, and heartbeats the same keys.

    SWARM_REDIS_PASSWORD=... python -m bench.standalone_worker WORKER_ID REDIS_URL \
        [--swarm NAME] [--pool POOL] [--expiry SECONDS] [--interval SECONDS]

(from the checkout, or from anywhere with the checkout on PYTHONPATH, as the benchmarks
start it: bench/_common.py's ``standalone_cmd`` and ``standalone_env``).

It imports what swarm's supervisor preloads before forking (``workers.worker`` and the
``anthropic`` SDK), then runs the worker, which imports the rest itself at boot, as a
forked one does.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("worker_id")
    parser.add_argument("redis_url", help="e.g. unix:///path/redis.sock (no password in it)")
    parser.add_argument("--swarm", default="standalone", help="the swarm name in Redis keys")
    parser.add_argument("--pool", default=None, help="default: the worker id up to its last '-'")
    parser.add_argument("--expiry", type=float, default=15.0, help="heartbeat expiry, seconds")
    parser.add_argument("--interval", type=float, default=None,
                        help="heartbeat interval, seconds (default: expiry / 3)")
    parser.add_argument("--model", default="claude-haiku-4-5")
    args = parser.parse_args()

    import anthropic  # noqa: F401 - what swarm's supervisor preloads for its forks

    import workers.worker
    from workers.config import WorkerConfig
    from workers.redis_target import RedisTarget

    target = RedisTarget.parse(args.redis_url)
    password = os.environ.get("SWARM_REDIS_PASSWORD") or target.password
    cfg = WorkerConfig(
        swarm=args.swarm,
        worker_id=args.worker_id,
        pool=args.pool or args.worker_id.rsplit("-", 1)[0],
        generation=1,
        redis=RedisTarget(target.url, password),
        model=args.model,
        heartbeat_interval=args.interval or args.expiry / 3,
        heartbeat_expiry=args.expiry,
        workdir=os.getcwd(),
        parent_pid=os.getppid(),  # exit if our supervisor goes away
    )
    return workers.worker.run(cfg)


if __name__ == "__main__":
    sys.exit(main())
