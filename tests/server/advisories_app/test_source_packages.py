"""Debian's advisories name source packages, apt reports binaries: an update is mapped by its source package
(PackageUpdate.source_name, from the agent's metadata.source) as well as by its own name.

Values from the saved slices (SOURCES.md): DSA-5764-1 and DEBIAN-CVE-2024-6119 both fix CVE-2024-6119 in
the source package openssl at 3.0.14-1~deb12u2 for Debian 12; libssl3 is one of openssl's binaries. The
updates arrive through the real report endpoint, as an agent sends them; the last test has the agent's
AptScanner find one with the real apt, as tests/agent/test_apt.py does.
"""

from __future__ import annotations

import uuid
from io import StringIO

import pytest
from django.core.management import call_command

from advisories_app.choices import ExposureStatus
from advisories_app.mapping import exposures_refresh
from advisories_app.models import Exposure
from agent_client.scanners.apt import AptScanner
from agents_app.models import PackageUpdate
from agents_app.services.reports import updates_report_ingest
from tests.agent.conftest import require_root, require_tools
from tests.agent.test_apt import AptRepo, build_deb, check, write_release
from tests.server.advisories_app.conftest import feed, machine

pytestmark = pytest.mark.django_db

FIXED = "3.0.14-1~deb12u2"


def libssl3(current: str, available: str, metadata: dict) -> dict:
    return {"name": "libssl3", "current_version": current, "available_version": available, "severity": "important",
            "is_security": True, "repository": "Debian-Security/bookworm-security", "size_bytes": 2025548,
            "cve_ids": [], "kb_ids": [], "metadata": metadata}


@pytest.fixture
def debian_12(enroll):
    """report(hostname, update) → the PackageUpdate a Debian 12 machine's apt report stored."""

    def _report(hostname: str, update: dict) -> PackageUpdate:
        machine = enroll(hostname=hostname, os_name="Debian GNU/Linux", os_version="12")
        response = machine.post("reports/updates", {"report_id": uuid.uuid4().hex, "package_type": "apt",
                                                    "updates": [update]})
        assert response.status_code == 200, response.content
        return PackageUpdate.objects.get(agent_id=machine.id, name=update["name"])

    return _report


@pytest.fixture
def debian_feed():
    call_command("import_advisories", str(feed("osv/debian")), stdout=StringIO())


def exposures(update: PackageUpdate) -> dict[str, tuple[str, str]]:
    return {cve: (status, fixed) for cve, status, fixed in Exposure.objects.filter(package_update=update)
            .values_list("vulnerability__cve_id", "status", "fixed_version")}


def test_a_binary_update_reaching_its_sources_fix_is_mapped(debian_12, debian_feed):
    update = debian_12("deb-a", libssl3("3.0.13-1~deb12u1", FIXED, {"arch": "amd64", "source": "openssl"}))
    assert update.source_name == "openssl"
    exposures_refresh()
    assert exposures(update)["CVE-2024-6119"] == (ExposureStatus.FIXED_BY_UPDATE, FIXED)


def test_a_binary_update_stopping_below_the_fix_does_not_fix_it(debian_12, debian_feed):
    update = debian_12("deb-b", libssl3("3.0.13-1~deb12u1", "3.0.14-1~deb12u1",
                                        {"arch": "amd64", "source": "openssl"}))
    exposures_refresh()
    assert exposures(update)["CVE-2024-6119"] == (ExposureStatus.UPDATE_FALLS_SHORT, FIXED)
    # It does fix what DEBIAN-CVE-2024-2511 says openssl 3.0.14-1~deb12u1 fixed.
    assert exposures(update)["CVE-2024-2511"] == (ExposureStatus.FIXED_BY_UPDATE, "3.0.14-1~deb12u1")


def test_without_a_source_or_with_a_bogus_one_the_binary_is_not_mapped(debian_12, debian_feed):
    """What every apt update got before: the advisories never name libssl3 on Debian."""
    older_agent = debian_12("deb-c", libssl3("3.0.13-1~deb12u1", FIXED, {"arch": "amd64"}))
    bogus = debian_12("deb-d", libssl3("3.0.13-1~deb12u1", FIXED, {"arch": "amd64", "source": "openssl;id"}))
    assert bogus.source_name == "" and bogus.metadata["source"] == "openssl;id"
    exposures_refresh()
    assert exposures(older_agent) == {} and exposures(bogus) == {}


def test_the_source_and_the_binary_of_one_machine_are_mapped_once_each(debian_12, debian_feed):
    """openssl itself (named by the advisories) and libssl3 (by its source): one exposure per update and CVE,
    and a second refresh changes nothing."""
    update = debian_12("deb-e", libssl3("3.0.13-1~deb12u1", FIXED, {"arch": "amd64", "source": "openssl"}))
    openssl = PackageUpdate.objects.create(agent=update.agent, package_type="apt", name="openssl",
                                           current_version="3.0.13-1~deb12u1", available_version=FIXED)
    first = exposures_refresh()
    assert exposures(openssl) == exposures(update)
    assert exposures(update)["CVE-2024-6119"] == (ExposureStatus.FIXED_BY_UPDATE, FIXED)
    assert exposures_refresh() == first == 2 * len(exposures(update))


def test_a_real_apt_scan_of_libssl3_is_mapped_by_its_source(tmp_path, debian_feed):
    """A local bookworm-security suite serves libssl3 3.0.14-1~deb12u2 built with "Source: openssl"; apt reads a
    private dpkg status file (Dir::State::status) in which 3.0.13-1~deb12u1 is installed. So the real apt-get
    and apt-cache see the upgrade and nothing on this machine is installed or read from its dpkg database."""
    require_tools("apt-get", "apt-cache", "apt-mark", "dpkg-deb", "dpkg-scanpackages")
    require_root()
    repo = AptRepo(tmp_path)
    build_deb(repo.root / "pool" / "bookworm-security", tmp_path / "build", "libssl3", FIXED, source="openssl")
    packages = repo.root / "dists" / "bookworm-security" / "main" / f"binary-{repo.arch}"
    packages.mkdir(parents=True)
    (packages / "Packages").write_text(
        check(["dpkg-scanpackages", "pool/bookworm-security", "/dev/null"], cwd=str(repo.root)).stdout)
    write_release(repo.root / "dists" / "bookworm-security", "bookworm-security", "Debian-Security", repo.arch)
    repo.sources_list.write_text(f"deb [trusted=yes] file:{repo.root} bookworm-security main\n")
    status = tmp_path / "dpkg-status"
    status.write_text("Package: libssl3\nStatus: install ok installed\nPriority: optional\nSection: libs\n"
                      "Maintainer: RedFlag Tests <tests@example.invalid>\nArchitecture: all\nSource: openssl\n"
                      "Version: 3.0.13-1~deb12u1\nDescription: stand-in for the installed libssl3\n")
    scanner = AptScanner(apt_options=[*repo.options, f"-o Dir::State::status={status}",
                                      f"-o Dir::State::extended_states={tmp_path / 'extended_states'}"],
                         state_dir=str(tmp_path / "state"))
    records = [record.to_dict() for record in scanner.scan()]
    assert [(r["name"], r["current_version"], r["available_version"], r["metadata"]["source"]) for r in records] == [
        ("libssl3", "3.0.13-1~deb12u1", FIXED, "openssl")]

    agent = machine("deb-real", "Debian GNU/Linux", "12")
    updates_report_ingest(agent=agent, report_id=uuid.uuid4().hex, package_type="apt", updates=records,
                          not_checked=[])
    exposures_refresh()
    assert exposures(PackageUpdate.objects.get(agent=agent, name="libssl3"))["CVE-2024-6119"] == (
        ExposureStatus.FIXED_BY_UPDATE, FIXED)
