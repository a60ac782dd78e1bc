"""Small renderers and helpers the fleet admin pages share."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from agents_app.choices import CommandStatus, UpdateSeverity
from agents_app.models import Agent, Command, PackageUpdate
from agents_app.services.heartbeat import next_poll_expected

# Statuses the dashboard and the "failed in the last 24 h" filter count as failures.
FAILED_COMMAND_STATUSES = (CommandStatus.FAILED, CommandStatus.TIMED_OUT)
RECENT_FAILURE_WINDOW = timedelta(hours=24)
RECENT_ROWS = 10  # commands and events on the agent page
UPDATES_ON_AGENT_PAGE = 50
COMMANDS_ON_OPERATION_PAGE = 200

GREEN, GREY, RED, BLUE, ORANGE, AMBER = "#2e7d32", "#757575", "#c62828", "#1565c0", "#ef6c00", "#f9a825"
SEVERITY_COLOURS = {
    UpdateSeverity.CRITICAL: "#b71c1c",
    UpdateSeverity.IMPORTANT: ORANGE,
    UpdateSeverity.MODERATE: AMBER,
    UpdateSeverity.LOW: BLUE,
    UpdateSeverity.UNKNOWN: GREY,
}
COMMAND_STATUS_COLOURS = {
    CommandStatus.PENDING: GREY,
    CommandStatus.SENT: BLUE,
    CommandStatus.RUNNING: BLUE,
    CommandStatus.SUCCEEDED: GREEN,
    CommandStatus.FAILED: RED,
    CommandStatus.TIMED_OUT: ORANGE,
    CommandStatus.CANCELLED: GREY,
}


# --- small renderers ---------------------------------------------------------

def badge(label: str, colour: str) -> SafeString:
    return format_html(
        '<span class="rf-badge" style="color:#fff;background:{};padding:2px 8px;border-radius:8px;'
        'white-space:nowrap">{}</span>', colour, label,
    )


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'2 min ago': the coarsest unit that is not zero."""
    if moment is None:
        return "never"
    seconds = int(((now or timezone.now()) - moment).total_seconds())
    if seconds < 10:
        return "just now"  # includes a small clock skew into the future
    for unit_seconds, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= unit_seconds:
            return f"{seconds // unit_seconds} {unit} ago"
    return f"{seconds} s ago"


def next_poll_label(agent: Agent, now: datetime | None = None) -> SafeString:
    """When the agent is expected to check in next (and so pick up what waits for it): "expected in 4 min",
    "expected any moment", "overdue since 12 min", with heartbeat mode named; the UTC time on hover."""
    now = now or timezone.now()
    earliest, latest, heartbeat = next_poll_expected(agent, now)
    if earliest is None:
        return neutral("at its first check-in")
    mode = " (heartbeat mode: every 5 s)" if heartbeat else ""
    title = f"{earliest:%Y-%m-%d %H:%M:%S} UTC"
    if now > latest:
        return format_html('<span class="rf-next-poll rf-overdue" title="{}" style="color:{}">overdue since {}</span>'
                           '{}', title, RED, ago(latest, now).removesuffix(" ago"), mode)
    seconds = int((earliest - now).total_seconds())
    if seconds <= 0:
        text = "expected any moment"
    else:
        unit_seconds, unit = next(((size, name) for size, name in ((86400, "d"), (3600, "h"), (60, "min"))
                                   if seconds >= size), (1, "s"))
        text = f"expected in {seconds // unit_seconds} {unit}"
    return format_html('<span class="rf-next-poll" title="{}">{}</span>{}', title, text, mode)


def neutral(text: str = "—") -> SafeString:
    """A normal state in a list (no reboot needed, not a security fix): grey, never a red ✗."""
    return format_html('<span class="rf-neutral">{}</span>', text)


def when(moment: datetime | None) -> SafeString:
    """A list's time column: "2 h ago", the exact UTC time on hover (narrow enough for a 1366 px screen)."""
    if moment is None:
        return neutral("never")
    return format_html('<span class="rf-when" title="{}">{}</span>', f"{moment:%Y-%m-%d %H:%M:%S} UTC", ago(moment))


def usage_bar(percent: float | None, label: str = "") -> SafeString:
    """A plain-CSS usage bar: green, amber above 75 %, red above 90 %."""
    percent = max(0.0, min(100.0, float(percent or 0)))
    colour = RED if percent >= 90 else AMBER if percent >= 75 else GREEN
    return format_html(
        '<span class="rf-bar" title="{}" style="display:inline-block;width:160px;height:10px;'
        'background:var(--darkened-bg,#eee);border:1px solid var(--hairline-color,#ccc);border-radius:3px;'
        'vertical-align:middle;overflow:hidden"><span style="display:block;height:100%;width:{}%;'
        'background:{}"></span></span> {}',
        label or f"{percent:.0f} %", f"{percent:.1f}", colour, label or f"{percent:.0f} %",
    )


def pretty_json(value: Any) -> SafeString:
    return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>',
                       json.dumps(value, indent=2, sort_keys=True, default=str))


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], empty: str) -> SafeString:
    """A small read-only table for the sections of a change page (cells are escaped unless safe)."""
    rows = list(rows)
    if not rows:
        return format_html("<p>{}</p>", empty)
    head = format_html_join("", "<th>{}</th>", ((header,) for header in headers))
    body = format_html_join(
        "", "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows),
    )
    return format_html('<table class="rf-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', head, body)


def admin_link(obj, label: Any) -> SafeString:
    meta = obj._meta
    return format_html('<a href="{}">{}</a>', reverse(f"admin:{meta.app_label}_{meta.model_name}_change",
                                                       args=[obj.pk]), label)


def changelist_url(model, **query) -> str:
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return f"{url}?{urlencode(query)}" if query else url


def actor_of(request) -> str:
    return request.user.get_username()


class TagsField(forms.CharField):
    """An agent's tags as one comma-separated line ("production, eu-west"), cleaned to the list the model's
    JSON field stores: blanks and repeats dropped, order kept."""

    MAX_TAGS = 50
    MAX_LENGTH = 64

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", "Comma-separated, e.g. production, eu-west.")
        widget = forms.TextInput(attrs={"size": 60, "placeholder": "production, eu-west"})
        super().__init__(required=False, widget=widget, **kwargs)

    def prepare_value(self, value):
        return ", ".join(str(tag) for tag in value) if isinstance(value, (list, tuple)) else value

    def to_python(self, value) -> list[str]:
        tags = []
        for tag in (part.strip() for part in (super().to_python(value) or "").split(",")):
            if tag and tag not in tags:
                tags.append(tag)
        return tags

    def validate(self, value: list[str]) -> None:
        problems = [f"{tag[:20]!r} is longer than {self.MAX_LENGTH} characters" for tag in value
                    if len(tag) > self.MAX_LENGTH]
        problems += [f"{tag[:20]!r} holds a control character" for tag in value
                     if any(not character.isprintable() for character in tag)]
        if len(value) > self.MAX_TAGS:
            problems.append(f"at most {self.MAX_TAGS} tags")
        if problems:
            raise forms.ValidationError("; ".join(problems).capitalize() + ".")


class ReadOnlyDetailMixin:
    """Rows written only by the system: list and actions yes, add / edit / delete by hand no.

    has_change_permission(obj=None) stays true so that change-permission actions
    run; a specific object is shown view-only.
    """

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)


def command_badge(command: Command) -> SafeString:
    return badge(command.get_status_display(), COMMAND_STATUS_COLOURS.get(command.status, GREY))


def severity_badge(update: PackageUpdate) -> SafeString:
    return badge(update.get_severity_display(), SEVERITY_COLOURS.get(update.severity, GREY))
