"""What an API call cost, from genai-prices' bundled data (offline: its network updater is
never started), with per-model overrides from the spec. Money is integer nano-dollars
(1e-9 USD), so per-call costs are exact and every total adds up to the last digit.
A call sent through the Message Batches API is priced at the batch rates (``batch=True``).
"""

from __future__ import annotations

import re
from copy import copy
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from importlib import metadata
from typing import Any

NANO = Decimal(1_000_000_000)
_MTOK = Decimal(1_000_000)


@dataclass
class Usage:
    """Token counts as the API reports them: ``input`` excludes the cache tokens, and
    cache writes are split by lifetime (5 minutes, 1 hour)."""

    input: int = 0
    output: int = 0
    cache_creation: int = 0
    cache_read: int = 0
    cache_creation_1h: int = 0  # part of cache_creation written with a 1 h lifetime

    @classmethod
    def of(cls, usage: Any) -> Usage:
        split = getattr(usage, "cache_creation", None)
        one_hour = int(getattr(split, "ephemeral_1h_input_tokens", 0) or 0) if split else 0
        return cls(
            int(getattr(usage, "input_tokens", 0) or 0),
            int(getattr(usage, "output_tokens", 0) or 0),
            int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
            int(getattr(usage, "cache_read_input_tokens", 0) or 0),
            one_hour,
        )

    def add(self, other: Usage) -> None:
        self.input += other.input
        self.output += other.output
        self.cache_creation += other.cache_creation
        self.cache_read += other.cache_read
        self.cache_creation_1h += other.cache_creation_1h

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_creation + self.cache_read

    def uncached(self) -> Usage:
        """The same tokens as if nothing were read from or written to the cache: what
        the call would have cost without caching."""
        return Usage(self.input + self.cache_creation + self.cache_read, self.output)


@dataclass(frozen=True)
class Rates:
    """USD per million tokens, for a spec override."""

    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal
    cache_write_1h: Decimal

    def nano(self, u: Usage) -> int:
        five_min = u.cache_creation - u.cache_creation_1h
        usd = (u.input * self.input + u.output * self.output + five_min * self.cache_write
               + u.cache_creation_1h * self.cache_write_1h + u.cache_read * self.cache_read)
        return int((usd / _MTOK * NANO).to_integral_value())

    def halved(self) -> Rates:
        """The batch rates of a spec override: half of each (see ``batch_prices``)."""
        return Rates(self.input / 2, self.output / 2, self.cache_write / 2,
                     self.cache_read / 2, self.cache_write_1h / 2)


def source() -> str:
    """Which price data is used, for reports."""
    try:
        version = metadata.version("genai-prices")
    except metadata.PackageNotFoundError:
        version = "?"
    return f"genai-prices {version} (bundled data, offline)"


class PriceBook:
    def __init__(self, overrides: dict[str, Rates] | None = None) -> None:
        self.overrides = dict(overrides or {})

    def nano(self, model: str, usage: Usage, batch: bool = False) -> int | None:
        """Nano-dollars for one call (at batch rates if ``batch``), or None for a model no
        price data knows."""
        if model in self.overrides:
            rates = self.overrides[model]
            return (rates.halved() if batch else rates).nano(usage)
        return _genai_nano(model, usage, batch)

    def knows(self, model: str) -> bool:
        return self.nano(model, Usage(1, 1)) is not None

    def bound_nano(self, model: str, input_tokens: int, max_tokens: int,
                   batch: bool = False) -> int:
        """An upper bound on what a call can cost: every input token at the dearest input
        rate (a 1 h cache write) and ``max_tokens`` of output. 0 if the model is unknown."""
        dearest = max(self.nano(model, Usage(cache_creation=input_tokens,
                                             cache_creation_1h=input_tokens), batch) or 0,
                      self.nano(model, Usage(input=input_tokens), batch) or 0)
        return dearest + (self.nano(model, Usage(output=max_tokens), batch) or 0)


def _genai_nano(model: str, usage: Usage, batch: bool = False) -> int | None:
    if not _genai_knows(model):
        return None
    base, first_tier = _base_rates(model, batch)
    if base is not None and (first_tier is None or
                             usage.input + usage.cache_creation + usage.cache_read < first_tier):
        return base.nano(usage)  # no tier can apply: the same sum, without the lookup
    from genai_prices import Usage as GUsage

    five_min = usage.cache_creation - usage.cache_creation_1h
    price = _model_price(model, batch).calc_price(
        GUsage(
            # genai-prices counts cache tokens inside input_tokens; the API does not
            input_tokens=usage.input + usage.cache_creation + usage.cache_read,
            output_tokens=usage.output,
            cache_write_tokens=usage.cache_creation,
            cache_write_5m_tokens=five_min,
            cache_write_1h_tokens=usage.cache_creation_1h,
            cache_read_tokens=usage.cache_read,
        ),
    )
    return int((price["total_price"] * NANO).to_integral_value())


# our Rates field -> genai-prices' price key
_KEYS = {"input": "input_mtok", "output": "output_mtok", "cache_write": "cache_write_mtok",
         "cache_read": "cache_read_mtok", "cache_write_1h": "cache_write_1h_mtok"}


@lru_cache(maxsize=256)
def _model_price(model: str, batch: bool) -> Any:
    """genai-prices' ModelPrice for ``model`` (a known one) as it stands now, standard or
    batch, resolved once per process."""
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    one = GUsage(input_tokens=1, output_tokens=1)
    standard = calc_price(one, model_ref=model, provider_id="anthropic").model_price
    if not batch:
        return standard
    return batch_prices(standard, calc_price(one, model_ref=model, provider_id="anthropic",
                                             price_context={"processing": "batch"}).model_price)


def batch_prices(standard: Any, variant: Any) -> Any:
    """The batch ModelPrice: ``variant`` (genai-prices' prices for the batch context), with
    each token rate it leaves at the standard rate halved. genai-prices answers a model
    with no batch variant (older models, or a date before the variant starts) with the
    standard prices, silently; Anthropic's rule is that Message Batches usage is charged
    at 50% of the standard rates, cache writes and reads included (the multipliers stack),
    long-context tiers too. A batch rate equal to the standard one is never right, so the
    missing ones are derived by that rule."""
    from genai_prices.types import Tier, TieredPrices

    resolved = copy(variant)
    for key in _KEYS.values():
        value = getattr(standard, key, None)
        if value is None or getattr(variant, key, None) != value:
            continue
        if isinstance(value, TieredPrices):
            value = TieredPrices(value.base / 2, [Tier(t.start, t.price / 2) for t in value.tiers])
        else:
            value = value / 2
        resolved.__dict__[key] = value  # as genai-prices applies its own variants
    return resolved


@lru_cache(maxsize=512)
def _base_rates(model: str, batch: bool = False) -> tuple[Rates | None, int | None]:
    """The model's base rates from genai-prices (standard or batch) and the input size
    where its first long-context tier starts (None: no tiers). (None, None) if anything
    is unusual."""
    price = _model_price(model, batch)
    rates: dict[str, Decimal] = {}
    tier_starts: list[int] = []
    for ours, theirs in _KEYS.items():
        value = getattr(price, theirs, None)
        if value is None:
            return None, None
        if isinstance(value, Decimal):
            rates[ours] = value
        elif hasattr(value, "base") and hasattr(value, "tiers"):
            rates[ours] = Decimal(value.base)
            tier_starts += [int(t.start) for t in value.tiers]
        else:
            return None, None
    return Rates(**rates), (min(tier_starts) if tier_starts else None)


@lru_cache(maxsize=256)
def _genai_knows(model: str) -> bool:
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    try:
        calc_price(GUsage(input_tokens=1, output_tokens=1), model_ref=model,
                   provider_id="anthropic")
    except Exception:  # noqa: BLE001 - genai-prices raises LookupError/ValueError for these
        return False
    return True


_SONNET = re.compile(r"^claude-sonnet-(\d+)(?:-(\d+))?$")


def newest_sonnet() -> str | None:
    """The current Sonnet in the price data (highest version not marked deprecated), so
    the default reference model moves on when models retire, with no id written here."""
    from genai_prices.data_snapshot import get_snapshot

    best: tuple[tuple[int, int], str] | None = None
    for provider in get_snapshot().providers:
        if provider.id != "anthropic":
            continue
        for model in provider.models:
            match = _SONNET.match(model.id)
            if not match or getattr(model, "deprecated", False):
                continue
            version = (int(match.group(1)), int(match.group(2) or 0))
            if best is None or version > best[0]:
                best = (version, model.id)
    return best[1] if best else None


@lru_cache(maxsize=256)
def context_window(model: str) -> int | None:
    """The model's context window in tokens, where the price data knows it."""
    if not _genai_knows(model):
        return None
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    found = calc_price(GUsage(input_tokens=1, output_tokens=1), model_ref=model,
                       provider_id="anthropic").model
    window = getattr(found, "context_window", None)
    return int(window) if window else None


def family(model: str) -> str:
    """The seed's cost counter family: 'haiku', 'sonnet', 'opus', else the model id."""
    for name in ("haiku", "sonnet", "opus"):
        if name in model:
            return name
    return model


# The API's minimum cacheable prompt length, by model-name prefix (Anthropic's prompt
# caching docs): below it a prefix is not cached, and nothing says so.
_CACHE_MIN = (("claude-opus-4-5", 4096), ("claude-haiku-4-5", 4096),
              ("claude-3-5-haiku", 2048), ("claude-3-haiku", 2048))


def cache_min_tokens(model: str) -> int:
    """The shortest prefix ``model`` caches, in tokens (1,024 where not listed)."""
    return next((n for prefix, n in _CACHE_MIN if model.startswith(prefix)), 1024)
