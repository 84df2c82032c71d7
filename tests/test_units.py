"""Pure tests of the human units in the spec: durations, sizes and their formatting."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from launcher.units import format_duration, format_size, parse_duration, parse_size

# --- parse_duration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1s500ms", 1.5),
        ("1h1m1s", 3661.0),
        ("1.5h", 5400.0),
        ("0.5s", 0.5),
        ("250ms", 0.25),
        ("0s", 0.0),
        ("90", 90.0),  # a bare number in a string is seconds
        ("1.5", 1.5),
        ("0", 0.0),
        ("  5s ", 5.0),  # surrounding blanks
        ("5 s", 5.0),  # blanks inside
        ("1h 30m", 5400.0),
        ("5S", 5.0),  # case does not matter
        ("2M", 120.0),
        ("100MS", 0.1),
        (5, 5.0),  # bare numbers are seconds
        (0, 0.0),
        (2.5, 2.5),
        (0.001, 0.001),
    ],
)
def test_parse_duration_good(text: object, seconds: float) -> None:
    result = parse_duration(text)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "ms",
        "s",
        "5x",
        "5 minutes",
        "5sec",
        "5ss",
        "5mm",
        "5m5",  # a trailing bare number after units
        "s5",
        "-5s",  # negative with a unit
        "-1h30m",
        "5d",  # days are not a unit
        "1,5s",
        "five",
        None,
        [],
        {},
        ["5s"],
    ],
)
def test_parse_duration_bad(value: object) -> None:
    with pytest.raises(ValueError, match=r"^must be a duration like 500ms, 5s or 2m, not "):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_bools(value: bool) -> None:
    # YAML turns `yes`/`no`/`true` into bools; they must not pass as 1 and 0 seconds.
    with pytest.raises(ValueError, match=r"^must be a duration like 500ms, 5s or 2m$"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5, -3600])
def test_parse_duration_rejects_negative_numbers(value: float) -> None:
    with pytest.raises(ValueError, match=r"^must not be negative$"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["-5", "-0.5", "-inf"])
def test_parse_duration_rejects_negative_numbers_in_strings(value: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_rejects_nan_string() -> None:
    with pytest.raises(ValueError):
        parse_duration("nan")


def test_parse_duration_huge_int_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_duration(10**400)


@given(
    hours=st.integers(0, 99),
    minutes=st.integers(0, 99),
    seconds=st.integers(0, 99),
    millis=st.integers(0, 999),
)
@settings(max_examples=200, deadline=None)
def test_parse_duration_compound_sums_its_parts(
    hours: int, minutes: int, seconds: int, millis: int
) -> None:
    text = f"{hours}h{minutes}m{seconds}s{millis}ms"
    expected = hours * 3600 + minutes * 60 + seconds + millis / 1000
    assert parse_duration(text) == pytest.approx(expected)
    assert parse_duration(text.upper()) == pytest.approx(expected)


# --- parse_size ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1GiB", 2**30),
        ("1GB", 10**9),
        ("512MB", 512 * 10**6),
        ("512MiB", 512 * 2**20),
        ("10MB", 10_000_000),
        ("1KiB", 1024),
        ("1KB", 1000),
        ("1k", 1000),
        ("1K", 1000),
        ("1m", 10**6),
        ("1g", 10**9),
        ("1T", 10**12),
        ("1TB", 10**12),
        ("1TiB", 2**40),
        ("1kib", 1024),  # case does not matter
        ("1gib", 2**30),
        ("512mb", 512 * 10**6),
        ("1.5KiB", 1536),
        ("0.5GiB", 2**29),
        ("1 KiB", 1024),  # a blank between number and unit
        (" 2MB ", 2_000_000),
        ("10", 10),  # bare numbers are bytes
        ("10b", 10),
        ("10B", 10),
        ("0", 0),
        (5, 5),
        (0, 0),
        (1024.0, 1024),
    ],
)
def test_parse_size_good(text: object, size: int) -> None:
    result = parse_size(text)
    assert isinstance(result, int) and not isinstance(result, bool)
    assert result == size


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "GiB",
        "1XB",
        "1ib",
        "1i",
        "1MiBB",
        "1 G iB",
        "1e3",
        "-1",
        "-1MB",
        "1PB",
        "ten MB",
        "inf",
        None,
        [],
        {},
    ],
)
def test_parse_size_bad(value: object) -> None:
    with pytest.raises(ValueError, match=r"^must be a size like 512MB or 1GiB, not "):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_rejects_bools(value: bool) -> None:
    with pytest.raises(ValueError, match=r"^must be a size like 512MB or 1GiB$"):
        parse_size(value)


@pytest.mark.parametrize("value", [-1, -0.5, -(2**30)])
def test_parse_size_rejects_negative_numbers(value: float) -> None:
    with pytest.raises(ValueError, match=r"^must not be negative$"):
        parse_size(value)


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_parse_size_rejects_non_finite_floats(value: float) -> None:
    with pytest.raises(ValueError, match=r"^must be a finite size$"):
        parse_size(value)


@given(st.integers(0, 10**6), st.sampled_from(["KiB", "MiB", "GiB", "TiB"]))
@settings(max_examples=200, deadline=None)
def test_parse_size_binary_units_are_powers_of_1024(number: int, unit: str) -> None:
    power = ["KiB", "MiB", "GiB", "TiB"].index(unit) + 1
    assert parse_size(f"{number}{unit}") == number * 1024**power
    assert parse_size(f"{number}{unit[0]}B") == number * 1000**power


# --- formatting ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.001, "1ms"),
        (0.25, "250ms"),
        (0.5, "500ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59, "59s"),
        (119, "119s"),
        (120, "2m"),
        (150, "2m"),  # whole minutes from 2m up
        (3600, "60m"),
        (5400, "90m"),
        (7200, "2.0h"),
        (5400 * 2, "3.0h"),
        (86400, "24.0h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (1023, "1023B"),
        (1024, "1.0KiB"),
        (1536, "1.5KiB"),
        (2**20, "1.0MiB"),
        (10 * 2**20, "10.0MiB"),
        (2**30, "1.0GiB"),
        (5 * 2**30, "5.0GiB"),
        (2**40, "1.0TiB"),
        (2**50, "1024.0TiB"),  # TiB is the largest unit
    ],
)
def test_format_size(size: float, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(("seconds", "text"), [(0.9996, "1s"), (7199, "2.0h")])
def test_format_duration_rounding_at_unit_boundaries(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("size", "text"), [(2**20 - 1, "1.0MiB"), (1023.6, "1.0KiB")])
def test_format_size_rounding_at_unit_boundaries(size: float, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(0, 10**6))
@example(7170)  # 119.5 minutes round to 120: shown as 2.0h, not 120m
@settings(max_examples=200, deadline=None)
def test_format_duration_of_whole_seconds_reads_back_in_the_same_unit(seconds: int) -> None:
    text = format_duration(seconds)
    if seconds < 120:
        # exact below two minutes
        assert parse_duration(text) == pytest.approx(seconds)
    elif round(seconds / 60) < 120:  # minutes while they round to under 120
        assert text.endswith("m")
        assert abs(parse_duration(text) - seconds) <= 30
    else:
        assert text.endswith("h")
        assert abs(float(text[:-1]) * 3600 - seconds) <= 180 + 1e-6  # half of 0.1 h, give or take float noise
