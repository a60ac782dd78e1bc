"""The updates report's fast row check (agents_app.api.serializers.plain_reported_update) against DRF.

A report's rows are checked without DRF's per-field machinery when they are plainly valid; every other row goes
through ReportedUpdateSerializer. These tests hold the two equal: what the fast check accepts, DRF accepts with
the same validated data, and a list of rows gives the same data and the same errors either way.
"""

from __future__ import annotations

import itertools

from rest_framework import serializers

from agents_app.api.serializers import (
    BIGINT_MAX,
    ReportedUpdateListSerializer,
    ReportedUpdateSerializer,
    plain_reported_update,
)

VALID = {"name": "openssl", "current_version": "3.0.15-1~deb12u1", "available_version": "3.0.16-1~deb12u1",
         "severity": "important", "is_security": True, "repository": "Debian-Security/bookworm-security",
         "size_bytes": 2_077_432, "cve_ids": ["CVE-2024-13176"], "kb_ids": [], "metadata": {"arch": "amd64"}}

# Values a row's fields could hold: well-formed, at and past each limit, and of every other JSON type.
TEXTS = ["", " ", "x" * 32, "x" * 33, "x" * 255, "x" * 256, "é", "Ünïcödé 😀", "a\x00b", "\ud800", "\udfff"]
OTHERS = [None, True, False, 0, 1, -1, 12.5, 2**63 - 1, 2**63, 2**64, "true", "false", "1", "0", "12", "yes",
          "critical", "moderate", "unknown", "urgent", [], ["CVE-1"], [""], ["x" * 33], [1], [None], ["a\x00"],
          ["x"] * 100, ["x"] * 101, ["x"] * 500, ["x"] * 501, {}, {"arch": "amd64"}, {"source": None}, {"1": [{}]}]
MISSING = object()


def variants():
    """Each field of VALID replaced by every value above, or left out; then pairs of fields changed at once."""
    for field in VALID:
        for value in (*TEXTS, *OTHERS, MISSING):
            yield {key: v for key, v in {**VALID, field: value}.items() if v is not MISSING}
    changes = [("is_security", "true"), ("size_bytes", None), ("severity", "low"), ("kb_ids", "KB1"),
               ("metadata", None), ("name", 7), ("cve_ids", [])]
    for (first, one), (second, two) in itertools.combinations(changes, 2):
        yield {**VALID, first: one, second: two}
    yield {**VALID, "unknown": "ignored", "status": "installed"}
    yield {"name": "minimal", "current_version": "", "available_version": ""}
    yield from ([VALID], "openssl", 1, None)


def drf_only(data):
    """The rows through DRF alone: a plain ListSerializer of the same child, without the fast check."""
    return serializers.ListSerializer(child=ReportedUpdateSerializer(), data=data)


def test_a_row_the_fast_check_accepts_is_one_drf_accepts_with_the_same_data():
    accepted = 0
    for row in variants():
        fast = plain_reported_update(row)
        if fast is None:
            continue  # DRF judges it (the next test compares what the view sees)
        serializer = ReportedUpdateSerializer(data=row)
        assert serializer.is_valid(), (row, serializer.errors)
        assert fast == dict(serializer.validated_data), row
        assert list(fast) == list(serializer.validated_data), row  # the same keys, no extra one stored
        accepted += 1
    assert accepted > 50


def test_a_list_of_rows_gives_the_same_data_and_the_same_errors_as_drf_alone():
    rows = list(variants())
    fast = ReportedUpdateSerializer(many=True, data=rows)
    assert isinstance(fast, ReportedUpdateListSerializer)
    drf = drf_only(rows)
    assert fast.is_valid() is drf.is_valid() is False
    assert fast.errors == drf.errors
    valid_rows = [row for row in rows if ReportedUpdateSerializer(data=row).is_valid()]
    assert len(valid_rows) > 50
    fast, drf = ReportedUpdateSerializer(many=True, data=valid_rows), drf_only(valid_rows)
    assert fast.is_valid() and drf.is_valid()
    assert [dict(row) for row in fast.validated_data] == [dict(row) for row in drf.validated_data]


def test_the_fast_check_takes_the_rows_an_agent_sends():
    """The scanners' rows (JSON types as the agent writes them) never need the slow path."""
    assert plain_reported_update(VALID) is not None
    assert plain_reported_update({**VALID, "size_bytes": None, "cve_ids": ["CVE-1"] * 500, "kb_ids": ["KB1"] * 100,
                                  "size_bytes_extra": 0, "metadata": {"nested": {"a": [1, 2.5, None]}}}) is not None
    assert plain_reported_update({**VALID, "size_bytes": BIGINT_MAX, "name": "x" * 255}) is not None
