"""A real DNF scan, mapped: the agent's DnfScanner runs the real dnf against RPMs built here (a private
repository and --installroot under tmp_path, as tests/agent/test_dnf.py does), its report goes through the
server's real ingestion, and the mapping finds what the saved AlmaLinux errata and KEV say.

Packages needed as for tests/agent/test_dnf.py: dnf, rpm, createrepo-c. Root is needed (rpm --root).
"""

from __future__ import annotations

import uuid
from io import StringIO

import pytest
from django.core.management import call_command

from advisories_app.choices import ExposureSource, ExposureStatus
from advisories_app.models import Exposure
from advisories_app.risk import update_risk
from agent_client.scanners.dnf import DnfScanner
from agents_app.models import PackageUpdate
from agents_app.services.reports import updates_report_ingest
from tests.agent.conftest import require_root, require_tools
from tests.agent.dnf_fixtures.sandbox import Advisory, DnfSandbox, RpmSpec, build_rpms, make_repository
from tests.server.advisories_app.conftest import KEV_2025, feed, machine

pytestmark = pytest.mark.django_db

# ALSA-2023:3948 fixes CVE-2023-20867 in open-vm-tools 12.1.5-1.el9_2.1.alma; ALSA-2023:5453 fixes
# CVE-2023-4911 in glibc 2.34-60.el9_2.7. The repository's own updateinfo names CVE-2023-4911 too.
OLD = [RpmSpec("open-vm-tools", "12.1.5", "1.el9"), RpmSpec("glibc", "2.34", "60.el9_2.6")]
NEW = [RpmSpec("open-vm-tools", "12.1.5", "1.el9_2.1.alma"), RpmSpec("glibc", "2.34", "60.el9_2.7")]
UPDATEINFO = [Advisory("ALSA-2023:5453", "security", "Important", "Important: glibc security update", (NEW[1],),
                       cves=("CVE-2023-4911",))]


def test_a_real_dnf_scan_is_mapped_to_the_errata_and_kev(tmp_path):
    require_tools("dnf", "rpm", "rpmbuild", "createrepo_c", "modifyrepo_c")
    require_root()
    rpms = build_rpms(tmp_path / "build", OLD + NEW)
    sandbox = DnfSandbox(tmp_path / "sandbox")
    make_repository(sandbox.repo_dir, [rpms[spec.filename] for spec in NEW], UPDATEINFO)
    sandbox.rpm_install([rpms[spec.filename] for spec in OLD])
    records = [record.to_dict() for record in DnfScanner(sandbox.dnf_options()).scan()]

    agent = machine("alma-real", "AlmaLinux", "9.2")
    updates_report_ingest(agent=agent, report_id=uuid.uuid4().hex, package_type="dnf", updates=records,
                          not_checked=[])
    for path in ("osv/almalinux/ALSA-2023_3948.json", "osv/almalinux/ALSA-2023_5453.json", KEV_2025):
        call_command("import_advisories", str(feed(path)), feed=f"feed-{feed(path).stem}", stdout=StringIO())

    vmtools = PackageUpdate.objects.get(agent=agent, name="open-vm-tools")
    assert (vmtools.current_version, vmtools.available_version) == ("12.1.5-1.el9", "12.1.5-1.el9_2.1.alma")
    assert update_risk(vmtools) == {"cve_count": 1, "max_cvss": None, "max_epss": None, "known_exploited": True}
    glibc = PackageUpdate.objects.get(agent=agent, name="glibc")
    assert glibc.cve_ids == ["CVE-2023-4911"]  # from the repository's updateinfo, through the real dnf
    exposure = Exposure.objects.get(package_update=glibc, vulnerability__cve_id="CVE-2023-4911")
    # The feed's row wins over the agent's report of the same CVE: it knows the fixed version.
    assert (exposure.status, exposure.source, exposure.fixed_version) == (
        ExposureStatus.FIXED_BY_UPDATE, ExposureSource.FEED, "2.34-60.el9_2.7")
