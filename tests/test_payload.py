"""The task payload parser: any input ends in a Task or a one-line PayloadError."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from workers.payload import PayloadError, Task, dump, parse, route

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def check(raw: str | bytes | None) -> None:
    try:
        task = parse(raw)
    except PayloadError as exc:
        message = str(exc)
        assert message and "\n" not in message, message
    else:
        assert isinstance(task, Task) and task.description.strip()
        assert all(isinstance(f, str) for f in task.files)


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_any_text(raw: str) -> None:
    check(raw)


@given(st.binary())
@settings(max_examples=200, deadline=None)
def test_any_bytes(raw: bytes) -> None:
    check(raw)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_any_json(value: object) -> None:
    check(json.dumps(value))


@given(st.dictionaries(st.sampled_from(["description", "files", "pool", "x"]),
                       json_values | st.sampled_from(["default", "other", "missing"])))
@settings(max_examples=300, deadline=None)
def test_any_object_with_the_known_fields(value: dict) -> None:
    check(json.dumps(value))
    # the pool it asks for if that pool exists, the default pool otherwise
    wanted = value.get("pool")
    expected = wanted if wanted in ("default", "other") else "default"
    assert route(json.dumps(value), "default", ("default", "other")) == expected


@given(st.text() | st.binary().map(lambda b: b.decode("latin-1")))
@settings(max_examples=200, deadline=None)
def test_route_of_anything_that_is_not_an_object_is_the_default_pool(raw: str) -> None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    assume(not isinstance(value, dict))  # (the test above)
    assert route(raw, "default", ("default", "other")) == "default"


@pytest.mark.parametrize("raw, reason", [
    (None, "no payload: task key is missing"),
    ("", "payload is not valid JSON"),
    ("[" * 100_000, "payload is not valid JSON"),
    ('"text"', "payload must be a JSON object, not str"),
    ('{"description": 3}', "payload has no 'description' (a non-empty string)"),
    ('{"description": "x", "files": [1]}', "payload 'files' must be a list of strings"),
    ('{"description": "x", "pool": 1}', "payload 'pool' must be a string"),
    (b"\xff\xfe", "payload is not UTF-8"),
    ("x" * 1_000_001, "payload is larger than 1000000 bytes"),
])
def test_refusals_say_why(raw, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse(raw)
    assert str(info.value).startswith(reason)


def test_round_trip_keeps_extra_fields() -> None:
    task = parse('{"description": "d", "files": ["a"], "pool": "p", "priority": 2}')
    assert parse(dump(task)) == task and task.extra == {"priority": 2}
    assert route(dump(task), "default", ("default", "p")) == "p"
    assert route(dump(task), "default", ("default",)) == "default"
