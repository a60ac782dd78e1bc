"""The parsers against the saved real slices: the values SOURCES.md's cross-checks name, and refusals."""

from __future__ import annotations

import gzip
from datetime import date

import pytest

from advisories_app.choices import Distro, FeedFormat
from advisories_app.importers import (
    FeedFormatError,
    Fix,
    detect_format,
    parse_debian_tracker,
    parse_epss,
    parse_kev,
    parse_osv,
    read_source,
)
from tests.server.advisories_app.conftest import DEBIAN_TRACKER, EPSS_CURRENT, KEV_2025, KEV_2026_DELTA, feed


@pytest.mark.parametrize(("relative", "expected"), [
    ("osv/debian", FeedFormat.OSV), ("osv/almalinux/ALSA-2023_5453.json", FeedFormat.OSV),
    (DEBIAN_TRACKER, FeedFormat.DEBIAN_TRACKER), (KEV_2025, FeedFormat.KEV), (EPSS_CURRENT, FeedFormat.EPSS),
    ("epss/epss_scores-2021-04-14.vuls-fixture.csv", FeedFormat.EPSS),
])
def test_format_is_recognised_from_content(relative, expected):
    assert detect_format(read_source(feed(relative))) == expected


@pytest.mark.parametrize(("relative", "message"), [
    ("optional/updateinfo.centos-cefs.slice.xml", "not a feed RedFlag knows"),
    ("optional/suse-oval.sles15.vunnel-fixture.xml", "not a feed RedFlag knows"),
    ("debian-tracker/DSA-list.head80.txt", "not valid JSON"),  # "[13 Mar 2023] DSA-…" starts like JSON
])
def test_formats_not_imported_are_refused(relative, message):
    with pytest.raises(FeedFormatError, match=message):
        detect_format(read_source(feed(relative)))


def test_debian_osv_names_the_bookworm_fix_of_cve_2024_6119():
    """DSA-5764-1 and DEBIAN-CVE-2024-6119: openssl fixed in 3.0.14-1~deb12u2 for Debian 12."""
    advisories = parse_osv(read_source(feed("osv/debian")))
    assert Fix("DSA-5764-1", "CVE-2024-6119", Distro.DEBIAN, "12", "openssl", "3.0.14-1~deb12u2") in advisories.fixes
    assert Fix("DEBIAN-CVE-2024-6119", "CVE-2024-6119", Distro.DEBIAN, "13", "openssl", "3.3.2-1") \
        in advisories.fixes
    assert advisories.records == 41


def test_ubuntu_osv_maps_binaries_and_scores_cve_2023_4911():
    advisories = parse_osv(read_source(feed("osv/ubuntu")))
    assert Fix("UBUNTU-CVE-2023-4911", "CVE-2023-4911", Distro.UBUNTU, "22.04", "libc6", "2.35-0ubuntu3.4") \
        in advisories.fixes
    assert advisories.cves["CVE-2023-4911"].cvss_score == 7.8  # CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H
    # Ubuntu Pro streams are for attached machines only: left out.
    assert not any(fix.release.startswith("Pro") for fix in advisories.fixes)


def test_alma_rocky_alpine_red_hat_ecosystems():
    alma = parse_osv(read_source(feed("osv/almalinux")))
    assert Fix("ALSA-2023:5453", "CVE-2023-4911", Distro.ALMALINUX, "9", "glibc", "2.34-60.el9_2.7") in alma.fixes
    # A four-CVE errata's score is not given to each CVE.
    assert alma.cves["CVE-2023-4911"].cvss_score is None
    rocky = parse_osv(read_source(feed("osv/rocky")))
    assert Fix("RLSA-2023:7877", "CVE-2023-5678", Distro.ROCKY, "8", "openssl", "1:1.1.1k-12.el8_9") in rocky.fixes
    alpine = parse_osv(read_source(feed("osv/alpine")))
    assert Fix("ALPINE-CVE-2025-48384", "CVE-2025-48384", Distro.ALPINE, "3.19", "git", "2.43.7-r0") in alpine.fixes
    assert alpine.cves["CVE-2025-48384"].cvss_score == 8.0
    redhat = parse_osv(read_source(feed("osv/redhat")))
    assert {fix.distro for fix in redhat.fixes} == {Distro.RHEL}  # OpenShift tools' stream is no RHEL release


def test_debian_tracker_statuses():
    """osv.dev's tracker mock: busybox CVE-2018-1000500 open in bookworm (no fix), apparmor CVE-2017-6507
    resolved in 2.11.0-3."""
    advisories = parse_debian_tracker(read_source(feed(DEBIAN_TRACKER)))
    bookworm = {fix for fix in advisories.fixes if fix.release == "12"}
    assert Fix("debian-tracker:busybox", "CVE-2018-1000500", Distro.DEBIAN, "12", "busybox", "") in bookworm
    assert Fix("debian-tracker:apparmor", "CVE-2017-6507", Distro.DEBIAN, "12", "apparmor", "2.11.0-3") in bookworm


def test_kev_catalogue_and_its_update():
    catalogue = {entry.cve_id: entry for entry in parse_kev(read_source(feed(KEV_2025)))}
    assert len(catalogue) == 212  # the slice, though its header still says 1404
    assert catalogue["CVE-2025-48384"].date_added == date(2025, 8, 25)
    assert catalogue["CVE-2025-48384"].due_date == date(2025, 9, 15)
    delta = {entry.cve_id: entry for entry in parse_kev(read_source(feed(KEV_2026_DELTA)))}
    assert not catalogue["CVE-2024-1086"].ransomware and delta["CVE-2024-1086"].ransomware


def test_epss_in_each_published_shape(tmp_path):
    current = parse_epss(read_source(feed(EPSS_CURRENT)))
    assert current.score_date == date(2026, 9, 29)
    assert {score.cve_id: score.score for score in current.scores}["CVE-2023-20867"] == 0.1353
    oldest = parse_epss(read_source(feed("epss/epss_scores-2021-04-14.vuls-fixture.csv")))
    assert oldest.score_date is None and oldest.scores[0].percentile is None
    gzipped = tmp_path / "epss.csv.gz"
    gzipped.write_bytes(gzip.compress(feed(EPSS_CURRENT).read_bytes()))
    assert parse_epss(read_source(gzipped)).scores == current.scores


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "not valid JSON"),
    (b'{"vulnerabilities": [{"cveID": "nope"}], "catalogVersion": "1"}', "without a valid cveID"),
    (b"cve,epss\nCVE-2020-5902,high\n", "not a number"),
    (b"[1, 2]", "an OSV record needs an 'id'"),
    (b'{"\xff": 1}', "not UTF-8"),
])
def test_bad_files_are_refused_with_the_reason(content, message):
    with pytest.raises(FeedFormatError, match=message):
        fmt = detect_format(content)
        {FeedFormat.OSV: parse_osv, FeedFormat.KEV: parse_kev, FeedFormat.EPSS: parse_epss,
         FeedFormat.DEBIAN_TRACKER: parse_debian_tracker}[fmt](content)
