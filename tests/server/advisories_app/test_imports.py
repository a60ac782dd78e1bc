"""Imports of the saved real slices: the command, idempotence, all-or-nothing, events, KEV and EPSS updates."""

from __future__ import annotations

from datetime import date
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from advisories_app.choices import FeedFormat, ImportStatus
from advisories_app.models import FeedImport, FixedIn, Vulnerability
from advisories_app.services import FeedImportFailed, feed_import_path
from events_app.models import SystemEvent
from tests.server.advisories_app.conftest import EPSS_CURRENT, KEV_2025, KEV_2026_DELTA, feed

pytestmark = pytest.mark.django_db


def run_command(*paths: str, **options) -> str:
    out = StringIO()
    call_command("import_advisories", *[str(feed(path)) for path in paths], stdout=out, **options)
    return out.getvalue()


def snapshot() -> tuple:
    return (sorted(FixedIn.objects.values_list("feed", "advisory_id", "vulnerability__cve_id", "distro", "release",
                                               "package", "fixed_version")),
            sorted(Vulnerability.objects.values_list("cve_id", "cvss_score", "known_exploited", "epss_score")))


def test_command_imports_and_says_what_it_did():
    output = run_command("osv/debian", KEV_2025, EPSS_CURRENT)
    lines = output.splitlines()
    assert lines[0].endswith("osv/debian: osv-debian (OSV records (JSON, JSON Lines, a directory or an osv.dev "
                             "all.zip)) succeeded: records 41, cves 36, fixes 167, fixes_added 167, fixes_removed 0, "
                             "cves_updated 36, exposures 0")
    assert "kev (CISA Known Exploited Vulnerabilities) succeeded: entries 212, added 212, removed 0" in lines[1]
    assert "epss (FIRST EPSS scores (CSV, optionally gzipped)) succeeded: scores 62, cleared 0" in lines[2]
    fix = FixedIn.objects.get(advisory_id="DSA-5764-1", release="12")
    assert (fix.vulnerability.cve_id, fix.package, fix.fixed_version) == ("CVE-2024-6119", "openssl",
                                                                          "3.0.14-1~deb12u2")


def test_each_import_is_an_event_with_its_counts():
    run_command(KEV_2025)
    event = SystemEvent.objects.get(metadata__feed="kev")
    assert event.metadata["counts"] == {"entries": 212, "added": 212, "removed": 0}
    assert event.actor == "manage.py import_advisories" and "212 entries" in event.message


def test_a_second_import_of_the_same_file_changes_nothing():
    run_command("osv/almalinux", "osv/ubuntu", KEV_2025, EPSS_CURRENT)
    first = snapshot()
    output = run_command("osv/almalinux", "osv/ubuntu", KEV_2025, EPSS_CURRENT)
    assert output.count(" unchanged: no change") == 4
    assert snapshot() == first
    assert FixedIn.objects.filter(feed="osv-almalinux").count() == 4461


def test_a_changed_file_is_imported_again_with_the_same_rows(tmp_path):
    """Same records, other bytes (re-serialised): the data is replaced, not duplicated."""
    run_command("osv/rocky")
    before = snapshot()
    for source in feed("osv/rocky").iterdir():
        (tmp_path / source.name).write_text(source.read_text() + "\n")
    imported = feed_import_path(path=tmp_path, feed="osv-rocky")
    assert imported.status == ImportStatus.SUCCEEDED
    assert imported.counts["fixes_added"] == imported.counts["fixes_removed"] == 0
    assert snapshot() == before


def test_the_kev_update_changes_flags_and_drops_what_left_the_catalogue():
    run_command(KEV_2025)
    assert Vulnerability.objects.get(cve_id="CVE-2024-1086").kev_ransomware is False
    run_command(KEV_2026_DELTA)
    cve = Vulnerability.objects.get(cve_id="CVE-2024-1086")
    assert cve.known_exploited and cve.kev_ransomware
    # The delta file is a whole catalogue as far as an import knows: entries only in 2025's are dropped.
    assert not Vulnerability.objects.get(cve_id="CVE-2025-48384").known_exploited
    assert Vulnerability.objects.filter(known_exploited=True).count() == 122


def test_a_newer_epss_file_replaces_the_scores():
    run_command("epss/epss_scores-2022-02-04.vuls-fixture.csv")
    assert Vulnerability.objects.get(cve_id="CVE-2020-5902").epss_score == 0.96817
    run_command(EPSS_CURRENT)
    assert Vulnerability.objects.get(cve_id="CVE-2020-5902").epss_score is None  # not in the newer file
    cve = Vulnerability.objects.get(cve_id="CVE-2023-20867")
    assert (cve.epss_score, cve.epss_percentile, cve.epss_date) == (0.1353, 0.9633, date(2026, 9, 29))


def test_a_bad_file_is_refused_and_nothing_is_stored(tmp_path):
    run_command(KEV_2025)
    before = snapshot()
    broken = tmp_path / "known_exploited_vulnerabilities.json"
    broken.write_text(feed(KEV_2026_DELTA).read_text()[:5000])  # cut off mid-download
    with pytest.raises(CommandError, match=r"not valid JSON.*\(nothing was stored\)"):
        call_command("import_advisories", str(broken))
    assert snapshot() == before
    failed = FeedImport.objects.get(status=ImportStatus.FAILED)
    assert "not valid JSON" in failed.error
    assert SystemEvent.objects.filter(event_subtype="failed", message__contains="not valid JSON").exists()
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_advisories", str(tmp_path / "missing.json"))


def test_an_interrupted_import_leaves_the_previous_one_visible(tmp_path):
    """The database fails half-way through storing the new fixes: the old fixes stay, whole."""
    run_command("osv/debian")
    before = snapshot()
    for source in feed("osv/debian").iterdir():
        (tmp_path / source.name).write_bytes(source.read_bytes() + b" ")
    inserts = []

    def fail_on_second_fix_batch(execute, sql, params, many, context):
        if sql.startswith("INSERT INTO") and FixedIn._meta.db_table in sql:
            inserts.append(sql)
            if len(inserts) == 1:
                raise ConnectionError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(fail_on_second_fix_batch), pytest.raises(ConnectionError):
        feed_import_path(path=tmp_path, feed="osv-debian")
    assert snapshot() == before
    assert FeedImport.objects.filter(feed="osv-debian").order_by("-started_at").first().status == ImportStatus.FAILED


def test_a_directory_of_kev_files_is_refused(tmp_path):
    (tmp_path / "kev.json").write_bytes(feed(KEV_2025).read_bytes())
    with pytest.raises(FeedImportFailed, match="an OSV record needs an 'id'"):
        feed_import_path(path=tmp_path)
    assert FeedImport.objects.get().feed_format in ("", FeedFormat.OSV)
