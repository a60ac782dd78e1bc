"""The mapping, checked by hand-picked cases from the real slices (SOURCES.md's cross-checks)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from advisories_app.choices import ExposureSource, ExposureStatus
from advisories_app.mapping import exposures_refresh, upgrade_verdict
from advisories_app.models import Exposure, Vulnerability
from advisories_app.risk import fleet_risk, update_risk, with_update_risk
from agents_app.choices import UpdateStatus
from agents_app.models import PackageUpdate
from tests.server.advisories_app.conftest import DEBIAN_TRACKER, EPSS_CURRENT, KEV_2025, feed, machine, pending

pytestmark = pytest.mark.django_db

# The two AlmaLinux errata the cases need, each as its own feed (the whole slice has 4,461 fixes).
FEEDS = ("osv/debian", "osv/ubuntu", "osv/alpine", DEBIAN_TRACKER, KEV_2025, EPSS_CURRENT)
ALMA = ("osv/almalinux/ALSA-2023_5453.json", "osv/almalinux/ALSA-2023_3948.json")


@pytest.fixture
def fleet():
    debian = "Debian GNU/Linux"
    updates = {
        # DSA-5764-1: CVE-2024-6119 fixed in openssl 3.0.14-1~deb12u2 for bookworm.
        "reaches_fix": pending(machine("deb-a", debian, "12"), "openssl", "3.0.14-1~deb12u1", "3.0.14-1~deb12u2"),
        "falls_short": pending(machine("deb-b", debian, "12"), "openssl", "3.0.13-1~deb12u1", "3.0.14-1~deb12u1"),
        "already_fixed": pending(machine("deb-c", debian, "12"), "openssl", "3.0.14-1~deb12u2", "3.0.15-1~deb12u1"),
        # The tracker: busybox CVE-2018-1000500 open in bookworm, no fixed version.
        "no_fix": pending(machine("deb-d", debian, "12"), "busybox", "1:1.35.0-4", "1:1.35.0-4+b3"),
        # ALSA-2023:5453 (CVE-2023-4911, in KEV) and ALSA-2023:3948 (CVE-2023-20867, KEV, EPSS 0.1353).
        "alma_glibc": pending(machine("alma", "AlmaLinux", "9.2"), "glibc", "2.34-60.el9_2.6", "2.34-60.el9_2.7",
                              package_type="dnf"),
        # Another AlmaLinux 9 minor release: the same advisories, mapped once per update.
        "alma_vmtools": pending(machine("alma-vm", "AlmaLinux", "9.4"), "open-vm-tools", "12.1.5-1.el9",
                                "12.1.5-1.el9_2.1.alma", package_type="dnf"),
        # UBUNTU-CVE-2023-4911: glibc fixed in 2.35-0ubuntu3.4 on 22.04; apt reports the binary libc6.
        "ubuntu_libc6": pending(machine("jammy", "Ubuntu", "22.04"), "libc6", "2.35-0ubuntu3.3", "2.35-0ubuntu3.4"),
        # ALPINE-CVE-2025-48384: git fixed in 2.43.7-r0 on v3.19 (in KEV).
        "alpine_git": pending(machine("alpine", "Alpine Linux", "3.19.4"), "git", "2.43.6-r0", "2.43.7-r0"),
        # No feed for Fedora: what dnf updateinfo told the agent is all there is.
        "agent_reported": pending(machine("fedora", "Fedora Linux", "40"), "glibc", "2.39-15.fc40", "2.39-17.fc40",
                                  package_type="dnf", cve_ids=["CVE-2023-4911"]),
        # Installed already: no longer pending, no exposure.
        "installed": pending(machine("deb-e", debian, "12"), "openssl", "3.0.14-1~deb12u1", "3.0.14-1~deb12u2",
                             status=UpdateStatus.INSTALLED),
    }
    for path in FEEDS:
        call_command("import_advisories", str(feed(path)), stdout=StringIO())
    for path in ALMA:
        call_command("import_advisories", str(feed(path)), feed=f"osv-{feed(path).stem}", stdout=StringIO())
    return updates


def statuses(update: PackageUpdate) -> dict[str, str]:
    return dict(Exposure.objects.filter(package_update=update).values_list("vulnerability__cve_id", "status"))


def test_a_debian_update_to_the_fixed_version_is_mapped(fleet):
    assert statuses(fleet["reaches_fix"])["CVE-2024-6119"] == ExposureStatus.FIXED_BY_UPDATE


def test_a_debian_update_below_the_fixed_version_leaves_the_machine_exposed(fleet):
    exposure = Exposure.objects.get(package_update=fleet["falls_short"], vulnerability__cve_id="CVE-2024-6119")
    assert (exposure.status, exposure.fixed_version) == (ExposureStatus.UPDATE_FALLS_SHORT, "3.0.14-1~deb12u2")


def test_an_installed_version_at_the_fix_is_not_exposed(fleet):
    assert "CVE-2024-6119" not in statuses(fleet["already_fixed"])
    assert not Exposure.objects.filter(package_update=fleet["installed"]).exists()


def test_no_fix_yet(fleet):
    assert statuses(fleet["no_fix"]) == {"CVE-2018-1000500": ExposureStatus.NO_FIX_YET}


def test_alma_update_risk_joins_kev_and_epss(fleet):
    assert statuses(fleet["alma_glibc"])["CVE-2023-4911"] == ExposureStatus.FIXED_BY_UPDATE
    risk = update_risk(fleet["alma_vmtools"])
    assert risk == {"cve_count": 1, "max_cvss": None, "max_epss": 0.1353, "known_exploited": True}


def test_ubuntu_binary_and_alpine_are_mapped_with_their_scores(fleet):
    assert update_risk(fleet["ubuntu_libc6"])["max_cvss"] == 7.8
    assert update_risk(fleet["ubuntu_libc6"])["known_exploited"] is True
    assert update_risk(fleet["alpine_git"]) == {"cve_count": 1, "max_cvss": 8.0, "max_epss": None,
                                                "known_exploited": True}


def test_cves_the_agent_reported_count_without_a_feed(fleet):
    exposure = Exposure.objects.get(package_update=fleet["agent_reported"])
    assert (exposure.vulnerability.cve_id, exposure.status, exposure.source) == (
        "CVE-2023-4911", ExposureStatus.FIXED_BY_UPDATE, ExposureSource.AGENT)


def test_who_is_exposed_to_a_cve(fleet):
    cve = Vulnerability.objects.with_exposure_counts().get(cve_id="CVE-2023-4911")
    assert (cve.exposed_machines, cve.fixable_machines, cve.no_fix_machines) == (3, 3, 0)
    assert set(cve.exposures.values_list("agent__hostname", "package_update__name")) == {
        ("alma", "glibc"), ("jammy", "libc6"), ("fedora", "glibc")}
    risk = fleet_risk()
    assert risk["exploited_machines"] == 5  # alma, alma-vm, jammy, alpine, fedora
    # Every machine but deb-e (its update is installed): deb-c is past CVE-2024-6119's fix, not later ones.
    assert risk["exposed_machines"] == 9


def test_refresh_is_repeatable_and_follows_the_updates(fleet):
    first = set(Exposure.objects.values_list("package_update", "vulnerability", "status"))
    assert exposures_refresh() == len(first)
    assert set(Exposure.objects.values_list("package_update", "vulnerability", "status")) == first
    PackageUpdate.objects.filter(pk=fleet["alma_glibc"].pk).update(status=UpdateStatus.INSTALLED)
    exposures_refresh()
    assert not Exposure.objects.filter(package_update=fleet["alma_glibc"]).exists()


def test_the_risk_of_a_page_of_updates_costs_the_same_queries(fleet, django_assert_num_queries):
    with django_assert_num_queries(1):
        rows = list(with_update_risk(PackageUpdate.objects.all()).order_by("-known_exploited", "name"))
    assert [row.known_exploited for row in rows][:5] == [True] * 5


@pytest.mark.parametrize(("current", "available", "fixed", "expected"), [
    ("1.0-1", "1.0-2", ["1.0-2"], (ExposureStatus.FIXED_BY_UPDATE, "1.0-2")),
    ("1.0-1", "1.0-1+b1", ["1.0-2"], (ExposureStatus.UPDATE_FALLS_SHORT, "1.0-2")),
    ("1.0-2", "1.0-3", ["1.0-2"], None),
    ("1.0-1", "1.0-3", ["", "1.0-3", "1.0-2"], (ExposureStatus.FIXED_BY_UPDATE, "1.0-2")),  # the lowest fix
    ("1.0-1", "1.0-3", [""], (ExposureStatus.NO_FIX_YET, "")),
    ("1.0-1", "not a version!", ["1.0-2"], None),  # never guessed
])
def test_upgrade_verdict(current, available, fixed, expected):
    assert upgrade_verdict("debian", current, available, fixed) == expected
