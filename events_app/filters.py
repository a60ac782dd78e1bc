"""The auditor's filter as a form: one validation for the history page, exports, the API and the stream.

Filters live in the query string (``?event_type=auth_failure&meta=client_ip=10.0.0.5``) so a view
can be shared by its URL.
"""

from __future__ import annotations

from django import forms
from django.utils.http import urlencode

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.querysets import EventFilter, InvalidCursor, decode_cursor

FILTER_FIELDS = ("agent", "event_type", "subtype", "severity", "component", "since", "until", "q", "meta")
MAX_METADATA_TERMS = 5


def _blank(choices) -> list[tuple[str, str]]:
    return [("", "any"), *choices]


class EventFilterForm(forms.Form):
    agent = forms.UUIDField(required=False, label="Agent id")
    event_type = forms.ChoiceField(required=False, choices=_blank(EventType.choices), label="Type")
    subtype = forms.ChoiceField(required=False, choices=_blank(EventSubtype.choices))
    severity = forms.ChoiceField(required=False, choices=_blank(Severity.choices))
    component = forms.ChoiceField(required=False, choices=_blank(Component.choices))
    since = forms.DateTimeField(required=False, help_text="From (inclusive), e.g. 2026-01-31 08:00")
    until = forms.DateTimeField(required=False, help_text="To (exclusive)")
    q = forms.CharField(required=False, max_length=200, label="Message contains", strip=True)
    meta = forms.CharField(
        required=False, max_length=500, label="Metadata", help_text="key=value; several separated by commas"
    )
    cursor = forms.CharField(required=False, max_length=200, widget=forms.HiddenInput)

    def clean_meta(self) -> tuple[tuple[str, str], ...]:
        raw = self.cleaned_data.get("meta") or ""
        terms = []
        for part in (p.strip() for p in raw.split(",")):
            if not part:
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or not key or "\x00" in part:
                raise forms.ValidationError("Write metadata filters as key=value.")
            terms.append((key, value.strip()))
        if len(terms) > MAX_METADATA_TERMS:
            raise forms.ValidationError(f"At most {MAX_METADATA_TERMS} metadata filters.")
        return tuple(terms)

    def clean_q(self) -> str:
        text = self.cleaned_data.get("q") or ""
        if "\x00" in text:
            raise forms.ValidationError("The text may not contain NUL characters.")
        return text

    def clean_cursor(self) -> str:
        token = self.cleaned_data.get("cursor") or ""
        if token:
            try:
                decode_cursor(token)
            except InvalidCursor:
                raise forms.ValidationError("Not a valid page cursor.") from None
        return token

    def clean(self):
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            self.add_error("until", "Must be after 'from'.")
        return data

    def spec(self) -> EventFilter:
        """The validated filter (call after is_valid())."""
        data = self.cleaned_data
        return EventFilter(
            agent=data.get("agent"),
            event_type=data.get("event_type") or "",
            subtype=data.get("subtype") or "",
            severity=data.get("severity") or "",
            component=data.get("component") or "",
            since=data.get("since"),
            until=data.get("until"),
            text=data.get("q") or "",
            metadata=data.get("meta") or (),
        )

    def filter_query(self, **changes) -> str:
        """The query string of the current filter (no cursor), with ``changes`` applied."""
        params = {name: self.data.get(name, "") for name in FILTER_FIELDS}
        params.update(changes)
        return urlencode({k: v for k, v in params.items() if v})
