"""The history filter form (events_app/filters.py): what an auditor types becomes one EventFilter."""

from __future__ import annotations

from events_app.filters import EventFilterForm
from events_app.querysets import EventFilter


def test_filter_spec_round_trip():
    form = EventFilterForm({"event_type": "auth_failure", "meta": "a=1, b = x", "q": "  bob "})
    assert form.is_valid(), form.errors
    assert form.spec() == EventFilter(event_type="auth_failure", metadata=(("a", "1"), ("b", "x")), text="bob")
