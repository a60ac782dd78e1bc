"""Bad auditor input is a 400 naming the parameter, on every reader of the filter, never a 5xx.

The history page answers an HTML 400 listing each refused parameter (``#filter-errors``); the export and
the live stream a plain-text 400 (``Invalid request: name: message``); the audit API the JSON error body
``{"error": {"code": "invalid", "message": ..., "fields": {name: [...]}}}``.

Each case below once reached the database and failed there: NaN, Infinity or 1e400 in a metadata filter
(SQLite "malformed JSON", PostgreSQL "invalid input syntax for type json"), a moment that leaves years
1-9999 once in UTC (OverflowError in the adapter), a forged cursor doing the same, NUL or an unpaired
surrogate smuggled in as a JSON escape (PostgreSQL refuses both in jsonb), a key SQLite read as a negative
array index. test_filter_fuzz.py throws arbitrary query strings at the same readers.
"""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client

from events_app.filters import EventFilterForm
from events_app.models import SystemEvent
from tests.server.events_app.helpers import NOW, bulk_events, make_user
from tests.server.events_app.test_stream import in_thread

HISTORY = "/audit/events/"
EXPORT = "/audit/events/export.csv"
STREAM = "/audit/events/stream"
API = "/api/v1/audit/events"
EVENT_ID = "12345678-1234-5678-1234-567812345678"
INT64_MAX = 2**63 - 1


def forged_cursor(stamp: str, event_id: str = EVENT_ID) -> str:
    """A cursor as encode_cursor writes one, around any text."""
    return base64.urlsafe_b64encode(f"{stamp}|{event_id}".encode()).decode().rstrip("=")


REFUSED = [  # (query string, the parameter the 400 names)
    # Numbers JSON cannot hold, or that the two databases would compare differently.
    ("meta=x%3DNaN", "meta"),
    ("meta=x%3DInfinity", "meta"),
    ("meta=x%3D-Infinity", "meta"),
    ("meta=x%3D1e400", "meta"),
    ("meta=x%3D-1e400", "meta"),
    ("meta=x%3D1e-400", "meta"),  # not 0, but 0.0 as a float: it would match 0
    ("meta=x%3D" + "9" * 400 + ".5", "meta"),
    ("meta=x%3D9223372036854775808", "meta"),  # 2**63
    ("meta=x%3D-9223372036854775809", "meta"),
    ("meta=x%3D" + "9" * 60, "meta"),
    ("meta=ok%3D1,x%3DNaN", "meta"),
    # What PostgreSQL refuses in text and jsonb, raw or as a JSON escape.
    ("meta=x%3D%22%5Cu0000%22", "meta"),  # x="\u0000"
    ("meta=x%3D%22%5Cud800%22", "meta"),  # x="\ud800"
    ("meta=x%00%3D1", "meta"),
    ("meta=x%3D1%00", "meta"),
    ("q=%00", "q"),
    ("agent=%00", "agent"),
    ("event_type=%00", "event_type"),
    ("since=2026-01-01T00:00:00%00", "since"),
    ("cursor=%00", "cursor"),
    # Moments outside years 1-9999 once in UTC; a malformed offset.
    ("until=0001-01-01T00:00:00%2B14:00", "until"),
    ("since=0001-01-01T00:00:00%2B14:00", "since"),
    ("until=9999-12-31T23:59:59-12:00", "until"),
    ("since=9999-12-31T23:59:59.999999-00:01", "since"),
    ("since=2026-01-01T00:00:00%2B24:00", "since"),
    # Forged and malformed cursors.
    ("cursor=" + forged_cursor("0001-01-01T00:00:00+14:00"), "cursor"),
    ("cursor=" + forged_cursor("9999-12-31T23:59:59-12:00"), "cursor"),
    ("cursor=" + forged_cursor("2026-01-01T00:00:00"), "cursor"),  # naive
    ("cursor=" + forged_cursor("2026-01-01T00:00:00+00:00", "not-a-uuid"), "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"\xff\xfe|\x00").decode(), "cursor"),
    ("cursor=%25%25%25", "cursor"),
    # Very long values.
    ("q=" + "a" * 201, "q"),
    ("meta=" + "k%3Dv," * 130, "meta"),
    ("meta=" + ",".join(f"k{i}%3D{i}" for i in range(6)), "meta"),
    ("since=" + "1" * 65, "since"),
    ("agent=" + "1" * 5000, "agent"),
    ("cursor=" + "A" * 201, "cursor"),
    # Invalid UTF-8 (decoded as U+FFFD) where only exact values are valid; broken percent-encoding.
    ("since=%ff", "since"),
    ("agent=%C3%28", "agent"),
    ("severity=%ED%A0%80", "severity"),
    ("meta=%zz", "meta"),
    # Repeated parameters: a form reads only the last one, so a filter would be dropped silently.
    ("severity=info&severity=info", "severity"),
    ("meta=a%3D1&meta=b%3D2", "meta"),
    ("cursor=a&cursor=b", "cursor"),
]
CASES = [pytest.param(query, name, id=f"{name}-{index}") for index, (query, name) in enumerate(REFUSED)]


def page_errors(response) -> set[str]:
    """The parameters the history page names in its error list."""
    listing = re.search(r'<ul class="errors" id="filter-errors">(.*?)</ul>', response.content.decode(), re.S)
    return set(re.findall(r"<code>([^<]+)</code>", listing.group(1))) if listing else set()


def api_get(client, secret: str, query: str):
    return client.get(f"{API}?{query}", HTTP_AUTHORIZATION=f"Bearer {secret}")


@pytest.mark.parametrize("query, name", CASES)
def test_history_page_answers_400_naming_the_parameter(db, auditor_client, query, name):
    bulk_events(2, metadata={"x": 1})
    response = auditor_client.get(f"{HISTORY}?{query}")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert name in page_errors(response)
    assert 'data-id="' not in response.content.decode()  # no rows of a filter that was refused


@pytest.mark.parametrize("query, name", CASES)
def test_export_answers_400_naming_the_parameter_and_records_no_export(db, auditor_client, query, name):
    response = auditor_client.get(f"{EXPORT}?{query}")
    assert response.status_code == 400
    body = response.content.decode()
    assert body.startswith("Invalid request: ") and f"{name}: " in body
    assert not SystemEvent.objects.filter(event_type="audit_export").exists()


@pytest.mark.parametrize("query, name", CASES)
def test_audit_api_answers_the_json_error_naming_the_parameter(auditor_token, client, query, name):
    response = api_get(client, auditor_token[1], query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert name in error["fields"] and error["fields"][name]
    assert error["message"].startswith("Invalid input — ") and f"{name}: " in error["message"]


@pytest.mark.django_db(transaction=True)
def test_live_stream_answers_400_naming_the_parameter(client):
    """One test for every case: the stream is async, so each request runs in a thread of its own
    (see test_stream.in_thread), which sees only committed rows."""
    client.force_login(make_user("audrey", auditor=True))

    def get(query: str, **headers):
        return in_thread(lambda: client.get(f"{STREAM}?{query}", **headers))

    cases = [*REFUSED,
             ("last_event_id=%C2%B2", "last_event_id"),  # "²".isdigit() is True; int("²") raised
             ("last_event_id=-1", "last_event_id"),
             ("last_event_id=" + "9" * 19, "last_event_id"),
             ("last_event_id=1&last_event_id=2", "last_event_id")]
    for query, name in cases:
        response = get(query)
        assert response.status_code == 400, query
        assert response["Content-Type"].startswith("text/plain")  # an answer, not a stream
        assert response.content.decode().startswith("Invalid request: ") and f"{name}: " in response.content.decode()
    for header in ("abc", "\u00b2", "1e3", "9" * 19):
        response = get("", HTTP_LAST_EVENT_ID=header)
        assert response.status_code == 400
        assert response.content.decode().startswith("Invalid request: Last-Event-ID: ")


def test_a_refusal_names_every_bad_parameter(auditor_token, client, auditor_client):
    query = "meta=x%3DNaN&until=0001-01-01T00:00:00%2B14:00&severity=loud&limit=0"
    fields = api_get(client, auditor_token[1], query).json()["error"]["fields"]
    assert set(fields) == {"meta", "until", "severity", "limit"}
    assert fields["meta"] == ['x=NaN: the value is a number out of range (NaN, Infinity, beyond ±1.8e308 or too close '
                              'to 0); write x="NaN" to match it as text.']
    assert fields["until"] == ["Out of range: years 1 to 9999 once converted to UTC."]
    assert page_errors(auditor_client.get(f"{HISTORY}?{query}")) == {"meta", "until", "severity"}


def test_repeated_limit_is_refused_by_the_api(auditor_token, client):
    response = api_get(client, auditor_token[1], "limit=10&limit=500")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"limit": ["Given more than once; give it once."]}


def test_too_many_parameters_is_the_api_error_body(auditor_token, client):
    query = "&".join(f"p{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    response = api_get(client, auditor_token[1], query)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid" and "query" in response.json()["error"]["fields"]


def test_unknown_parameters_are_ignored_as_before(db, auditor_token, client, auditor_client):
    bulk_events(1, message="kept")
    query = "bogus=1&Severity=loud&%00=%00"
    assert auditor_client.get(f"{HISTORY}?{query}").status_code == 200
    assert auditor_client.get(f"{EXPORT}?{query}").status_code == 200
    response = api_get(client, auditor_token[1], query)
    assert response.status_code == 200 and "kept" in {row["message"] for row in response.json()["results"]}


def test_invalid_utf8_in_free_text_is_searched_as_the_replacement_character(db, auditor_token, client,
                                                                             auditor_client):
    """Django decodes the query string with errors="replace": ``q=%ff`` searches for U+FFFD."""
    bulk_events(1, message="bad byte \ufffd here")
    bulk_events(1, message="clean")
    response = api_get(client, auditor_token[1], "q=%ff")
    assert response.status_code == 200
    assert [row["message"] for row in response.json()["results"]] == ["bad byte \ufffd here"]
    assert auditor_client.get(f"{HISTORY}?q=%ff&meta=%ff%3D%fe").status_code == 200


# --- what is still accepted, and means the same on both databases ---------------------------------------


def messages(client, secret: str, query: str) -> set[str]:
    response = api_get(client, secret, query)
    assert response.status_code == 200, response.content
    return {row["message"] for row in response.json()["results"] if row["event_type"] == "agent_checkin"}


@pytest.mark.parametrize("query, included", [
    ("since=2026-03-14T12:00:00", True),  # naive: UTC
    ("since=2026-03-14%2012:00", True),
    ("since=2026-03-14T12:00:00Z", True),
    ("since=2026-03-14T12:00:00-00:01", False),  # 12:01 UTC
    ("since=2026-03-14T12:00:00%2B14:00", True),  # 22:00 UTC the day before
    ("until=2026-03-14T12:00:00", False),  # exclusive
    ("until=2026-03-15T02:00:00.000001%2B14:00", True),  # 12:00:00.000001 UTC
    ("since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59.999999Z", True),
    ("since=0001-01-01T00:00:00-14:00&until=9999-12-31T23:59:59%2B14:00", True),  # in range once in UTC
    ("until=0001-01-01", False),
    ("since=9999-12-31", False),
])
def test_naive_and_aware_times(auditor_token, client, query, included):
    bulk_events(1, start=NOW, message="at noon UTC")
    assert messages(client, auditor_token[1], query) == ({"at noon UTC"} if included else set())


@pytest.mark.parametrize("term, expected", [
    ("big%3D9223372036854775807", {"int64 max"}),
    ("small%3D-9223372036854775808", {"int64 min"}),
    ("f%3D1e308", {"float max"}),
    ("f%3D1E%2B308", {"float max"}),
    ("s%3D%22NaN%22", {"text NaN"}),  # quoted: the text, as the 400 for s=NaN suggests
    ("s%3D%22Infinity%22", set()),
    ("-1%3D1", {"key -1"}),  # an object key, not SQLite's array index (a JSON path error)
    ("0%3Dzero", {"key 0"}),
    ("1_0%3D1", set()),  # not key "10"
    ("zero%3D-0", {"zero"}),
    ("zero%3D0.0", {"zero"}),
])
def test_metadata_values_at_the_edges_match_on_both_databases(auditor_token, client, term, expected):
    for message, metadata in [("int64 max", {"big": INT64_MAX}), ("int64 min", {"small": -INT64_MAX - 1}),
                              ("float max", {"f": 1e308}), ("text NaN", {"s": "NaN"}), ("key -1", {"-1": 1}),
                              ("key 0", {"0": "zero"}), ("zero", {"zero": 0}), ("key 10", {"10": 1})]:
        bulk_events(1, message=message, metadata=metadata, start=NOW - timedelta(minutes=len(message)))
    assert messages(client, auditor_token[1], f"meta={term}") == expected


def test_the_stream_query_of_an_extreme_filter_runs(db):
    form = EventFilterForm({"since": "0001-01-01T00:00:00-14:00", "meta": "big=9223372036854775807"})
    assert form.is_valid(), form.errors
    assert list(SystemEvent.objects.matching(form.spec()).filter(seq__gt=0)) == []


def test_a_logged_out_request_with_bad_input_still_gets_the_login_redirect(db):
    response = Client().get(f"{HISTORY}?meta=x%3DNaN")
    assert response.status_code == 302  # who may read is judged before what is asked
