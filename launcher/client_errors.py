"""The Python API's errors (launcher/client.py): each says in one line why."""

from __future__ import annotations


class SwarmError(Exception):
    """A request the swarm cannot do; ``str()`` says why in one line."""


class SubmitError(SwarmError):
    """The task was not accepted; ``str()`` says why in one line."""


def check_text(text: str) -> None:
    """Text that cannot be sent to the API (lone surrogates, as from command-line bytes
    that are not UTF-8) is refused here, not failed at every try in a worker."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SubmitError(f"the task's text is not valid UTF-8: {text[exc.start]!a} at "
                          f"character {exc.start} (bytes that are not UTF-8?)") from None
