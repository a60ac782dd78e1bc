"""The auditor's pages: history (filtered, keyset-paginated), one event's detail, exports."""

from __future__ import annotations

import json
import re

from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Max
from django.http import HttpResponseBadRequest, HttpResponseNotAllowed, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_safe

from events_app.access import VIEW_EVENTS, auditor_required, can_read_events
from events_app.filters import REPEATED, EventFilterForm, repeated_parameters
from events_app.models import SystemEvent
from events_app.querysets import TEXT_SCAN_WINDOW, EventFilter, Page
from events_app.rendering import csv_lines, jsonl_lines
from events_app.services import event_export_record
from events_app.stream import event_stream, event_stream_sync
from redflag.access import agents_q

PAGE_SIZE = 50
EXPORT_BATCH = 2000
EXPORT_FORMATS = {
    "csv": ("text/csv; charset=utf-8", csv_lines),
    "jsonl": ("application/x-ndjson", jsonl_lines),
}
# A stream resumes after this seq: digits only (str.isdigit() would take "²", which int() refuses).
LAST_EVENT_ID = re.compile(r"[0-9]{1,18}")
# Metadata keys that name another object, and the admin page that shows it.
RELATED_ADMIN_PAGES = (
    ("command_id", "admin:agents_app_command_change", "Command"),
    ("token_id", "admin:tokens_app_registrationtoken_change", "Registration token"),
    ("bulk_operation_id", "admin:agents_app_bulkoperation_change", "Bulk operation"),
)


@require_safe
@auditor_required
def history(request):
    """Newest first, 50 a page; ``cursor`` continues after the last row of the previous page.

    Queries: the session, the user, their permissions, and one page query (LIMIT 51) — the same
    on page 1 and page 500 (tests/server/events_app/test_views.py counts them). The first page, which
    goes live, also reads the newest seq (one index lookup), so the stream starts exactly where the
    rendered page ends. A text filter adds one: the edge of its scan window (SystemEventQuerySet.search_page).
    """
    form = EventFilterForm(request.GET).within(agents_q(request.user, VIEW_EVENTS))
    page, stream_from = Page([], None), None
    is_first_page = not request.GET.get("cursor")
    if form.is_valid():
        if is_first_page:
            # Read before the page: an event committed in between is then on the page, or streamed,
            # or both (the page's script skips rows it already shows) — never neither.
            stream_from = SystemEvent.objects.aggregate(top=Max("seq"))["top"] or 0
        page = SystemEvent.objects.search_page(form.spec(), form.cleaned_data["cursor"] or None, PAGE_SIZE)
    next_cursor = page.next_cursor
    query = form.filter_query()
    stream_url = ""
    if stream_from is not None:
        stream_url = reverse("events:stream") + "?" + form.filter_query(last_event_id=stream_from)
    return render(request, "events/history.html", {
        **page_context(request, "Event history"),
        "form": form,
        "events": page.rows,
        "searched_back_to": page.searched_back_to,
        "text_scan_window": TEXT_SCAN_WINDOW,
        "filter_query": query,
        "next_query": form.filter_query(cursor=next_cursor) if next_cursor else "",
        "is_first_page": is_first_page,
        "stream_url": stream_url,
    }, status=200 if form.is_valid() else 400)


@require_safe
@auditor_required
def detail(request, event_id):
    # Outside the reader's agents an event is not found (redflag.access), as if it did not exist.
    readable = SystemEvent.objects.matching(EventFilter(agents_in=agents_q(request.user, VIEW_EVENTS)))
    event = get_object_or_404(readable, pk=event_id)
    related = []
    if event.agent_id:
        related.append(("Agent", event.hostname or str(event.agent_id),
                        _admin_url("admin:agents_app_agent_change", event.agent_id)))
    for key, url_name, label in RELATED_ADMIN_PAGES:
        value = event.metadata.get(key) if isinstance(event.metadata, dict) else None
        if value:
            related.append((label, str(value), _admin_url(url_name, value)))
    return render(request, "events/detail.html", {
        **page_context(request, f"Event {event.id}"),
        "event": event,
        "metadata_pretty": json.dumps(event.metadata, indent=2, sort_keys=True, ensure_ascii=False),
        "related": related,
    })


def page_context(request, title: str) -> dict:
    """The admin site's context (header, navigation, user links): the auditor's pages share its frame."""
    return {**admin.site.each_context(request), "title": title}


def _admin_url(url_name: str, object_id) -> str:
    try:
        return reverse(url_name, args=[object_id])
    except NoReverseMatch:
        return ""


def bad_request(errors: dict[str, list[str]]) -> HttpResponseBadRequest:
    """A 400 for a reader that answers in plain text (export, stream): every refused parameter, named."""
    return HttpResponseBadRequest("Invalid request: " + "; ".join(
        f"{name}: {' '.join(messages)}" for name, messages in errors.items()), content_type="text/plain")


@require_safe
@auditor_required
def export(request, export_format: str):
    """The current filter, streamed: keyset batches of EXPORT_BATCH rows, constant memory."""
    form = EventFilterForm(request.GET).within(agents_q(request.user, VIEW_EVENTS))
    errors = {} if form.is_valid() else dict(form.errors)
    if export_format not in EXPORT_FORMATS:
        errors["format"] = [f"Export as one of: {', '.join(EXPORT_FORMATS)}."]
    if errors:
        return bad_request(errors)
    spec = form.spec()
    content_type, lines = EXPORT_FORMATS[export_format]
    event_export_record(actor=request.user.get_username(), export_format=export_format,
                        filters=spec.as_dict(), via="history page")
    rows = SystemEvent.objects.matching(spec).iterate_keyset(batch_size=EXPORT_BATCH)
    response = StreamingHttpResponse(lines(rows), content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="redflag-events-{stamp}.{export_format}"'
    response["Cache-Control"] = "no-store"
    return response


async def stream(request):
    """Server-Sent Events of new events matching the filter (see events_app.stream).

    Async, so an idle stream costs a coroutine, not a worker thread, under uvicorn. Resumes after
    ``Last-Event-ID`` (the header EventSource sends on reconnect) or ``?last_event_id=``; without
    either, starts from now.
    """
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    user = await request.auser()
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path(), login_url="admin:login")
    if not await sync_to_async(can_read_events)(user):
        raise PermissionDenied
    form = EventFilterForm(request.GET).within(await sync_to_async(agents_q)(user, VIEW_EVENTS))
    errors = {} if form.is_valid() else dict(form.errors)
    id_source = "Last-Event-ID" if request.headers.get("Last-Event-ID") else "last_event_id"
    raw_id = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or ""
    if raw_id and not LAST_EVENT_ID.fullmatch(raw_id):
        errors[id_source] = ["Must be the id of an event this stream sent: digits, at most 18."]
    if repeated_parameters(request.GET, ["last_event_id"]):
        errors["last_event_id"] = [REPEATED]
    if errors:
        return bad_request(errors)
    start_after = int(raw_id) if raw_id else None
    if isinstance(request, ASGIRequest):
        body = event_stream(form.spec(), start_after)
    else:  # WSGI (runserver, the tests' live server) would buffer an async body to its end
        body = event_stream_sync(form.spec(), start_after)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
    return response
