"""What an API call cost, from genai-prices' bundled data (offline; its network updater
is never started). Money is integer micro-dollars so totals add up exactly."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any


@dataclass
class Usage:
    """Token counts as the API reports them: input excludes the cache tokens."""

    input: int = 0
    output: int = 0
    cache_creation: int = 0
    cache_read: int = 0

    @classmethod
    def of(cls, usage: Any) -> Usage:
        return cls(
            int(getattr(usage, "input_tokens", 0) or 0),
            int(getattr(usage, "output_tokens", 0) or 0),
            int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
            int(getattr(usage, "cache_read_input_tokens", 0) or 0),
        )

    def add(self, other: Usage) -> None:
        self.input += other.input
        self.output += other.output
        self.cache_creation += other.cache_creation
        self.cache_read += other.cache_read

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_creation + self.cache_read


@lru_cache(maxsize=64)
def _known(model: str) -> bool:
    return price_micro_usd(model, Usage(1, 1)) is not None


def price_micro_usd(model: str, usage: Usage) -> int | None:
    """Micro-dollars for one call, or None for a model the price data does not know."""
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    try:
        price = calc_price(
            GUsage(
                # genai-prices counts cache tokens inside input_tokens; the API does not
                input_tokens=usage.input + usage.cache_creation + usage.cache_read,
                output_tokens=usage.output,
                cache_write_tokens=usage.cache_creation,
                cache_read_tokens=usage.cache_read,
            ),
            model_ref=model,
            provider_id="anthropic",
        )
    except LookupError:
        return None
    except Exception:  # noqa: BLE001 - genai-prices raises plain errors for unknown models
        return None
    return int((price.total_price * Decimal(1_000_000)).to_integral_value())
