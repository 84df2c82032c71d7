"""Human units in the spec: durations (``500ms``, ``5s``, ``2m``, ``1h30m``) and sizes
(``512MB``, ``1GiB``). Bare numbers are seconds and bytes."""

from __future__ import annotations

import math
import re
from typing import Any

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}


def _finite(number: float, what: str) -> float:
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"must be a finite {what}")
    if number < 0:
        raise ValueError("must not be negative")
    return number


def parse_duration(value: Any) -> float:
    """Seconds as a float; raises ValueError with a message fit for a user."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 500ms, 5s or 2m")
    try:
        if isinstance(value, (int, float)):
            return _finite(float(value), "duration")
        if isinstance(value, str):
            text = value.strip().lower().replace(" ", "")
            if _NUMBER.fullmatch(text):
                return _finite(float(text), "duration")
            parts = _DURATION_PART.findall(text)
            if parts and "".join(n + u for n, u in parts) == text:
                return _finite(sum(float(n) * _DURATION_UNITS[u] for n, u in parts), "duration")
    except OverflowError:
        raise ValueError("is too large") from None
    raise ValueError(f"must be a duration like 500ms, 5s or 2m, not {value!r}")


def parse_size(value: Any) -> int:
    """Bytes as an int. KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024."""
    if isinstance(value, bool):
        raise ValueError("must be a size like 512MB or 1GiB")
    try:
        if isinstance(value, (int, float)):
            return int(_finite(float(value), "size"))
        if isinstance(value, str):
            match = _SIZE.fullmatch(value.strip())
            if match:
                unit = (match.group(2) or "").lower()
                if unit in _SIZE_UNITS:
                    return int(_finite(float(match.group(1)) * _SIZE_UNITS[unit], "size"))
    except OverflowError:
        raise ValueError("is too large") from None
    raise ValueError(f"must be a size like 512MB or 1GiB, not {value!r}")


def format_duration(seconds: float) -> str:
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f}ms"
    if round(seconds, 3) < 120:
        return f"{round(seconds, 3):g}s"
    if round(seconds / 60) < 120:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_size(num: float) -> str:
    """Bytes in the largest binary unit that keeps the figure under 1024 once rounded."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    for index, unit in enumerate(units):
        shown = f"{num:.0f}" if unit == "B" else f"{num:.1f}"
        if float(shown) < 1024 or index == len(units) - 1:
            return f"{shown}{unit}"
        num /= 1024
    return f"{num:.1f}TiB"
