"""Feed imports: the one write path for CVEs, fixes, KEV and EPSS data.

An import is all or nothing. Its FeedImport row is written first (status running, committed, so an
interrupted import stays visible as such); the feed's data is then replaced inside one transaction
that also marks the import succeeded and records its event. A crash, a bad row or a killed worker
rolls that transaction back: the previous import's data is what every page keeps showing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from advisories_app.choices import FeedFormat, ImportStatus
from advisories_app.importers import (
    Advisories,
    FeedFormatError,
    detect_format,
    parse_debian_tracker,
    parse_epss,
    parse_kev,
    parse_osv,
    read_source,
)
from advisories_app.mapping import exposures_refresh
from advisories_app.models import FeedImport, FixedIn, Vulnerability
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, record_event

BATCH = 2000


class FeedImportFailed(RuntimeError):
    """The import stored nothing; the message says why (and the FeedImport row records it)."""


def content_sha256(content: bytes | dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, data in sorted(content.items()) if isinstance(content, dict) else [("", content)]:
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


def default_feed_name(feed_format: str, advisories: Advisories | None) -> str:
    """OSV imports replace the fixes of the distribution most of their fixes are for ("osv-debian")."""
    if feed_format != FeedFormat.OSV or advisories is None or not advisories.fixes:
        return feed_format.replace("_", "-")
    distros = [fix.distro for fix in advisories.fixes]
    return f"osv-{max(set(distros), key=distros.count)}"


def feed_import_path(*, path: Path, feed: str = "", actor: str = SYSTEM_ACTOR) -> FeedImport:
    """Import a file or directory (the air-gapped way in: manage.py import_advisories PATH)."""
    try:
        content = read_source(path)
    except OSError as exc:
        raise FeedImportFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    except FeedFormatError as exc:
        raise FeedImportFailed(f"{path}: {exc}") from None
    return feed_import(content=content, source=str(path), feed=feed, actor=actor)


def feed_import(*, content: bytes | dict[str, bytes], source: str, feed: str = "", feed_format: str = "",
                actor: str = SYSTEM_ACTOR) -> FeedImport:
    """Parse, then store one feed in one transaction; refresh the exposures after.

    1. Parse everything first: a file that does not parse stores nothing (FeedImportFailed).
    2. The same bytes as the feed's current import: status unchanged, nothing rewritten.
    3. One transaction: replace the feed's data, mark the import succeeded, record the event.
    4. Recompute the exposures (advisories_app.mapping) against the new data.
    """
    started = FeedImport.objects.create(feed=feed or "unknown", feed_format=feed_format or "", source=source[:1000],
                                        sha256=content_sha256(content))
    try:
        feed_format = feed_format or detect_format(content)
        parsed = _parse(feed_format, content)
    except FeedFormatError as exc:
        _fail(started, f"{source}: {exc}", actor)
        raise FeedImportFailed(f"{source}: {exc}") from None
    started.feed = feed or default_feed_name(feed_format, parsed if isinstance(parsed, Advisories) else None)
    started.feed_format = feed_format
    if _same_as_current(started):
        return _finish(started, ImportStatus.UNCHANGED, {}, actor)
    try:
        with transaction.atomic():
            counts = _store(feed_format, started.feed, parsed)
            _finish(started, ImportStatus.SUCCEEDED, counts, actor)
    except Exception as exc:
        _fail(started, f"{source}: {type(exc).__name__}: {exc}", actor)
        raise
    started.counts["exposures"] = exposures_refresh()
    FeedImport.objects.filter(pk=started.pk).update(counts=started.counts)
    return started


def _parse(feed_format: str, content):
    if feed_format == FeedFormat.OSV:
        return parse_osv(content)
    if isinstance(content, dict):
        raise FeedFormatError(f"a directory can only hold OSV records, not {feed_format}")
    parsers = {FeedFormat.DEBIAN_TRACKER: parse_debian_tracker, FeedFormat.KEV: parse_kev,
               FeedFormat.EPSS: parse_epss}
    if feed_format not in parsers:
        raise FeedFormatError(f"unknown feed format {feed_format!r}")
    return parsers[feed_format](content)


def _same_as_current(started: FeedImport) -> bool:
    current = (FeedImport.objects.filter(feed=started.feed, status=ImportStatus.SUCCEEDED)
               .order_by("-started_at").values_list("sha256", flat=True).first())
    return current == started.sha256


def _finish(started: FeedImport, status: str, counts: dict, actor: str) -> FeedImport:
    started.status, started.counts, started.finished_at = status, counts, timezone.now()
    started.save(update_fields=["feed", "feed_format", "status", "counts", "finished_at"])
    summary = ", ".join(f"{value} {name}" for name, value in counts.items()) or "no change"
    record_event(event_type=EventType.BULK_OPERATION, subtype=EventSubtype.SUCCESS, component=Component.DOWNLOAD,
                 message=f"Advisory feed {started.feed} imported from {started.source[:200]}: {summary}",
                 metadata={"feed": started.feed, "format": started.feed_format, "status": status,
                           "source": started.source, "sha256": started.sha256, "counts": counts},
                 actor=actor, standalone=status == ImportStatus.UNCHANGED)
    return started


def _fail(started: FeedImport, error: str, actor: str) -> None:
    FeedImport.objects.filter(pk=started.pk).update(status=ImportStatus.FAILED, error=error[:4000],
                                                     finished_at=timezone.now())
    record_event(event_type=EventType.BULK_OPERATION, subtype=EventSubtype.FAILED, component=Component.DOWNLOAD,
                 severity=Severity.ERROR, message=f"Advisory feed import failed, nothing stored: {error[:300]}",
                 metadata={"feed": started.feed, "source": started.source, "error": error[:1000]},
                 actor=actor, standalone=True)


# --- storing each format (inside the import's transaction) ---------------------------------------


def _store(feed_format: str, feed: str, parsed) -> dict[str, int]:
    if feed_format == FeedFormat.KEV:
        return _store_kev(parsed)
    if feed_format == FeedFormat.EPSS:
        return _store_epss(parsed)
    return _store_advisories(feed, parsed)


def _vulnerability_ids(cve_ids: Iterable[str]) -> dict[str, int]:
    """Primary keys of these CVEs, creating the rows not seen before."""
    wanted = sorted(set(cve_ids))
    Vulnerability.objects.bulk_create([Vulnerability(cve_id=cve_id) for cve_id in wanted],
                                      ignore_conflicts=True, batch_size=BATCH)
    ids: dict[str, int] = {}
    for start in range(0, len(wanted), BATCH):
        ids.update(Vulnerability.objects.filter(cve_id__in=wanted[start:start + BATCH]).values_list("cve_id", "pk"))
    return ids


def _store_advisories(feed: str, advisories: Advisories) -> dict[str, int]:
    ids = _vulnerability_ids(advisories.cves)
    changed = []
    for vulnerability in Vulnerability.objects.filter(pk__in=ids.values()).iterator(chunk_size=BATCH):
        facts = advisories.cves[vulnerability.cve_id]
        before = (vulnerability.summary, vulnerability.cvss_score)
        vulnerability.summary = vulnerability.summary or facts.summary
        if facts.cvss_score is not None and (vulnerability.cvss_score is None
                                             or facts.cvss_score > vulnerability.cvss_score):
            vulnerability.cvss_score, vulnerability.cvss_vector = facts.cvss_score, facts.cvss_vector
        if (vulnerability.summary, vulnerability.cvss_score) != before:
            changed.append(vulnerability)
    Vulnerability.objects.bulk_update(changed, ["summary", "cvss_score", "cvss_vector"], batch_size=BATCH)
    old = set(FixedIn.objects.filter(feed=feed).values_list(
        "advisory_id", "vulnerability__cve_id", "distro", "release", "package", "fixed_version"))
    new = {(fix.advisory_id, fix.cve_id, fix.distro, fix.release, fix.package, fix.fixed_version)
           for fix in advisories.fixes}
    FixedIn.objects.filter(feed=feed).delete()
    FixedIn.objects.bulk_create(
        [FixedIn(feed=feed, advisory_id=fix.advisory_id[:64], vulnerability_id=ids[fix.cve_id], distro=fix.distro,
                 release=fix.release, package=fix.package[:255], fixed_version=fix.fixed_version[:255])
         for fix in advisories.fixes], batch_size=BATCH)
    return {"records": advisories.records, "cves": len(advisories.cves), "fixes": len(new),
            "fixes_added": len(new - old), "fixes_removed": len(old - new), "cves_updated": len(changed)}


def _store_kev(entries) -> dict[str, int]:
    listed = {entry.cve_id: entry for entry in entries}
    ids = _vulnerability_ids(listed)
    before = set(Vulnerability.objects.filter(known_exploited=True).values_list("cve_id", flat=True))
    Vulnerability.objects.bulk_update(
        [Vulnerability(pk=ids[cve_id], cve_id=cve_id, known_exploited=True, kev_date_added=entry.date_added,
                       kev_due_date=entry.due_date, kev_ransomware=entry.ransomware)
         for cve_id, entry in listed.items()],
        ["known_exploited", "kev_date_added", "kev_due_date", "kev_ransomware"], batch_size=BATCH)
    dropped = sorted(before - set(listed))
    for start in range(0, len(dropped), BATCH):
        Vulnerability.objects.filter(cve_id__in=dropped[start:start + BATCH]).update(
            known_exploited=False, kev_date_added=None, kev_due_date=None, kev_ransomware=False)
    return {"entries": len(listed), "added": len(set(listed) - before), "removed": len(dropped)}


def _store_epss(epss) -> dict[str, int]:
    """A full EPSS file replaces every score: CVEs it no longer lists lose theirs."""
    ids = _vulnerability_ids(score.cve_id for score in epss.scores)
    Vulnerability.objects.bulk_update(
        [Vulnerability(pk=ids[score.cve_id], epss_score=score.score, epss_percentile=score.percentile,
                       epss_date=epss.score_date) for score in epss.scores],
        ["epss_score", "epss_percentile", "epss_date"], batch_size=BATCH)
    listed = set(ids.values())
    stale = [pk for pk in Vulnerability.objects.filter(epss_score__isnull=False).values_list("pk", flat=True)
             if pk not in listed]
    for start in range(0, len(stale), BATCH):
        Vulnerability.objects.filter(pk__in=stale[start:start + BATCH]).update(
            epss_score=None, epss_percentile=None, epss_date=None)
    return {"scores": len(epss.scores), "cleared": len(stale)}
