"""The exports and the read API carry the same exposure fields as the admin pages."""

from __future__ import annotations

import csv
import io
import json
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from events_app.services import audit_token_issue
from tests.server.advisories_app.conftest import EPSS_CURRENT, KEV_2025, feed, machine, pending

pytestmark = pytest.mark.django_db

API = "/api/v1/advisories/exposures"


@pytest.fixture
def exposures():
    alma = machine("alma", "AlmaLinux", "9.2")
    pending(alma, "open-vm-tools", "12.1.5-1.el9", "12.1.5-1.el9_2.1.alma", package_type="dnf")
    pending(alma, "glibc", "2.34-60.el9_2.6", "2.34-60.el9_2.7", package_type="dnf")
    for path in ("osv/almalinux/ALSA-2023_3948.json", KEV_2025, EPSS_CURRENT):
        call_command("import_advisories", str(feed(path)), stdout=StringIO())
    return alma


def test_export_requires_the_right_and_streams_both_formats(client, admin_client, exposures):
    assert client.get("/advisories/exposures.csv").status_code == 302  # to the log-in page
    staff = User.objects.create_user("helpdesk", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get("/advisories/exposures.csv").status_code == 403
    rows = list(csv.DictReader(io.StringIO(b"".join(admin_client.get("/advisories/exposures.csv")
                                                    .streaming_content).decode())))
    assert [(row["cve_id"], row["package"], row["status"], row["epss_score"], row["known_exploited"])
            for row in rows] == [("CVE-2023-20867", "open-vm-tools", "fixed_by_update", "0.1353", "True")]
    lines = b"".join(admin_client.get("/advisories/exposures.jsonl", {"known_exploited": "true"})
                     .streaming_content).decode().splitlines()
    assert json.loads(lines[0])["fixed_version"] == "12.1.5-1.el9_2.1.alma"
    assert admin_client.get("/advisories/exposures.xml").status_code == 400
    assert b"cve:" in admin_client.get("/advisories/exposures.csv", {"cve": "nope"}).content


def test_read_api_pages_and_filters(client, admin_user, exposures):
    assert client.get(API).status_code == 401
    _, secret = audit_token_issue(user=admin_user, label="siem", issued_by="admin")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    body = client.get(API, {"cve": "CVE-2023-20867", "limit": 1}, **headers).json()
    assert body["results"][0]["hostname"] == "alma" and body["results"][0]["known_exploited"] is True
    assert body["next_cursor"] is None
    assert client.get(API, {"status": "unknown"}, **headers).status_code == 400
    assert client.get(API, {"known_exploited": "false"}, **headers).json()["results"] == []
