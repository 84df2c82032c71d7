"""Submit tasks to one peer with its own client library (runs in that peer's venv).

    python submit.py PEER bulk N [--noop] [--prefix P]     # enqueue N at once
    python submit.py PEER serial N [--noop] [--prefix P]   # one at a time, each waited for
    python submit.py PEER one TEXT [--opts JSON]           # one task (recovery.py)

Each task gets its text and the time it was enqueued; prints one JSON line.
``--opts`` (RQ only): job options, e.g. {"job_timeout": 35, "retry": 2}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import peer_common as pc


def enqueue_rq(texts: list[str], noop: bool, opts: dict) -> None:
    import redis
    import tasks_rq
    from rq import Queue, Retry

    conn = redis.Redis.from_url(pc.REDIS_URL)
    queue = Queue("bench", connection=conn)
    extra = {}
    if opts.get("job_timeout"):
        extra["timeout"] = opts["job_timeout"]
    if opts.get("retry"):
        extra["retry"] = Retry(max=opts["retry"])
    for start in range(0, len(texts), 1000):
        datas = [Queue.prepare_data(tasks_rq.call, args=(t, time.time(), noop), **extra)
                 for t in texts[start:start + 1000]]
        with conn.pipeline() as pipe:
            queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()


def enqueue_arq(texts: list[str], noop: bool, opts: dict) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    async def main() -> None:
        pool = await create_pool(RedisSettings.from_dsn(pc.REDIS_URL))
        for start in range(0, len(texts), 100):
            await asyncio.gather(*(pool.enqueue_job("call", t, time.time(), noop)
                                   for t in texts[start:start + 100]))
        await pool.aclose()

    asyncio.run(main())


def enqueue_celery(texts: list[str], noop: bool, opts: dict) -> None:
    from tasks_celery import app, call

    with app.producer_or_acquire() as producer:
        for t in texts:
            call.apply_async(args=(t, time.time(), noop), producer=producer)


def enqueue_dramatiq(texts: list[str], noop: bool, opts: dict) -> None:
    from tasks_dramatiq import call

    for t in texts:
        call.send(t, time.time(), noop)


ENQUEUE = {"rq": enqueue_rq, "arq": enqueue_arq, "celery": enqueue_celery,
           "dramatiq": enqueue_dramatiq}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("peer", choices=sorted(ENQUEUE))
    parser.add_argument("mode", choices=["bulk", "serial", "one"])
    parser.add_argument("arg")
    parser.add_argument("--noop", action="store_true")
    parser.add_argument("--prefix", default="t")
    parser.add_argument("--opts", default="{}")
    args = parser.parse_args()
    enqueue = ENQUEUE[args.peer]
    opts = json.loads(args.opts)
    t0 = time.time()
    if args.mode == "one":
        enqueue([args.arg], args.noop, opts)
    elif args.mode == "bulk":
        enqueue([f"{args.prefix} {i}" for i in range(int(args.arg))], args.noop, opts)
    else:
        import redis

        conn = redis.Redis.from_url(pc.REDIS_URL)
        for i in range(int(args.arg)):
            enqueue([f"{args.prefix} {i}"], args.noop, opts)
            got = conn.blpop([pc.DONE_KEY], timeout=60)
            if got is None:
                raise SystemExit(f"serial task {i} not done after 60 s")
            conn.rpush("bench:serial", got[1])
    print(json.dumps({"submit_s": time.time() - t0}), flush=True)


if __name__ == "__main__":
    main()
