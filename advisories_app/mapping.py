"""Which pending updates fix which CVEs on which machines: the Exposure table, recomputed from the fleet
and the advisories in one transaction (writing only what changed).

Version rules cannot run in SQL, but a fleet makes few distinct upgrades: 10,000 Debian 12 machines
pending "openssl 3.0.15-1~deb12u1 → 3.0.17-1~deb12u2" are one comparison. So:

1. PlatformAlias: each distinct (os-release NAME, VERSION_ID) in the fleet → (distro, release).
2. One SELECT DISTINCT lists the upgrades (release, package, installed, available) that some
   advisory names, by the update's own name or by its source package's (PackageUpdate.source_name:
   Debian's advisories name source packages, apt reports binaries); Python compares each against
   the fixes with the release's version rules (advisories_app.platforms) and writes a VersionVerdict
   per affected CVE.
3. One DELETE and one INSERT … SELECT join every outstanding update to its verdicts: exposures that no
   longer hold go, new ones come, the others are left as they are.
4. CVE ids the agents' own package managers report on an update (PackageUpdate.cve_ids: dnf
   updateinfo, zypper patches) are added as fixed by that update, where no feed already said so.
5. UpdateRisk: one INSERT … SELECT … GROUP BY sums up each update's fixed CVEs (count, highest
   CVSS and EPSS, known exploited) for the pages that sort by risk.

Only packages with a pending update are seen: the agent reports pending updates, not its whole
installed inventory, so "no fix yet" covers a package that has some update pending for another reason.
"""

from __future__ import annotations

from collections import defaultdict

from django.db import connection, transaction

from advisories_app.choices import ExposureSource, ExposureStatus
from advisories_app.models import Exposure, FixedIn, PlatformAlias, UpdateRisk, VersionVerdict, Vulnerability
from advisories_app.platforms import machine_platform, version_less
from agents_app.choices import UpdateStatus
from agents_app.models import Agent, PackageUpdate
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_events

BATCH = 2000
# metadata["kind"] of the event saying a machine newly has an update fixing a KEV-listed CVE
# (notifications_app's "new known-exploited exposure" rules match it).
KEV_EXPOSURE_KIND = "kev_exposure"
# PackageUpdateQuerySet.outstanding() as SQL: the statuses the INSERT … SELECT leaves out.
CLOSED_STATUSES = (UpdateStatus.INSTALLED, UpdateStatus.CLOSED, UpdateStatus.IGNORED)


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _aliases_refresh() -> None:
    pairs = Agent.objects.order_by().values_list("os_name", "os_version").distinct()
    aliases = []
    for os_name, os_version in pairs:
        platform = machine_platform(os_name, os_version)
        if platform:
            aliases.append(PlatformAlias(os_name=os_name, os_version=os_version, distro=platform[0],
                                         release=platform[1]))
    PlatformAlias.objects.all().delete()
    PlatformAlias.objects.bulk_create(aliases)


def _analyze(*models) -> None:
    """Fresh statistics for the small tables just rebuilt, so the planner hashes them instead of probing
    the updates' index once per machine (PostgreSQL and SQLite both accept ANALYZE in a transaction)."""
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"ANALYZE {_table(model)}")


def _distinct_upgrades() -> list[tuple[str, str, str, str, str]]:
    """The distinct (distro, release, package, installed, available) upgrades some advisory names.

    ``package`` is the name the advisory matched: the update's own, or its source package's, so
    "libssl3 3.0.13-1~deb12u1 → 3.0.14-1~deb12u2" with source openssl gives an "openssl" upgrade too.
    Grouped before the alias join: one pass over the updates (the CTE, read twice: once per name), then a
    few hundred groups to look up (joining first made PostgreSQL probe the updates' index once per machine
    and package).
    """
    placeholders = ", ".join(["%s"] * len(CLOSED_STATUSES))
    sql = (f"WITH g AS (SELECT a.os_name, a.os_version, u.name, u.source_name, u.current_version, "
           f"u.available_version FROM {_table(PackageUpdate)} u JOIN {_table(Agent)} a ON a.id = u.agent_id "
           f"WHERE u.status NOT IN ({placeholders}) GROUP BY 1, 2, 3, 4, 5, 6) "
           f"SELECT DISTINCT p.distro, p.release, d.package, d.current_version, d.available_version FROM ("
           f"SELECT os_name, os_version, name AS package, current_version, available_version FROM g "
           f"UNION ALL SELECT os_name, os_version, source_name, current_version, available_version FROM g "
           f"WHERE source_name <> '' AND source_name <> name) d "
           f"JOIN {_table(PlatformAlias)} p ON p.os_name = d.os_name AND p.os_version = d.os_version "
           f"WHERE EXISTS (SELECT 1 FROM {_table(FixedIn)} f WHERE f.distro = p.distro AND f.release = p.release "
           f"AND f.package = d.package)")
    with connection.cursor() as cursor:
        cursor.execute(sql, list(CLOSED_STATUSES))
        return cursor.fetchall()


def _fixes_for(upgrades) -> dict[tuple[str, str, str], dict[int, list[str]]]:
    """(distro, release, package) → {vulnerability id: fixed versions ("" = none yet)}."""
    keys = sorted({(distro, release, package) for distro, release, package, _, _ in upgrades})
    fixes: dict[tuple[str, str, str], dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    packages_by_release = defaultdict(set)
    for distro, release, package in keys:
        packages_by_release[(distro, release)].add(package)
    for (distro, release), packages in packages_by_release.items():
        names = sorted(packages)
        for start in range(0, len(names), BATCH):
            for package, vulnerability_id, fixed in FixedIn.objects.filter(
                    distro=distro, release=release, package__in=names[start:start + BATCH]
            ).values_list("package", "vulnerability_id", "fixed_version"):
                fixes[(distro, release, package)][vulnerability_id].append(fixed)
    return fixes


def upgrade_verdict(distro: str, current: str, available: str, fixed_versions: list[str]) -> tuple[str, str] | None:
    """(ExposureStatus, fixed version) of installed ``current`` → ``available`` for one CVE; None: not exposed.

    The first fixed version (the lowest, when advisories disagree) decides. A version the release's rules
    cannot parse gives no verdict rather than a guess.
    """
    released = [version for version in fixed_versions if version]
    if not released:
        return ExposureStatus.NO_FIX_YET, ""
    fixed = released[0]
    for version in released[1:]:
        if version_less(distro, version, fixed):
            fixed = version
    installed_is_affected = version_less(distro, current, fixed) if current else True
    if not installed_is_affected:
        return None
    reaches_fix = version_less(distro, available, fixed)
    if reaches_fix is None:
        return None
    return (ExposureStatus.UPDATE_FALLS_SHORT if reaches_fix else ExposureStatus.FIXED_BY_UPDATE), fixed


def _verdicts(upgrades, fixes) -> list[VersionVerdict]:
    verdicts = []
    for distro, release, package, current, available in upgrades:
        for vulnerability_id, fixed_versions in fixes[(distro, release, package)].items():
            verdict = upgrade_verdict(distro, current, available, fixed_versions)
            if verdict:
                verdicts.append(VersionVerdict(distro=distro, release=release, package=package,
                                               current_version=current, available_version=available,
                                               vulnerability_id=vulnerability_id, status=verdict[0],
                                               fixed_version=verdict[1]))
    return verdicts


def _current_exposures_join() -> str:
    """FROM … WHERE of the exposures the verdicts give: every outstanding update joined to the verdicts
    for its machine's release and its upgrade, by its own name or its source package's."""
    placeholders = ", ".join(["%s"] * len(CLOSED_STATUSES))
    return (f"FROM {_table(PackageUpdate)} u JOIN {_table(Agent)} a ON a.id = u.agent_id "
            f"JOIN {_table(PlatformAlias)} p ON p.os_name = a.os_name AND p.os_version = a.os_version "
            f"JOIN {_table(VersionVerdict)} v ON v.distro = p.distro AND v.release = p.release "
            "AND v.package IN (u.name, u.source_name) AND v.current_version = u.current_version "
            "AND v.available_version = u.available_version "
            f"WHERE u.status NOT IN ({placeholders})")


def _update_feed_exposures() -> None:
    """Delete the feed exposures that no longer hold, insert the new ones; the rest stay untouched.

    A refresh with nothing new (the usual 15-minute run) writes nothing, and a new import writes only
    what it changes: rewriting every row would cost an index insert per exposure per refresh.
    """
    exposure = _table(Exposure)
    still_holds = (f"SELECT 1 {_current_exposures_join()} AND u.id = e.package_update_id "
                   "AND v.vulnerability_id = e.vulnerability_id AND v.status = e.status "
                   "AND v.fixed_version = e.fixed_version")
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {exposure} AS e WHERE e.source = %s AND NOT EXISTS ({still_holds})",
                       [ExposureSource.FEED, *CLOSED_STATUSES])
        # ON CONFLICT rather than NOT EXISTS on the table being written: PostgreSQL planned that as a
        # scan of the growing table per row once the table had been emptied.
        cursor.execute(f"INSERT INTO {exposure} "
                       "(package_update_id, agent_id, vulnerability_id, status, fixed_version, source) "
                       "SELECT u.id, u.agent_id, v.vulnerability_id, v.status, v.fixed_version, %s "
                       f"{_current_exposures_join()} ON CONFLICT (package_update_id, vulnerability_id) DO NOTHING",
                       [ExposureSource.FEED, *CLOSED_STATUSES])


def _insert_agent_exposures() -> None:
    """CVE ids the agent's package manager attached to an update (dnf updateinfo…): fixed by that update."""
    reported = list(PackageUpdate.objects.outstanding().exclude(cve_ids=[]).values_list("pk", "agent_id", "cve_ids"))
    cve_ids = {cve_id for _, _, ids in reported for cve_id in ids if isinstance(cve_id, str)}
    Vulnerability.objects.bulk_create([Vulnerability(cve_id=cve_id[:32]) for cve_id in cve_ids],
                                      ignore_conflicts=True, batch_size=BATCH)
    ids = dict(Vulnerability.objects.filter(cve_id__in=cve_ids).values_list("cve_id", "pk")) if cve_ids else {}
    rows = [Exposure(package_update_id=update_id, agent_id=agent_id, vulnerability_id=ids[cve_id],
                     status=ExposureStatus.FIXED_BY_UPDATE, source=ExposureSource.AGENT)
            for update_id, agent_id, update_cves in reported for cve_id in set(update_cves) if cve_id in ids]
    # An update the feeds already mapped to that CVE keeps the feed's row (it knows the fixed version).
    Exposure.objects.bulk_create(rows, ignore_conflicts=True, batch_size=BATCH)


def _risk_refresh() -> None:
    UpdateRisk.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_table(UpdateRisk)} "
            "(package_update_id, cve_count, max_cvss, max_epss, known_exploited) "
            "SELECT e.package_update_id, COUNT(*), MAX(v.cvss_score), MAX(v.epss_score), "
            "CASE WHEN MAX(CASE WHEN v.known_exploited THEN 1 ELSE 0 END) = 1 THEN TRUE ELSE FALSE END "
            f"FROM {_table(Exposure)} e JOIN {_table(Vulnerability)} v ON v.id = e.vulnerability_id "
            "WHERE e.status = %s GROUP BY e.package_update_id", [ExposureStatus.FIXED_BY_UPDATE])


def exposures_refresh() -> int:
    """Recompute every Exposure (numbered steps in the module docstring); returns how many there are.

    One transaction: pages show the previous mapping until the new one is complete.
    """
    with transaction.atomic():
        _aliases_refresh()
        _analyze(PlatformAlias)
        upgrades = _distinct_upgrades()
        verdicts = _verdicts(upgrades, _fixes_for(upgrades))
        VersionVerdict.objects.all().delete()
        VersionVerdict.objects.bulk_create(verdicts, batch_size=BATCH)
        _analyze(VersionVerdict)
        Exposure.objects.filter(source=ExposureSource.AGENT).delete()
        _update_feed_exposures()
        _insert_agent_exposures()
        kev_before = _kev_updates()
        _risk_refresh()
        _record_new_kev_exposures(_kev_updates() - kev_before)
        return Exposure.objects.count()


def _kev_updates() -> set[int]:
    return set(UpdateRisk.objects.filter(known_exploited=True).values_list("package_update_id", flat=True))


def _record_new_kev_exposures(update_ids: set[int]) -> None:
    """One event per machine that newly has a pending update fixing a known-exploited (KEV) CVE, from a
    new scan or from a CVE newly listed (UpdateRisk before the refresh still holds the old verdict)."""
    found: dict = defaultdict(lambda: (set(), set()))
    ids = sorted(update_ids)
    for start in range(0, len(ids), BATCH):
        for agent_id, package, cve_id in Exposure.objects.filter(
                package_update_id__in=ids[start:start + BATCH], status=ExposureStatus.FIXED_BY_UPDATE,
                vulnerability__known_exploited=True).values_list("agent_id", "package_update__name",
                                                                 "vulnerability__cve_id"):
            found[agent_id][0].add(package)
            found[agent_id][1].add(cve_id)
    agents = Agent.objects.in_bulk(list(found))
    events = []
    for agent_id, (packages, cves) in found.items():
        agent = agents.get(agent_id)
        if agent is None:
            continue
        more = " …" if len(cves) > 5 else ""
        events.append({"event_type": EventType.AGENT_SCAN, "subtype": EventSubtype.WARNING,
                       "severity": Severity.ERROR, "component": Component.SECURITY, "agent": agent,
                       "message": f"{agent.hostname} has updates fixing known-exploited "
                                  f"{', '.join(sorted(cves)[:5])}{more}: {', '.join(sorted(packages)[:5])}",
                       "metadata": {"kind": KEV_EXPOSURE_KIND, "cves": sorted(cves), "packages": sorted(packages)}})
    # In a constant number of queries: the first KEV import can expose much of a fleet at once.
    record_events(events)
