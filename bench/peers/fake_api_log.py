"""tests/harness/fake_api.py as its own process (same options), printing one line per
request to stdout: ``REQ <unix time> <client port> <last user text>``, so that a harness
sees which task was called, when, and from which process (the client port is mapped to a
pid).

    python -m bench.peers.fake_api_log --port 0 --latency 30
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time

from tests.harness import fake_api

_peer: contextvars.ContextVar[int] = contextvars.ContextVar("peer", default=0)


class LoggingFakeAPI(fake_api.FakeAPI):
    async def _connection(self, reader, writer):  # type: ignore[no-untyped-def]
        peer = writer.get_extra_info("peername")
        _peer.set(peer[1] if peer else 0)
        await super()._connection(reader, writer)


def script(req: fake_api.Request) -> None:
    text = fake_api.last_user_text(req).replace("\n", " ")
    print(f"REQ {time.time():.6f} {_peer.get()} {text}", flush=True)  # None: default reply


async def main(args) -> None:  # type: ignore[no-untyped-def]
    api = LoggingFakeAPI(args.latency, script=script, jitter=args.jitter, keep_requests=10)
    await fake_api.serve_until_stopped(api, args.port)


if __name__ == "__main__":
    asyncio.run(main(fake_api._parse_args(sys.argv[1:])))
