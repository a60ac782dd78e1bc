"""Arbitrary query strings on the history page, the export and the audit API: a 200, or a 400 naming the
parameters it refuses, never a 5xx, and the same refusal from each.

Hypothesis builds the query strings from the filter names (and random ones) with values drawn from what
breaks parsers: unicode, NUL, numbers JSON cannot hold, 64-bit edges, dates at the ends of the calendar
and of the time zones, forged cursors, invalid UTF-8 and broken percent-encoding. Derandomized and
without an example database, so every run tries the same cases. test_bad_input.py keeps the cases it
is built around as plain regression tests; the live stream (async, so one thread per request) is there.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from urllib.parse import quote

from django.conf import settings
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase as HypothesisTestCase

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.filters import FILTER_FIELDS
from events_app.services import audit_token_issue
from tests.server.events_app.helpers import NOW, bulk_events, make_user

HISTORY = "/audit/events/"
EXPORT = "/audit/events/export.jsonl"
API = "/api/v1/audit/events"
# About 10 s on either database (three requests an example).
EXAMPLES = 250
FORM_FIELDS = (*FILTER_FIELDS, "cursor")
NAMES = (*FORM_FIELDS, "limit", "last_event_id")
API_ONLY = {"limit", "query"}

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)  # NUL included
EDGES = st.sampled_from([
    "", " ", "\x00", "NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "5e-324", "-0", "0e0",
    "1E308", "1e309", str(2**63 - 1), str(2**63), str(-(2**63)), str(-(2**63) - 1), "9" * 499, "null", "true",
    '"NaN"', '"\\u0000"', '"\\ud800"', '"\\ud83d\\ude00"', "[1]", '{"a": NaN}', "[" * 400, "\ufffd", "²",
])
INT64_EDGE = st.integers(min_value=2**63 - 3, max_value=2**63 + 3)
NUMBER = st.one_of(
    st.integers().map(str),
    INT64_EDGE.map(str),
    INT64_EDGE.map(lambda n: str(-n)),
    st.floats().map(json.dumps),  # NaN, Infinity, -Infinity as json.dumps writes them
    st.floats().map(repr),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),  # 1E+400, sNaN, -0E-9
)
OFFSET = st.sampled_from(["", "Z", "+00:00", "+14:00", "-12:00", "+05:30", "-23:59", "+24:00", "+99:99", "+1400"])
CALENDAR_END = st.sampled_from([datetime.min, datetime.max, datetime(1, 1, 1, 13, 59), datetime(9999, 12, 31, 12)])
MOMENT = st.builds(lambda moment, separator, offset: moment.isoformat(sep=separator) + offset,
                   st.one_of(st.datetimes(), CALENDAR_END), st.sampled_from(["T", " "]), OFFSET)
DATE = st.one_of(MOMENT, st.dates().map(str))
CURSOR = st.one_of(
    st.builds(lambda stamp, event_id: f"{stamp}|{event_id}".encode(), DATE, st.one_of(st.uuids().map(str), TEXT)),
    st.binary(max_size=60),
).map(lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="))
CHOICE = st.sampled_from([*EventType.values, *EventSubtype.values, *Severity.values, *Component.values])
# Keys SQLite's JSON paths could misread (an integer is an array index there, "-1" a path error).
TRICKY_KEY = st.sampled_from(["-1", "0", "1_0", "x", "client_ip", "a__b", 'a"b', "contains", "$", "a.b", "[0]"])
META_KEY = st.one_of(TRICKY_KEY, st.integers().map(str), TEXT.filter(
    lambda key: key.strip() and "=" not in key and "," not in key))
META = st.lists(st.tuples(META_KEY, st.one_of(EDGES, NUMBER, TEXT, DATE)), min_size=1, max_size=3).map(
    lambda terms: ",".join(f"{key}={value}" for key, value in terms))
VALUE = st.one_of(TEXT, EDGES, NUMBER, DATE, CURSOR, META, CHOICE, st.uuids().map(str))
PAIR = st.one_of(  # mostly each parameter with the values meant to break it, then anything anywhere
    st.tuples(st.just("meta"), META),
    st.tuples(st.sampled_from(["since", "until"]), DATE),
    st.tuples(st.just("cursor"), CURSOR),
    st.tuples(st.sampled_from(NAMES), VALUE),
    st.tuples(TEXT, VALUE),
).map(lambda pair: f"{quote(pair[0], safe='')}={quote(pair[1], safe='')}")
RAW = st.one_of(  # what no encoder writes: invalid UTF-8, broken escapes, raw Latin-1
    st.builds(lambda name, data: name + "=" + "".join(f"%{byte:02X}" for byte in data),
              st.sampled_from(NAMES), st.binary(max_size=8)),
    st.sampled_from(["%", "%zz", "%0", "&&", "=", "==", "meta=%E2%82", "q=%C0%AF", "since=%ED%A0%80", "meta"]),
    st.text(st.characters(max_codepoint=255), max_size=12),
)
QUERY = st.lists(st.one_of(PAIR, PAIR, RAW), max_size=4).map("&".join)


def page_errors(response) -> set[str]:
    listing = re.search(r'<ul class="errors" id="filter-errors">(.*?)</ul>', response.content.decode(), re.S)
    assert listing, "a 400 page without the list of refused parameters"
    return set(re.findall(r"<code>([^<]+)</code>", listing.group(1)))


class TestArbitraryQueryStrings(HypothesisTestCase):
    @classmethod
    def setUpTestData(cls):
        auditor = make_user("audrey", auditor=True)
        _, cls.secret = audit_token_issue(user=make_user("siem", auditor=True), label="fuzz", issued_by="root")
        bulk_events(3, start=NOW, metadata={"x": 1, "client_ip": "10.0.0.5", "-1": "NaN", "big": 2**63 - 1})
        client = Client()
        client.force_login(auditor)  # one session for every example (each example's client is new)
        cls.session_id = client.cookies[settings.SESSION_COOKIE_NAME].value

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(query=QUERY)
    def test_a_200_or_a_400_naming_the_parameters_never_a_5xx(self, query):
        self.client.cookies[settings.SESSION_COOKIE_NAME] = self.session_id
        page = self.client.get(HISTORY, QUERY_STRING=query)
        export = self.client.get(EXPORT, QUERY_STRING=query)
        api = self.client.get(API, QUERY_STRING=query, HTTP_AUTHORIZATION=f"Bearer {self.secret}")

        assert page.status_code in (200, 400), page.status_code
        assert export.status_code == page.status_code
        assert api.status_code in (200, 400), api.content
        if export.status_code == 200:
            b"".join(export.streaming_content)  # the export's query runs while it streams
        if page.status_code == 400:
            refused = page_errors(page)
            assert refused and refused <= set(FORM_FIELDS)
            body = export.content.decode()
            assert body.startswith("Invalid request: ") and all(f"{name}: " in body for name in refused)
        else:
            refused = set()
        if api.status_code == 400:
            error = api.json()["error"]
            assert error["code"] == "invalid" and error["fields"]
            assert set(error["fields"]) <= set(NAMES) | API_ONLY
            assert set(error["fields"]) - API_ONLY == refused  # one form, one refusal
        else:
            assert not refused
