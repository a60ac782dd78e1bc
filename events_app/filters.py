"""The auditor's filter as a form: one validation for the history page, exports, the API and the stream.

Filters live in the query string (``?event_type=auth_failure&meta=client_ip=10.0.0.5``) so a view
can be shared by its URL.

Every value the database could not take (NaN or 1e400 in a metadata filter, a date that leaves
years 1-9999 once in UTC, a forged cursor, NUL) is refused here, so each reader answers a 400
naming the parameter and the query never fails with a 500.
"""

from __future__ import annotations

import uuid
from datetime import timezone as dt_timezone

from django import forms
from django.contrib import admin
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.validators import ProhibitNullCharactersValidator
from django.utils.http import urlencode

from events_app.choices import Component, EventSubtype, EventType, Origin, Severity
from events_app.models import SystemEvent
from events_app.querysets import (
    EventFilter,
    InvalidCursor,
    InvalidFilterValue,
    NumberOutOfRange,
    decode_cursor,
    parse_metadata_value,
)
from redflag.access import agent_model

FILTER_FIELDS = ("agent", "event_type", "subtype", "severity", "component", "origin", "since", "until", "q", "meta")
MAX_METADATA_TERMS = 5
# "2026-01-31T08:00:00.000000+14:00" is 32 characters; room for spaces, nothing for a payload.
MAX_DATETIME_LENGTH = 64
REPEATED = "Given more than once; give it once."


def repeated_parameters(query, names) -> list[str]:
    """The ``names`` that ``query`` (a QueryDict) holds more than once.

    A form reads only the last of repeated values, so ``?meta=a=1&meta=b=2`` would silently drop a
    filter: an auditor would see rows they did not ask for. Such a request is refused instead.
    """
    getlist = getattr(query, "getlist", None)
    return [name for name in names if getlist is not None and len(getlist(name)) > 1]


class InstantField(forms.DateTimeField):
    """A moment, normalised to UTC. Without an offset it is in the server's time zone (UTC).

    Normalised here because the database adapters convert to UTC anyway, and a moment that leaves
    years 1-9999 on the way (``0001-01-01T00:00+14:00``, ``9999-12-31T23:59-12:00``) overflowed
    there, a 500; here it is a 400.
    """

    default_error_messages = {
        "out_of_range": "Out of range: years 1 to 9999 once converted to UTC.",
        "too_long": f"Ensure this value has at most {MAX_DATETIME_LENGTH} characters.",
    }

    def to_python(self, value):
        if isinstance(value, str):
            if len(value) > MAX_DATETIME_LENGTH:
                raise forms.ValidationError(self.error_messages["too_long"], code="too_long")
            ProhibitNullCharactersValidator()(value)
        moment = super().to_python(value)
        if moment is None:
            return None
        try:
            return moment.astimezone(dt_timezone.utc)
        except OverflowError:
            raise forms.ValidationError(self.error_messages["out_of_range"], code="out_of_range") from None


class AgentPicker(AutocompleteSelect):
    """The agent filter as the admin's hostname search (select2 over the admin's autocomplete view, which
    applies the agent list's search and view permission): the auditor types a hostname, the query string
    still carries the agent's id, and the field below still validates it.

    Rendering reads the one selected agent's hostname (one query, only when an agent is selected);
    validating reads nothing, so the API and the stream, which share this form, pay no query for it.
    """

    def __init__(self):
        agent_field = SystemEvent._meta.get_field("agent")
        super().__init__(agent_field, admin.site)
        self.choices = forms.ModelChoiceField(queryset=agent_field.related_model.objects.all()).choices

    def optgroups(self, name, value, attr=None):
        """The selected option, looked up only for a value that is a UUID (a refused value, re-shown with its
        400, must not reach the query)."""
        return super().optgroups(name, [item for item in value if _is_uuid(item)], attr)


def _is_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _blank(choices) -> list[tuple[str, str]]:
    return [("", "any"), *choices]


class EventFilterForm(forms.Form):
    agent = forms.UUIDField(required=False, label="Agent", widget=AgentPicker)
    event_type = forms.ChoiceField(required=False, choices=_blank(EventType.choices), label="Type")
    subtype = forms.ChoiceField(required=False, choices=_blank(EventSubtype.choices))
    severity = forms.ChoiceField(required=False, choices=_blank(Severity.choices))
    component = forms.ChoiceField(required=False, choices=_blank(Component.choices))
    origin = forms.ChoiceField(required=False, choices=_blank(Origin.choices), label="Recorded by")
    since = InstantField(required=False, help_text="From (inclusive), e.g. 2026-01-31 08:00 (UTC) or …T08:00+02:00")
    until = InstantField(required=False, help_text="To (exclusive)")
    q = forms.CharField(required=False, max_length=200, label="Message contains", strip=True)
    meta = forms.CharField(
        required=False, max_length=500, label="Metadata", help_text="key=value; several separated by commas"
    )
    cursor = forms.CharField(required=False, max_length=200, widget=forms.HiddenInput)
    agents_q = None  # the reader's agents (see within)

    def within(self, agents_q) -> EventFilterForm:
        """Limit the form to the reader's agents (redflag.access.agents_q; None = the whole fleet): the picker
        names only those, and spec() reads only their events."""
        self.agents_q = agents_q
        if agents_q is not None:
            picker = self.fields["agent"].widget
            picker.choices = forms.ModelChoiceField(queryset=agent_model().objects.filter(agents_q)).choices
        return self

    def clean_meta(self) -> tuple[tuple[str, str], ...]:
        raw = self.cleaned_data.get("meta") or ""
        terms, problems = [], []
        for part in (p.strip() for p in raw.split(",")):
            if not part:
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or "\x00" in part:
                raise forms.ValidationError("Write metadata filters as key=value.")
            try:
                parse_metadata_value(value)  # what the query will compare, checked before it runs
            except NumberOutOfRange as refusal:
                problems.append(f'{key}={value}: the value {refusal}; write {key}="{value}" to match it as text.')
            except InvalidFilterValue as refusal:
                problems.append(f"{key}={value}: the value {refusal}.")
            terms.append((key, value))
        if problems:
            raise forms.ValidationError(problems)
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
        for name in repeated_parameters(self.data, self.fields):
            self.add_error(name, REPEATED)
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
            origin=data.get("origin") or "",
            since=data.get("since"),
            until=data.get("until"),
            text=data.get("q") or "",
            metadata=data.get("meta") or (),
            agents_in=self.agents_q,
        )

    def filter_query(self, **changes) -> str:
        """The query string of the current filter (no cursor), with ``changes`` applied."""
        params = {name: self.data.get(name, "") for name in FILTER_FIELDS}
        params.update(changes)
        return urlencode({k: v for k, v in params.items() if v})
