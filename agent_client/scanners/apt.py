"""APT scanner and installer (Debian, Ubuntu and derivatives).

A scan costs a fixed number of subprocesses whatever the number of packages:

1. ``apt-get update``, only when the last successful refresh is older than
   ``refresh_interval_seconds`` (a stamp file in ``state_dir`` remembers it);
2. one simulated ``apt-get -s dist-upgrade``: its ``Inst`` lines give the
   current version, the candidate version and the candidate's origins, its
   "kept back" section names the held-back packages;
3. ``apt-mark showhold`` for packages pinned with ``apt-mark hold``;
4. one batched ``apt-cache show`` for download sizes and source package names,
   plus one batched ``apt-cache policy`` for held-back packages only (they have
   no ``Inst`` line, so their origin has to come from the cache).

Each apt process reads the package lists into its binary cache first. Where apt
keeps no cache file (``Dir::Cache::pkgcache ""``, as Debian's Docker images set
it), every process rebuilds that cache from the lists: on a Debian 12 host with
compressed lists, about 2 s of CPU each, so the scan cost four times what
``apt-get -s upgrade`` costs. The scan then gives its apt processes a cache file
of its own in a private temporary folder (0700, removed after the scan): the
first process builds it, the others map it, and apt checks it against the lists
and the dpkg status as it checks its usual one. ``apt-config`` says which case
this is. ``apt-cache show`` reads each candidate's record from the (compressed)
list, so the names go in sorted order: the lists are sorted, and reading them
forward decompresses each one about once rather than once per package.

Source package: Debian's advisories (its security tracker, its OSV records) name
source packages (``openssl``, ``glibc``) where apt names binaries (``libssl3``,
``libc6``). The candidate's ``Source`` field, in the same ``apt-cache show``
records as the size, goes into ``metadata["source"]`` when it differs from the
binary name, so the server can match the update against those advisories.

Why ``dist-upgrade`` and not ``upgrade``: the installer runs
``apt-get install --only-upgrade NAMES``, which may pull in new dependencies
just as ``dist-upgrade`` may. ``apt-get upgrade`` never installs a new package,
so it would hide (as "kept back") every update that needs one - new kernel ABI
packages, a library split - although the installer can apply it. With
``dist-upgrade`` "kept back" means what an admin needs to know: the package is
held (``apt-mark hold``), pinned, deferred by phasing, or its upgrade cannot be
resolved. Those rows are still reported, flagged ``{"held_back": true}``.

Phased updates (``Phased-Update-Percentage`` below 100): apt 2.7 lists the ones it
defers under "deferred due to phasing"; apt 2.6 lists them under "kept back" and
``apt-cache policy`` marks the candidate ``1.1 500 (phased 0%)``. Either way the row
gets ``{"phased": true, "phased_percentage": N}``. apt decides per machine: it
applies phasing only with a machine id (``APT::Machine-ID`` or
``Dir::Etc::machine-id``) and when ``ischroot`` (``Dir::Bin::ischroot``) says this
is no chroot, and then defers the update unless a draw seeded with the source
package, its version and the machine id falls within the percentage.
``APT::Get::Always-Include-Phased-Updates`` / ``Never-Include-Phased-Updates``
override it. The scanner reports what this apt decided; it does not redo the draw.

Severity mapping (APT carries no severity of its own): a candidate served from
a security archive - suite ending in ``-security`` (``bookworm-security``,
``jammy-security``) or a label ending in ``-Security`` (``Debian-Security``) -
is ``is_security=True`` with severity ``important``; anything else is
``unknown``. Debian's security tracker grades individual CVEs, but that data is
not in the APT cache and the agent does not fetch it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Optional

from agent_client.protocol import PackageType
from agent_client.scanners.base import (
    CommandOutput,
    OperationResult,
    ScanError,
    Scanner,
    UpdateRecord,
    run_command,
    tail,
)

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/etc/redflag/agent"
DEFAULT_REFRESH_INTERVAL_SECONDS = 3600.0
REFRESH_STAMP_NAME = "apt-lists-refreshed.stamp"
SECURITY_SEVERITY = "important"

# "Inst name [current] (candidate Label:Version/Suite, Label2:Suite2 [arch])";
# a new package has no "[current]"; apt may append " [pkg]" notes after it.
INST_LINE = re.compile(
    r"^Inst (?P<name>\S+)"
    r"(?: \[(?P<current>[^\]]+)\])?"
    r" \((?P<candidate>\S+) (?P<origins>.*?) ?\[(?P<arch>[^\]]+)\]\)"
)
REMV_LINE = re.compile(r"^Remv (?P<name>\S+)(?: \[(?P<current>[^\]]+)\])?")
# With APT::Get::Show-Versions, list entries read "name (current => candidate)".
SHOWN_VERSIONS = re.compile(r"^(?P<name>\S+) \((?P<current>[^ )]+) => (?P<candidate>[^ )]+)\)$")
# "apt list --upgradable": "name/suite[,suite] version arch [upgradable from: current]".
UPGRADABLE_LINE = re.compile(
    r"^(?P<name>[^/\s]+)/\S+ (?P<version>\S+) (?P<arch>\S+) \[upgradable from: [^\]]+\]$"
)
# dpkg's own progress lines during a real install.
UNPACKING_LINE = re.compile(
    r"^Unpacking (?P<name>\S+) \((?P<new>[^)]+)\)(?: over \((?P<old>[^)]+)\))?"
)
SKIPPING_LINE = re.compile(r"^Skipping (?P<name>\S+), it is not installed and only upgrades are requested")
# Package names go after "--": apt's command-line parser (apt-pkg/contrib/cmndline.cc) stops
# reading options there, so even a name that slipped past Scanner.check_names (the grammar in
# protocol.package_name_problem, which refuses a leading "-") is an operand, never "-o Key=Value".
# Checked on Debian 12's apt 2.6.1: `apt-get -s install -- -o APT::Get::Trivial-Only=false` answers
# "Unable to locate package -o". apt-cache and dpkg-query (getopt) accept "--" the same way.
END_OF_OPTIONS = "--"
DPKG_NO_MATCH = re.compile(r"^dpkg-query: no packages found matching (?P<name>\S+)$", re.MULTILINE)

HELD_BACK_HEADERS = {
    "The following packages have been kept back:": "kept_back",
    "The following upgrades have been deferred due to phasing:": "phased",
}
HELD_CHANGE_HEADER = "The following held packages will be changed:"


# --- parsing (pure functions, unit-tested on captured real output) ---------


def parse_origins(text: str) -> list[tuple[str, str]]:
    """Split apt's release string into (label, suite) pairs.

    apt prints each source as ``Label:Version/Suite`` where label and version
    are optional (``stable``, ``12/stable``, ``Debian:12.5/stable``), or the
    host name when the source has no Release file.
    """
    origins = []
    for entry in text.split(", "):
        entry = entry.strip()
        if not entry:
            continue
        label, _, rest = entry.rpartition(":") if ":" in entry else ("", "", entry)
        suite = rest.rsplit("/", 1)[-1]
        origins.append((label, suite))
    return origins


def is_security_origin(label: str, suite: str) -> bool:
    return suite.lower().endswith("-security") or label.lower().endswith("-security")


def format_repository(label: str, suite: str) -> str:
    return f"{label}/{suite}" if label else suite


def parse_simulation(output: str) -> dict[str, object]:
    """Parse ``apt-get -s`` output.

    Returns ``{"inst": [...], "remv": [...], "kept_back": {name: (cur, cand)},
    "phased": {...}, "held_changes": [names]}``; each ``inst`` entry is a dict
    with name, current (``""`` for a new package), candidate, arch and
    origins (list of (label, suite)).
    """
    inst: list[dict[str, object]] = []
    remv: list[dict[str, str]] = []
    sections: dict[str, dict[str, tuple[str, str]]] = {"kept_back": {}, "phased": {}}
    held_changes: list[str] = []
    current_section: Optional[str] = None
    for line in output.splitlines():
        if current_section is not None and line.startswith(" "):
            for item in _list_items(line):
                name, versions = item
                if current_section == "held_changes":
                    held_changes.append(name)
                else:
                    sections[current_section][name] = versions
            continue
        current_section = None
        stripped = line.strip()
        if stripped in HELD_BACK_HEADERS:
            current_section = HELD_BACK_HEADERS[stripped]
        elif stripped == HELD_CHANGE_HEADER:
            current_section = "held_changes"
        elif line.startswith("Inst "):
            match = INST_LINE.match(line)
            if match is None:
                raise ScanError(f"unrecognised apt-get simulation line: {line!r}")
            inst.append(
                {
                    "name": match.group("name"),
                    "current": match.group("current") or "",
                    "candidate": match.group("candidate"),
                    "arch": match.group("arch"),
                    "origins": parse_origins(match.group("origins")),
                }
            )
        elif line.startswith("Remv "):
            match = REMV_LINE.match(line)
            if match is not None:
                remv.append({"name": match.group("name"), "current": match.group("current") or ""})
    return {
        "inst": inst,
        "remv": remv,
        "kept_back": sections["kept_back"],
        "phased": sections["phased"],
        "held_changes": held_changes,
    }


def _list_items(line: str) -> list[tuple[str, tuple[str, str]]]:
    """Entries of an indented apt package list, with or without Show-Versions."""
    stripped = line.strip()
    match = SHOWN_VERSIONS.match(stripped)
    if match is not None:
        return [(match.group("name"), (match.group("current"), match.group("candidate")))]
    return [(name, ("", "")) for name in stripped.split()]


def parse_cache_records(output: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """``apt-cache show`` records → {(package, version, arch): {field: value}} (continuation lines left out)."""
    records: dict[tuple[str, str, str], dict[str, str]] = {}
    for record in output.split("\n\n"):
        fields: dict[str, str] = {}
        for line in record.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if {"Package", "Version", "Architecture"} <= fields.keys():
            records[(fields["Package"], fields["Version"], fields["Architecture"])] = fields
    return records


def parse_cache_sizes(output: str) -> dict[tuple[str, str, str], int]:
    """``apt-cache show`` records → {(package, version, arch): download size}."""
    sizes: dict[tuple[str, str, str], int] = {}
    for key, fields in parse_cache_records(output).items():
        try:
            sizes[key] = int(fields["Size"])
        except (KeyError, ValueError):
            continue
    return sizes


def source_package(field: str) -> str:
    """The name in a ``Source`` field: ``openssl``, or ``bash (5.2.15-2)`` for a binary rebuilt
    without its source changing (a binNMU), which names the source version too."""
    return field.split(" ", 1)[0]


def parse_policy(output: str) -> dict[str, dict[str, object]]:
    """``apt-cache policy NAMES`` → {name: {installed, candidate, sources}}.

    ``sources`` are the (uri, "suite/component") pairs that serve the candidate;
    ``phased_percentage`` is the candidate's ``Phased-Update-Percentage`` when apt
    marks it ``(phased N%)``, else None.
    """
    result: dict[str, dict[str, object]] = {}
    name: Optional[str] = None
    in_candidate = False
    version_line = re.compile(
        r"^ (?:\*\*\*| {3}) (?P<version>\S+) (?P<priority>-?\d+)(?: \(phased (?P<phased>\d+)%\))?$"
    )
    source_line = re.compile(r"^\s+-?\d+ (?P<uri>\S+) (?P<dist>\S+)(?: \S+)? Packages$")
    for line in output.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            name = line[:-1]
            result[name] = {"installed": "", "candidate": "", "sources": [], "phased_percentage": None}
            in_candidate = False
            continue
        if name is None:
            continue
        entry = result[name]
        stripped = line.strip()
        if stripped.startswith("Installed:"):
            entry["installed"] = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("Candidate:"):
            entry["candidate"] = stripped.split(":", 1)[1].strip()
        else:
            version_match = version_line.match(line)
            if version_match is not None:
                in_candidate = version_match.group("version") == entry["candidate"]
                if in_candidate and version_match.group("phased") is not None:
                    entry["phased_percentage"] = int(version_match.group("phased"))
                continue
            source_match = source_line.match(line)
            if source_match is not None and in_candidate:
                entry["sources"].append((source_match.group("uri"), source_match.group("dist")))  # type: ignore[union-attr]
    return result


def parse_upgradable_list(output: str, native_arch: str) -> dict[str, str]:
    """``apt list --upgradable`` rows, ``name/suites version arch [upgradable from: current]``,
    → {name: version}; ``name:arch`` for an arch that is neither ``native_arch`` nor ``all``."""
    listing: dict[str, str] = {}
    for line in output.splitlines():
        match = UPGRADABLE_LINE.match(line)
        if match is None:
            continue
        name, arch = match.group("name"), match.group("arch")
        if arch not in (native_arch, "all"):
            name = f"{name}:{arch}"
        listing[name] = match.group("version")
    return listing


def parse_unpacked(output: str) -> list[dict[str, str]]:
    """dpkg's "Unpacking name (new) over (old)" lines from a real install."""
    changed = []
    for line in output.splitlines():
        match = UNPACKING_LINE.match(line.strip())
        if match is not None:
            changed.append(
                {
                    "name": match.group("name"),
                    "current_version": match.group("old") or "",
                    "new_version": match.group("new"),
                    "action": "upgrade" if match.group("old") else "install",
                }
            )
    return changed


def normalize_apt_options(options: Iterable[str]) -> list[str]:
    """Accept ``"-o Key=Value"``, ``"-oKey=Value"`` or ``"Key=Value"``; return argv."""
    argv: list[str] = []
    for option in options:
        text = option.strip()
        if text.startswith("-o"):
            text = text[2:].strip()
        if "=" not in text or text.startswith("="):
            raise ValueError(f"apt option must look like '-o Key=Value': {option!r}")
        argv.extend(["-o", text])
    return argv


# --- the scanner ------------------------------------------------------------


class AptScanner(Scanner):
    package_type = PackageType.APT

    def __init__(
        self,
        *,
        state_dir: str = DEFAULT_STATE_DIR,
        refresh_interval_seconds: float = DEFAULT_REFRESH_INTERVAL_SECONDS,
        apt_options: Sequence[str] = (),
        lock_timeout_seconds: int = 300,
        command_timeout_seconds: float = 1800,
    ) -> None:
        """``apt_options`` are extra ``-o Key=Value`` settings given to every
        apt command (tests point apt at a private repository with
        ``Dir::Etc::sourcelist`` and friends); production passes none.
        ``lock_timeout_seconds`` lets apt wait for the dpkg lock that
        unattended-upgrades or an admin's shell may hold."""
        self.state_dir = state_dir
        self.refresh_interval_seconds = refresh_interval_seconds
        self.apt_options = normalize_apt_options(apt_options)
        self.lock_timeout_seconds = lock_timeout_seconds
        self.command_timeout_seconds = command_timeout_seconds

    # -- availability ---------------------------------------------------

    def is_available(self) -> bool:
        return shutil.which("apt-get") is not None and shutil.which("dpkg-query") is not None

    # -- scan -----------------------------------------------------------

    @property
    def refresh_stamp_path(self) -> str:
        return os.path.join(self.state_dir, REFRESH_STAMP_NAME)

    def lists_are_fresh(self) -> bool:
        try:
            refreshed_at = os.stat(self.refresh_stamp_path).st_mtime
        except OSError:
            return False
        age = time.time() - refreshed_at
        # A stamp from the future (clock moved back) is not trusted.
        return 0 <= age < self.refresh_interval_seconds

    def refresh_lists(self, *, force: bool = False) -> bool:
        """Run ``apt-get update`` unless the lists are fresh; True if it ran."""
        if not force and self.lists_are_fresh():
            return False
        result = self._update_lists()
        if result.exit_code != 0:
            raise ScanError(
                f"apt-get update failed with exit code {result.exit_code}: "
                f"{tail(_combined(result), 2000).strip()}"
            )
        return True

    def _update_lists(self) -> CommandOutput:
        result = self._apt_get(["update"], lock=True)
        if result.exit_code == 0:
            self._touch_refresh_stamp()
        return result

    def _refresh_before_operation(self, started: float) -> Optional[OperationResult]:
        """Stale lists can name .debs the mirror no longer has: refresh first
        (same interval as the scan); a failed refresh fails the operation."""
        if self.lists_are_fresh():
            return None
        result = self._update_lists()
        if result.exit_code == 0:
            return None
        return _operation_result(
            result, _combined(result), ["apt-get update failed; no package was changed"], started, [], []
        )

    def _touch_refresh_stamp(self) -> None:
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            with open(self.refresh_stamp_path, "w", encoding="ascii") as stamp:
                stamp.write(f"{time.time():.0f}\n")
        except OSError as exc:
            # The scan itself is still valid; the next one simply refreshes again.
            logger.warning("cannot record the apt lists refresh in %s: %s", self.refresh_stamp_path, exc)

    def scan(self) -> list[UpdateRecord]:
        self.refresh_lists()
        if self._keeps_cache_file():
            return self._scan([])
        try:
            cache_dir = tempfile.TemporaryDirectory(prefix="redflag-apt-cache-")  # mkdtemp: 0700
        except OSError as exc:
            logger.info("no private apt cache for this scan (%s); each apt process builds its own", exc)
            return self._scan([])
        with cache_dir:
            return self._scan(["-o", f"Dir::Cache::pkgcache={os.path.join(cache_dir.name, 'pkgcache.bin')}",
                               "-o", "Dir::Cache::srcpkgcache="])

    def _keeps_cache_file(self) -> bool:
        """Whether apt keeps its binary cache in a file (module docstring); unknown counts as yes."""
        result = run_command(["apt-config", *self.apt_options, "shell", "PKGCACHE", "Dir::Cache::pkgcache/f"],
                             timeout=self.command_timeout_seconds)
        return result.exit_code != 0 or result.stdout.strip() != "PKGCACHE=''"

    def _scan(self, cache_options: list[str]) -> list[UpdateRecord]:
        """The scan proper; ``cache_options`` (``-o Key=Value`` pairs) go to every apt process it starts."""
        simulation = self._apt_get(
            ["-s", *cache_options, "-o", "APT::Get::Show-Versions=true", "dist-upgrade"], lock=False
        )
        if simulation.exit_code != 0:
            raise ScanError(
                f"apt-get -s dist-upgrade failed with exit code {simulation.exit_code}: "
                f"{tail(_combined(simulation), 2000).strip()}"
            )
        parsed = parse_simulation(simulation.stdout)
        held = self._held_packages(cache_options)

        upgrades = [entry for entry in parsed["inst"] if entry["current"]]  # type: ignore[union-attr]
        held_back: dict[str, tuple[str, str]] = dict(parsed["kept_back"])  # type: ignore[arg-type]
        phased: dict[str, tuple[str, str]] = dict(parsed["phased"])  # type: ignore[arg-type]
        policy = self._policy(list(held_back) + list(phased), cache_options)

        records = [self._record_from_inst(entry, held) for entry in upgrades]
        for name, versions in list(held_back.items()) + list(phased.items()):
            records.append(self._record_from_policy(name, versions, policy.get(name), held, name in phased))

        self._add_cache_fields(records, cache_options)
        return records

    def _record_from_inst(self, entry: dict[str, object], held: set[str]) -> UpdateRecord:
        origins: list[tuple[str, str]] = entry["origins"]  # type: ignore[assignment]
        security = [origin for origin in origins if is_security_origin(*origin)]
        chosen = security[0] if security else (origins[0] if origins else ("", ""))
        metadata: dict[str, object] = {
            "arch": entry["arch"],
            "origins": [format_repository(*origin) for origin in origins],
        }
        if entry["name"] in held:
            metadata["held"] = True
        return UpdateRecord(
            package_type=self.package_type,
            name=str(entry["name"]),
            current_version=str(entry["current"]),
            available_version=str(entry["candidate"]),
            severity=SECURITY_SEVERITY if security else "unknown",
            is_security=bool(security),
            repository=format_repository(*chosen),
            metadata=metadata,
        )

    def _record_from_policy(
        self,
        name: str,
        versions: tuple[str, str],
        policy: Optional[dict[str, object]],
        held: set[str],
        deferred_by_phasing: bool,
    ) -> UpdateRecord:
        current, candidate = versions
        sources: list[tuple[str, str]] = []
        phased_percentage: Optional[int] = None
        if policy is not None:
            current = current or str(policy["installed"])
            candidate = candidate or str(policy["candidate"])
            sources = policy["sources"]  # type: ignore[assignment]
            phased_percentage = policy["phased_percentage"]  # type: ignore[assignment]
        suites = [dist for _, dist in sources]
        security = [dist for dist in suites if is_security_origin("", dist.split("/", 1)[0])]
        metadata: dict[str, object] = {"held_back": True, "origins": suites}
        if name in held:
            metadata["held"] = True
        # apt 2.6 has no section of its own for a deferral: a kept-back phased candidate is one.
        if deferred_by_phasing or phased_percentage is not None:
            metadata["phased"] = True
        if phased_percentage is not None:
            metadata["phased_percentage"] = phased_percentage
        return UpdateRecord(
            package_type=self.package_type,
            name=name,
            current_version=current,
            available_version=candidate,
            severity=SECURITY_SEVERITY if security else "unknown",
            is_security=bool(security),
            repository=security[0] if security else (suites[0] if suites else ""),
            metadata=metadata,
        )

    def _held_packages(self, cache_options: Sequence[str] = ()) -> set[str]:
        result = run_command(
            ["apt-mark", *self.apt_options, *cache_options, "showhold"], timeout=self.command_timeout_seconds
        )
        if result.exit_code != 0:
            raise ScanError(f"apt-mark showhold failed: {tail(_combined(result), 2000).strip()}")
        return {line.strip() for line in result.stdout.splitlines() if line.strip()}

    def _policy(self, names: list[str], cache_options: Sequence[str] = ()) -> dict[str, dict[str, object]]:
        if not names:
            return {}
        result = run_command(
            ["apt-cache", *self.apt_options, *cache_options, "policy", END_OF_OPTIONS, *names],
            timeout=self.command_timeout_seconds,
        )
        if result.exit_code != 0:
            raise ScanError(f"apt-cache policy failed: {tail(_combined(result), 2000).strip()}")
        return parse_policy(result.stdout)

    def _add_cache_fields(self, records: list[UpdateRecord], cache_options: Sequence[str] = ()) -> None:
        """Download sizes and source package names of the candidates, from one ``apt-cache show``;
        best effort, as a missing record must not fail the whole scan (the update is still real)."""
        if not records:
            return
        result = run_command(
            ["apt-cache", *self.apt_options, *cache_options, "show", "--no-all-versions", END_OF_OPTIONS,
             *sorted({record.name for record in records})],
            timeout=self.command_timeout_seconds,
        )
        if result.exit_code != 0:
            logger.info("apt-cache show exited %s; sizes and source names may be missing", result.exit_code)
        cache = parse_cache_records(result.stdout)
        by_name_version: dict[tuple[str, str], dict[str, str]] = {}
        for (package, version, _arch), fields in cache.items():
            by_name_version.setdefault((package, version), fields)
        for record in records:
            # The scan names a foreign-architecture package "name:arch" (as apt-get's simulation
            # does); apt-cache's records say "Package: name" and "Architecture: arch".
            package = record.name.split(":", 1)[0]
            arch = str(record.metadata.get("arch", ""))
            fields = cache.get((package, record.available_version, arch))
            if fields is None:
                fields = by_name_version.get((package, record.available_version), {})
            try:
                record.size_bytes = int(fields["Size"])
            except (KeyError, ValueError):
                record.size_bytes = None
            source = source_package(fields.get("Source", ""))
            if source and source != package:
                record.metadata["source"] = source

    def native_listing(self) -> dict[str, str]:
        """``apt list --upgradable``: every installed package whose candidate is newer, name ->
        candidate, kept-back ones included (as the scan reports them). A package of a foreign
        architecture is listed by apt as "name" with its arch in a column; it is keyed
        ``name:arch`` here, as apt-get's simulation (and so the scan) names it."""
        listing = run_command(["apt", *self.apt_options, "list", "--upgradable"], timeout=self.command_timeout_seconds)
        if listing.exit_code != 0:
            raise ScanError(f"apt list --upgradable failed: {tail(_combined(listing), 2000).strip()}")
        native = run_command(["dpkg", "--print-architecture"], timeout=self.command_timeout_seconds)
        if native.exit_code != 0:
            raise ScanError(f"dpkg --print-architecture failed: {tail(_combined(native), 2000).strip()}")
        return parse_upgradable_list(listing.stdout, native.stdout.strip())

    # -- dry-run and install ----------------------------------------------

    def _unknown_names(self, names: list[str], started: float) -> Optional[OperationResult]:
        """A failed result when dpkg knows no package by one of ``names``; None when it knows them all.

        apt-get looks a name up exactly first; only when no package has that name does it
        try the name as a glob and then as a regular expression, so "redflag-test-.+" (a
        valid name by the grammar) would upgrade every installed package it matches.
        --only-upgrade acts only on installed packages anyway, so a name dpkg does not know
        can never be upgraded: the operation fails here and apt-get is not started.
        dpkg-query -W matches exactly for these names (the grammar admits none of its glob
        characters, "*?[").
        """
        query = run_command(["dpkg-query", "-W", "-f=${Package}\n", END_OF_OPTIONS, *names],
                            timeout=self.command_timeout_seconds)
        unknown = [match.group("name") for match in DPKG_NO_MATCH.finditer(query.stderr)]
        if not unknown:
            return None
        return _operation_result(
            query, query.stderr,
            [f"not installed, so not upgraded: {', '.join(unknown)}; apt-get was not started "
             "(it would read a name no package has as a pattern)"],
            started, [], [],
        )

    def _dry_run(self, names: list[str]) -> OperationResult:
        started = time.monotonic()
        refused = self._unknown_names(names, started)
        if refused is not None:
            return refused
        refresh_failed = self._refresh_before_operation(started)
        if refresh_failed is not None:
            return refresh_failed
        result = self._apt_get(["-s", "install", "--only-upgrade", END_OF_OPTIONS, *names], lock=False)
        output = _combined(result)
        problems: list[str] = []
        packages: list[dict[str, str]] = []
        dependencies: list[str] = []
        if result.exit_code == 0:
            parsed = parse_simulation(result.stdout)
            requested = set(names)
            for entry in parsed["inst"]:  # type: ignore[union-attr]
                origins: list[tuple[str, str]] = entry["origins"]
                packages.append(
                    {
                        "name": str(entry["name"]),
                        "current_version": str(entry["current"]),
                        "new_version": str(entry["candidate"]),
                        "action": "upgrade" if entry["current"] else "install",
                        "repository": ", ".join(format_repository(*origin) for origin in origins),
                    }
                )
                if entry["name"] not in requested:
                    dependencies.append(str(entry["name"]))
            for entry in parsed["remv"]:  # type: ignore[union-attr]
                packages.append(
                    {"name": entry["name"], "current_version": entry["current"], "new_version": "", "action": "remove"}
                )
            problems = _not_installed_problems(result.stdout)
            if parsed["held_changes"]:
                problems.append(
                    "held packages would be changed, which the install refuses: "
                    + ", ".join(parsed["held_changes"])  # type: ignore[arg-type]
                    + " (apt-mark unhold them first)"
                )
        return _operation_result(result, output, problems, started, packages, dependencies)

    def _install(self, names: list[str]) -> OperationResult:
        started = time.monotonic()
        refused = self._unknown_names(names, started)
        if refused is not None:
            return refused
        refresh_failed = self._refresh_before_operation(started)
        if refresh_failed is not None:
            return refresh_failed
        result = self._apt_get(
            [
                "install",
                "-y",
                "--only-upgrade",
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
                END_OF_OPTIONS,
                *names,
            ],
            lock=True,
        )
        output = _combined(result)
        packages = parse_unpacked(result.stdout)
        requested = set(names)
        dependencies = [entry["name"] for entry in packages if entry["name"] not in requested]
        problems: list[str] = []
        if result.exit_code == 0:
            problems = _not_installed_problems(result.stdout)
            problems.extend(self._verify_installed(packages))
        return _operation_result(result, output, problems, started, packages, dependencies)

    def _verify_installed(self, packages: list[dict[str, str]]) -> list[str]:
        """Check with dpkg that what apt unpacked is now installed and configured."""
        if not packages:
            return []
        query = run_command(
            ["dpkg-query", "-W", "-f=${binary:Package} ${Version} ${db:Status-Status}\n", END_OF_OPTIONS]
            + [entry["name"] for entry in packages],
            timeout=self.command_timeout_seconds,
        )
        installed: dict[str, tuple[str, str]] = {}
        for line in query.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                installed[parts[0]] = (parts[1], parts[2])
                installed.setdefault(parts[0].split(":", 1)[0], (parts[1], parts[2]))
        problems = []
        for entry in packages:
            version, status = installed.get(entry["name"], ("", "not installed"))
            if version != entry["new_version"] or status != "installed":
                problems.append(
                    f"{entry['name']} should be {entry['new_version']} (installed) but dpkg reports "
                    f"{version or '-'} ({status})"
                )
        return problems

    # -- helpers ------------------------------------------------------------

    def _apt_get(self, args: list[str], *, lock: bool) -> CommandOutput:
        argv = ["apt-get", "-q", *self.apt_options]
        if lock:
            argv += ["-o", f"DPkg::Lock::Timeout={int(self.lock_timeout_seconds)}"]
        return run_command(argv + args, timeout=self.command_timeout_seconds)


def _combined(result: CommandOutput) -> str:
    if result.stderr and result.stdout:
        return result.stdout.rstrip("\n") + "\n" + result.stderr
    return result.stdout or result.stderr


def _not_installed_problems(stdout: str) -> list[str]:
    skipped = [match.group("name") for match in map(SKIPPING_LINE.match, stdout.splitlines()) if match]
    if not skipped:
        return []
    return [f"not installed, so not upgraded: {', '.join(skipped)}"]


def _operation_result(
    result: CommandOutput,
    output: str,
    problems: list[str],
    started: float,
    packages: list[dict[str, str]],
    dependencies: list[str],
) -> OperationResult:
    succeeded = result.exit_code == 0 and not problems
    if problems:
        output = output.rstrip("\n") + "\n" + "\n".join(f"redflag: {problem}" for problem in problems) + "\n"
    if result.exit_code != 0:
        output = output.rstrip("\n") + f"\nredflag: {result.argv[0]} exited with code {result.exit_code}\n"
    return OperationResult(
        succeeded=succeeded,
        exit_code=result.exit_code,
        output_tail=tail(output),
        duration_seconds=time.monotonic() - started,
        dependencies=dependencies,
        packages=packages,
    )
