"""Searching as the tools do, on the ``regex`` package: each search has a time limit
and releases the GIL, so a pattern that backtracks without end is stopped and never
stops the worker's event loop."""

from __future__ import annotations

import time
from collections.abc import Iterator

import regex


def glob_regex(pattern: str) -> regex.Pattern[str]:
    """A glob over '/'-separated relative paths: ``**`` spans folders, ``*`` and ``?``
    do not cross '/', ``[...]`` is a character class. Repeats that mean nothing more
    (``**/**/``, ``**``) are folded, so a pattern cannot be made to backtrack on them."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            token, i = "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            token, i = ".*", i + 2
        elif pattern[i] in "*?":
            token, i = ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end].replace("\\", "\\\\")
            token = "[^" + body[1:] + "]" if body[0] in "!^" else "[" + body + "]"
            i = end + 1
        else:
            token, i = regex.escape(pattern[i]), i + 1
        if token in ("(?:.*/)?", ".*", "[^/]*") and out and out[-1] == token:
            continue
        out.append(token)
    return regex.compile("".join(out) + r"\Z", regex.DOTALL)



class LineSearch:
    """A pattern searched line by line, as grep does, each search with a time limit and
    the GIL released.

    A search call costs about 3 µs with a time limit, so a file is not searched a line
    at a time: the whole text is searched (``^`` and ``$`` at line ends), each line
    where a match starts is then checked alone, and the search goes on from the next
    line. No line is missed: a match a line has alone also starts there in the whole
    text, unless the pattern can look beyond the line (lookarounds, atomic groups,
    possessive quantifiers, ``\\A \\Z \\G \\K``); such a pattern is searched line by
    line."""

    _LOOKS_BEYOND = regex.compile(r"\(\?[<=!>]|\\[AZGK]|[*+?}]\+")

    def __init__(self, pattern: regex.Pattern[str], text: str, flags: int) -> None:
        self.pattern = pattern
        self.whole = None if self._LOOKS_BEYOND.search(text) else \
            regex.compile(text, flags | regex.MULTILINE)

    def lines(self, text: str, deadline: float) -> Iterator[tuple[int, str]]:
        """(line number, line) of each line of ``text`` the pattern matches."""
        if self.whole is None:
            for lineno, line in enumerate(_split_lines(text), 1):
                if self._matches(line, deadline):
                    yield lineno, line
            return
        pos, lineno, counted = 0, 1, 0
        while pos <= len(text):
            found = self.whole.search(text, pos, timeout=time_left(deadline),
                                      concurrent=True)
            if found is None:
                return
            start = text.rfind("\n", 0, found.start()) + 1
            end = text.find("\n", found.start())
            end = len(text) if end < 0 else end
            lineno += text.count("\n", counted, start)
            counted = start
            line = text[start:end]
            if (start < end or end < len(text)) and self._matches(line, deadline):
                yield lineno, line
            pos = end + 1

    def _matches(self, line: str, deadline: float) -> bool:
        return self.pattern.search(line, timeout=time_left(deadline),
                                   concurrent=True) is not None


def _split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def time_left(deadline: float) -> float:
    """Seconds until ``deadline``; ``TimeoutError`` if it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


