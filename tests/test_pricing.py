"""Prices: our fast path agrees with genai-prices to the nano-dollar, at standard and at
batch rates (half, where the data has no batch variant); overrides; bounds."""

from __future__ import annotations

import random
from copy import copy
from decimal import Decimal

import pytest

from workers.pricing import NANO, PriceBook, Rates, Usage, family, newest_sonnet


def genai(model: str, u: Usage, batch: bool = False) -> int:
    from genai_prices import Usage as G
    from genai_prices import calc_price

    price = calc_price(G(input_tokens=u.input + u.cache_creation + u.cache_read,
                         output_tokens=u.output, cache_write_tokens=u.cache_creation,
                         cache_write_5m_tokens=u.cache_creation - u.cache_creation_1h,
                         cache_write_1h_tokens=u.cache_creation_1h,
                         cache_read_tokens=u.cache_read),
                       model_ref=model, provider_id="anthropic",
                       price_context={"processing": "batch"} if batch else None)
    return int((price.total_price * NANO).to_integral_value())


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5",
                                   "claude-3-5-haiku-latest"])
def test_fast_path_equals_genai_prices(model: str) -> None:
    rng = random.Random(model)
    book = PriceBook()
    for _ in range(300):
        big = rng.random() < 0.2  # some over the 200k long-context threshold
        cache = rng.randint(0, 300_000 if big else 5_000)
        u = Usage(rng.randint(0, 250_000 if big else 5_000), rng.randint(0, 8_000), cache,
                  rng.randint(0, 300_000 if big else 50_000), rng.randint(0, cache))
        assert book.nano(model, u) == genai(model, u), (model, u)
        if model != "claude-3-5-haiku-latest":  # the others have batch prices in the data
            assert book.nano(model, u, batch=True) == genai(model, u, batch=True), (model, u)


def test_overrides_unknown_models_and_bounds() -> None:
    book = PriceBook({"mine": Rates(Decimal(2), Decimal(10), Decimal("2.5"), Decimal("0.2"),
                                    Decimal(4))})
    assert book.nano("mine", Usage(1_000_000, 0)) == 2 * 10**9
    assert book.nano("mine", Usage(0, 0, 1_000_000, 0, 1_000_000)) == 4 * 10**9
    assert book.nano("no-such-model", Usage(5, 5)) is None and not book.knows("no-such-model")
    assert book.bound_nano("no-such-model", 10, 10) == 0
    bound = book.bound_nano("claude-haiku-4-5", 1000, 4096)
    assert bound >= book.nano("claude-haiku-4-5", Usage(1000, 4096))
    assert bound >= book.nano("claude-haiku-4-5", Usage(0, 4096, 1000, 0, 1000))
    assert family("claude-haiku-4-5") == "haiku" and family("x") == "x"
    assert newest_sonnet().startswith("claude-sonnet-")


def anthropic_model(model: str):
    """The model's entry in genai-prices' bundled data."""
    from genai_prices.data_snapshot import get_snapshot

    provider = next(p for p in get_snapshot().providers if p.id == "anthropic")
    return next(m for m in provider.models if m.id == model)


RATE_OF = {"input": "input_mtok", "output": "output_mtok", "cache_write": "cache_write_mtok",
           "cache_read": "cache_read_mtok", "cache_write_1h": "cache_write_1h_mtok"}


def one_kind(kind: str, n: int) -> Usage:
    return {"input": Usage(input=n), "output": Usage(output=n),
            "cache_write": Usage(cache_creation=n), "cache_read": Usage(cache_read=n),
            "cache_write_1h": Usage(cache_creation=n, cache_creation_1h=n)}[kind]


def half_nano(n: int, rate: Decimal) -> int:
    """n tokens at half of ``rate`` USD per million, in nano-dollars (exact here)."""
    nano = Decimal(n) * rate * 1000 / 2
    assert nano == nano.to_integral_value(), (n, rate)
    return int(nano)


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5",
                                   "claude-3-5-haiku-latest", "claude-sonnet-4-0"])
def test_batch_costs_half_of_the_standard_rates(model: str) -> None:
    """Every token kind at half the data's standard rate, with a batch variant in the data
    (which says so too) or without one (the price data would answer the standard price)."""
    info = anthropic_model(model)
    standard = info.prices
    variant = info.price_variants[0].prices if info.price_variants else None
    assert (variant is None) == (model in ("claude-3-5-haiku-latest", "claude-sonnet-4-0"))
    book = PriceBook()
    for kind, key in RATE_OF.items():
        rate = getattr(standard, key)
        base = rate if isinstance(rate, Decimal) else rate.base
        if variant is not None:
            batch_rate = getattr(variant, key)
            assert (batch_rate if isinstance(batch_rate, Decimal) else batch_rate.base) == base / 2
        for n in (1, 7, 1_234, 150_000):
            assert book.nano(model, one_kind(kind, n), batch=True) == half_nano(n, base), (kind, n)
            assert book.nano(model, one_kind(kind, n)) == 2 * half_nano(n, base), (kind, n)
    bound = book.bound_nano(model, 1_000, 4_096)
    assert book.bound_nano(model, 1_000, 4_096, batch=True) == bound // 2


def test_batch_long_context_tier_is_halved_too() -> None:
    tiered = anthropic_model("claude-sonnet-4-5").prices
    n = 250_000  # past the 200k tier: every token at the tier's rate
    for kind in ("input", "cache_read"):
        rate = getattr(tiered, RATE_OF[kind])
        assert rate.tiers[0].start <= n
        assert PriceBook().nano("claude-sonnet-4-5", one_kind(kind, n), batch=True) == \
            half_nano(n, rate.tiers[0].price)


def test_batch_overrides_are_half_of_each_rate() -> None:
    book = PriceBook({"mine": Rates(Decimal(2), Decimal(10), Decimal("2.5"), Decimal("0.2"),
                                    Decimal(4))})
    assert book.nano("mine", Usage(1_000_000, 0), batch=True) == 10**9
    assert book.nano("mine", Usage(0, 1_000_000), batch=True) == 5 * 10**9
    assert book.nano("mine", Usage(0, 0, 1_000_000), batch=True) == 1_250_000_000
    assert book.nano("mine", Usage(0, 0, 0, 1_000_000), batch=True) == 100_000_000
    assert book.nano("mine", Usage(0, 0, 1_000_000, 0, 1_000_000), batch=True) == 2 * 10**9
    assert book.bound_nano("mine", 1_000, 100, batch=True) == (1_000 * 2 + 100 * 5) * 1_000
    assert book.nano("no-such-model", Usage(5, 5), batch=True) is None
    assert book.bound_nano("no-such-model", 10, 10, batch=True) == 0


def test_batch_prices_halve_only_what_the_variant_leaves_at_standard() -> None:
    from genai_prices.types import ModelPrice, Tier, TieredPrices

    from workers.pricing import batch_prices

    standard = ModelPrice(input_mtok=TieredPrices(Decimal(3), [Tier(200_000, Decimal(6))]),
                          output_mtok=Decimal(15), cache_write_mtok=Decimal("3.75"),
                          cache_read_mtok=Decimal("0.3"), cache_write_1h_mtok=Decimal(6),
                          web_searches_kcount=Decimal(10))
    partial = copy(standard)
    partial.__dict__["output_mtok"] = Decimal(7)  # a variant with one rate of its own
    got = batch_prices(standard, partial)
    assert got.input_mtok == TieredPrices(Decimal("1.5"), [Tier(200_000, Decimal(3))])
    assert got.output_mtok == Decimal(7)
    assert (got.cache_write_mtok, got.cache_read_mtok, got.cache_write_1h_mtok) == \
        (Decimal("1.875"), Decimal("0.15"), Decimal(3))
    assert got.web_searches_kcount == Decimal(10)  # not a token rate: left as it is
    assert standard.output_mtok == Decimal(15) and partial.input_mtok.base == Decimal(3)
