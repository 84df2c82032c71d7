"""Prices: our fast path agrees with genai-prices to the nano-dollar; overrides; bounds."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from workers.pricing import NANO, PriceBook, Rates, Usage, family, newest_sonnet


def genai(model: str, u: Usage) -> int:
    from genai_prices import Usage as G
    from genai_prices import calc_price

    price = calc_price(G(input_tokens=u.input + u.cache_creation + u.cache_read,
                         output_tokens=u.output, cache_write_tokens=u.cache_creation,
                         cache_write_5m_tokens=u.cache_creation - u.cache_creation_1h,
                         cache_write_1h_tokens=u.cache_creation_1h,
                         cache_read_tokens=u.cache_read),
                       model_ref=model, provider_id="anthropic")
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
