"""Where Redis is and how to log in, with the password kept out of every printable form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import redis
    import redis.asyncio


SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class RedisTarget:
    url: str  # never holds the password
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Split a URL that may carry ``user:password@`` into a clean URL and a password."""
        if not url.startswith(SCHEMES):
            # never echo the URL: it may hold a password
            raise ValueError("a Redis URL must start with " + ", ".join(SCHEMES))
        parts = urlsplit(url)
        if parts.password is None:
            return cls(url)
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        netloc = f"{user}@{host}" if user else host
        clean = f"{parts.scheme}://{netloc}{parts.path}"
        if parts.query:
            clean += f"?{parts.query}"
        return cls(clean, parts.password)

    def __str__(self) -> str:
        return self.url

    def _kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"decode_responses": True, "health_check_interval": 0}
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    def sync(self, **extra: Any) -> redis.Redis:
        import redis

        return redis.Redis.from_url(self.url, **{**self._kwargs(), **extra})

    def aio(self, **extra: Any) -> redis.asyncio.Redis:
        import redis.asyncio

        return redis.asyncio.Redis.from_url(self.url, **{**self._kwargs(), **extra})

    def aio_bounded(self, max_connections: int, **extra: Any) -> redis.asyncio.Redis:
        """A client whose callers wait for one of ``max_connections`` connections rather
        than open one each (10,000 tasks starting at once would open 10,000)."""
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url, max_connections=max_connections, timeout=None,
            **{**self._kwargs(), **extra})
        return redis.asyncio.Redis(connection_pool=pool)
