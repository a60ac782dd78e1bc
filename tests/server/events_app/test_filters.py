"""The history filter form (events_app/filters.py): what an auditor types becomes one EventFilter."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest

from events_app.filters import EventFilterForm
from events_app.querysets import (
    EventFilter,
    InvalidCursor,
    InvalidFilterValue,
    NumberOutOfRange,
    decode_cursor,
    parse_metadata_value,
)


def test_filter_spec_round_trip():
    form = EventFilterForm({"event_type": "auth_failure", "meta": "a=1, b = x", "q": "  bob "})
    assert form.is_valid(), form.errors
    assert form.spec() == EventFilter(event_type="auth_failure", metadata=(("a", "1"), ("b", "x")), text="bob")


def test_times_are_kept_in_utc_naive_ones_read_as_utc():
    form = EventFilterForm({"since": "2026-01-01T08:00:00+14:00", "until": "2026-01-01 08:00"})
    assert form.is_valid(), form.errors
    assert form.spec().since == datetime(2025, 12, 31, 18, tzinfo=timezone.utc)
    assert form.spec().since.utcoffset().total_seconds() == 0
    assert form.spec().until == datetime(2026, 1, 1, 8, tzinfo=timezone.utc)
    assert form.spec().as_dict() == {"since": "2025-12-31T18:00:00+00:00", "until": "2026-01-01T08:00:00+00:00"}


@pytest.mark.parametrize("name, value", [("since", "0001-01-01T00:00:00+14:00"),
                                         ("until", "9999-12-31T23:59:59-12:00")])
def test_a_moment_outside_the_calendar_once_in_utc_is_refused(name, value):
    form = EventFilterForm({name: value})
    assert not form.is_valid()
    assert form.errors[name] == ["Out of range: years 1 to 9999 once converted to UTC."]


@pytest.mark.parametrize("raw, candidates", [
    ("abc", ["abc"]),
    ("5", ["5", 5]),
    ("-0", ["-0", 0]),
    ("1.5", ["1.5", 1.5]),
    ("1e308", ["1e308", 1e308]),
    (str(2**63 - 1), [str(2**63 - 1), 2**63 - 1]),
    ('"NaN"', ['"NaN"', "NaN"]),  # quoted: the text
    ("null", ["null", None]),
    ("[1, NaN]", ["[1, NaN]"]),  # lists and objects are matched as text only, as before
    ("NaNa", ["NaNa"]),
])
def test_metadata_value_candidates(raw, candidates):
    assert parse_metadata_value(raw) == candidates


@pytest.mark.parametrize("raw, refusal", [
    ("NaN", NumberOutOfRange), ("-Infinity", NumberOutOfRange), ("1e400", NumberOutOfRange),
    ("1e-400", NumberOutOfRange), (str(2**63), NumberOutOfRange), (str(-(2**63) - 1), NumberOutOfRange),
    ('"\\u0000"', InvalidFilterValue), ('"\\udfff"', InvalidFilterValue),
])
def test_metadata_values_no_database_can_compare_are_refused(raw, refusal):
    with pytest.raises(refusal):
        parse_metadata_value(raw)


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "2026-01-01T00:00:00"])
def test_a_forged_cursor_outside_the_calendar_or_naive_is_invalid(stamp):
    token = base64.urlsafe_b64encode(f"{stamp}|12345678-1234-5678-1234-567812345678".encode()).decode()
    with pytest.raises(InvalidCursor):
        decode_cursor(token)
