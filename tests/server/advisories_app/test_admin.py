"""Where an admin decides: the updates list's risk columns and filters, the agent page, the CVE page and
the dashboard, all from the same imported slices."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from advisories_app.models import Vulnerability
from agents_app.models import PackageUpdate
from tests.server.advisories_app.conftest import KEV_2025, feed, machine, pending

pytestmark = pytest.mark.django_db

UPDATES = reverse("admin:agents_app_packageupdate_changelist")


@pytest.fixture
def exposed():
    alma = machine("alma", "AlmaLinux", "9.2")
    glibc = pending(alma, "glibc", "2.34-60.el9_2.6", "2.34-60.el9_2.7", package_type="dnf")
    pending(alma, "vim-minimal", "2:8.2.2637-20.el9_1", "2:8.2.2637-21.el9", package_type="dnf")
    jammy = machine("jammy", "Ubuntu", "22.04")
    pending(jammy, "libc6", "2.35-0ubuntu3.3", "2.35-0ubuntu3.4")
    for path in ("osv/almalinux/ALSA-2023_5453.json", "osv/ubuntu/UBUNTU-CVE-2023-4911.json", KEV_2025):
        call_command("import_advisories", str(feed(path)), stdout=StringIO())
    return {"alma": alma, "jammy": jammy, "glibc": glibc}


def names(admin_client, **params) -> list[str]:
    return [update.name for update in admin_client.get(UPDATES, params).context["cl"].result_list]


def test_updates_list_shows_and_filters_risk(admin_client, exposed):
    page = admin_client.get(UPDATES).content.decode()
    assert "CVEs fixed" in page and "Max CVSS" in page and ">KEV<" in page and "7.8" in page
    assert sorted(names(admin_client, kev="yes")) == ["glibc", "libc6"]
    assert names(admin_client, kev="no") == ["vim-minimal"]
    # CVE-2023-4911's 7.8 comes from Ubuntu's record (Alma's errata names four CVEs: no single score).
    assert sorted(names(admin_client, cvss_min="7")) == ["glibc", "libc6"]
    assert names(admin_client, cvss_min="9") == []
    # Highest risk first: sort on the known-exploited column.
    column = admin.site._registry[PackageUpdate].list_display.index("kev") + 1
    assert names(admin_client, o=str(column))[-1] == "vim-minimal"


def test_updates_list_queries_do_not_grow_with_exposures(admin_client, exposed):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(UPDATES).status_code == 200
        return len(captured)

    before = queries()
    for index in range(20):
        pending(machine(f"alma-{index}", "AlmaLinux", "9.4"), "glibc", "2.34-60.el9_2.6", "2.34-60.el9_2.7",
                package_type="dnf")
    call_command("import_advisories", str(feed("osv/almalinux/ALSA-2023_5453.json")), feed="again",
                 stdout=StringIO())
    assert queries() == before


def test_agent_page_lists_its_exposures(admin_client, exposed):
    page = admin_client.get(reverse("admin:agents_app_agent_change", args=[exposed["alma"].pk])).content.decode()
    assert "CVEs this machine is exposed to" in page and "CVE-2023-4911" in page
    assert "glibc 2.34-60.el9_2.6 → 2.34-60.el9_2.7" in page


def test_cve_page_says_who_is_exposed(admin_client, exposed):
    cve = Vulnerability.objects.get(cve_id="CVE-2023-4911")
    page = admin_client.get(reverse("admin:advisories_app_vulnerability_change", args=[cve.pk])).content.decode()
    assert "2 machine(s)" in page and "KEV" in page
    listing = admin_client.get(reverse("admin:advisories_app_exposure_changelist"),
                               {"vulnerability__id__exact": cve.pk})
    assert {row.agent.hostname for row in listing.context["cl"].result_list} == {"alma", "jammy"}
    found = admin_client.get(reverse("admin:advisories_app_vulnerability_changelist"), {"q": "CVE-2023-4911"})
    assert [row.cve_id for row in found.context["cl"].result_list] == ["CVE-2023-4911"]


def test_dashboard_counts_exposed_and_exploited_machines(admin_client, exposed):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert 'id="rf-exploited"' in page and "machines exposed to known-exploited CVEs (1)" in page
    assert 'id="rf-exposed"' in page
