"""DNF scanner and installer (Fedora, RHEL and their rebuilds).

Only the ``dnf`` command line is used, through :func:`run_command`; nothing here
imports dnf's Python bindings, which live in the system Python, not the agent's.

A scan costs a bounded number of dnf calls, however many updates are pending:

1. ``dnf check-update``: exit 100 means updates are listed, 0 means none,
   anything else is a :class:`ScanError` carrying dnf's output.
2. ``dnf repoquery --installed`` for all of those names at once: installed versions.
3. Advisories: dnf 4 needs two calls, ``updateinfo list --updates`` (which
   advisory covers which package) and ``updateinfo info --updates`` (type,
   severity, CVEs of each advisory); dnf 5 answers both with
   ``advisory list --updates --json`` plus the same with ``--with-cve``.

Two shapes of check-update do not say what ``dnf upgrade`` would do, and for those
only, one more call, ``dnf upgrade --assumeno`` for the whole machine, is asked
(the resolver's own answer, declined at the prompt):

* one version offered under two arches (``noarch`` and ``x86_64``): check-update
  lists both, the transaction installs one (checked on dnf 4.14: the noarch one,
  even over an installed x86_64). Only the rows the transaction upgrades are kept.
* a package listed only under "Obsoleting Packages": a new name that replaces an
  installed one. ``dnf upgrade NEW`` and ``dnf upgrade OLD`` both install it, so it
  is reported under its own name, with the packages it replaces in metadata, when
  the transaction installs it. dnf 4's updateinfo answers only for installed names,
  so its advisory is found with ``repoquery --security`` and ``--sec-severity``
  instead (bounded: at most five calls, only when such a package exists); the
  advisory id and CVEs are not known by that route.

The parsers are module-level functions so the tests can feed them outputs
recorded from a real dnf (tests/agent/dnf_fixtures/).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import re
import shutil
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

# Searched in this order: plain ``dnf`` is whatever the distribution made the
# default (dnf 4 on EL8/EL9 and Debian, dnf 5 on Fedora 41+).
DNF_BINARIES = ("dnf", "dnf-3", "dnf5")

EXIT_UPDATES_AVAILABLE = 100

# What every dry-run and install is run with, whatever dnf.conf and the .repo files say: packages
# come only from enabled repositories and only with a verified signature. A repository file may
# say gpgcheck=0, and --setopt=gpgcheck=1 alone does not override that (checked on dnf 4.14: the
# repository's own value wins), so "*.gpgcheck=1" sets it on every repository as well.
# localpkg_gpgcheck=1 covers a package file given on the command line; the name grammar already
# refuses paths, URLs and "x.rpm", so this is the second line, not the first. dnf 5 reads
# "gpgcheck" as the old name of pkg_gpgcheck.
# repo_gpgcheck (a signed repomd.xml) is not forced: Fedora's and RHEL's own repositories do not
# sign their metadata, so forcing it would make every install fail there. Where an admin turned it
# on, it stays on.
SIGNATURE_OPTIONS = ("--setopt=gpgcheck=1", "--setopt=*.gpgcheck=1", "--setopt=localpkg_gpgcheck=1")
# dnf 4 (argparse) stops reading options at "--": a name after it is an operand, never an option.
# dnf 5 learnt "--" only in 5.4.3 (libdnf5-cli "Stop option parsing after --"); older dnf 5 answers
# 'Unknown argument "--"'. So for dnf 5 it is left out and the name grammar (no leading "-") is the
# guard, as it is for every tool.
END_OF_OPTIONS = "--"

SEVERITY_MAP = {
    "critical": "critical",
    "important": "important",
    "moderate": "moderate",
    "low": "low",
}
SEVERITY_RANK = {"unknown": 0, "low": 1, "moderate": 2, "important": 3, "critical": 4}

# dnf 4's `updateinfo list` label column (dnf/cli/commands/updateinfo.py).
_SECURITY_LABEL = re.compile(r"^(?P<severity>[A-Za-z]+)/Sec\.$")
_LIST_TYPES = ("bugfix", "enhancement", "security", "newpackage", "unknown")

# A unique prefix keeps repoquery's answer apart from repository progress
# lines dnf may print on the same stream.
REPOQUERY_MARK = "REDFLAG-RPM"
REPOQUERY_FORMAT = REPOQUERY_MARK + "|%{name}|%{arch}|%{epoch}|%{version}|%{release}\\n"

_NO_MATCH = re.compile(r"^No match for argument:\s*(?P<name>\S+)", re.MULTILINE)
_NOT_INSTALLED = re.compile(r"^Package (?P<name>\S+) available, but not installed\.", re.MULTILINE)


def map_severity(value: Optional[str]) -> str:
    """dnf's advisory severity (Critical, Important, ..., None, "") → our vocabulary."""
    return SEVERITY_MAP.get((value or "").strip().lower(), "unknown")


# ---------------------------------------------------------------------------
# Parsed shapes


@dataclasses.dataclass
class AvailableUpdate:
    name: str
    arch: str
    version: str  # [epoch:]version-release, as dnf prints it
    repository: str
    # For a package offered under "Obsoleting Packages": the installed ones it replaces,
    # as "name.arch version".
    replaces: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class AdvisoryRef:
    """One advisory as it applies to one package NEVRA."""

    advisory_id: str
    advisory_type: str
    severity: str  # already mapped to our vocabulary
    package_name: str
    package_arch: str
    package_version: str


@dataclasses.dataclass
class AdvisoryDetail:
    advisory_id: str
    advisory_type: str = ""
    severity: str = "unknown"
    title: str = ""
    cve_ids: list[str] = dataclasses.field(default_factory=list)
    bug_ids: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------
# Parsers (pure functions over dnf's text)


def format_evr(epoch: str, version: str, release: str) -> str:
    epoch = (epoch or "").strip()
    prefix = f"{epoch}:" if epoch and epoch not in ("0", "(none)") else ""
    return f"{prefix}{version}-{release}"


def split_nevra(nevra: str) -> tuple[str, str, str]:
    """``name-[epoch:]version-release.arch`` → (name, version-with-epoch, arch).

    A zero epoch is dropped so versions compare equal to check-update's.
    """
    nevra = nevra.strip()
    if nevra.endswith(".rpm"):
        nevra = nevra[: -len(".rpm")]
    body, _, arch = nevra.rpartition(".")
    parts = body.rsplit("-", 2)
    if len(parts) != 3 or not arch:
        raise ValueError(f"not a NEVRA: {nevra!r}")
    name, version, release = parts
    epoch = ""
    if ":" in version:
        epoch, version = version.split(":", 1)
    return name, format_evr(epoch, version, release), arch


def _split_name_arch(token: str) -> tuple[str, str]:
    name, dot, arch = token.rpartition(".")
    if not dot or not name:
        return token, ""
    return name, arch


def parse_check_update(stdout: str) -> list[AvailableUpdate]:
    """Rows of ``dnf check-update``: ``name.arch  [epoch:]version-release  repo``.

    Progress and "Last metadata expiration check" lines have other shapes and
    are skipped. Parsing stops at the "Obsoleting Packages" block that can
    follow (:func:`parse_obsoleting` reads it). Old dnf/yum wrapped a
    name too long for its column onto a line of its own; that is rejoined.
    """
    updates: list[AvailableUpdate] = []
    pending_name: Optional[str] = None
    for line in stdout.splitlines():
        if line.strip().lower().startswith("obsoleting packages"):
            break
        fields = line.split()
        continued = pending_name is not None and len(fields) == 2 and line[:1].isspace()
        if continued:
            fields = [pending_name] + fields
        pending_name = None
        if len(fields) == 1 and "." in fields[0] and not line[:1].isspace():
            pending_name = fields[0]
            continue
        # Indented rows that are not continuations are sub-rows (e.g. the
        # installed package an obsoleting one replaces).
        if len(fields) != 3 or (line[:1].isspace() and not continued):
            continue
        name, arch = _split_name_arch(fields[0])
        if not arch or not re.match(r"^(\d+:)?[^-\s]+-[^-\s]+$", fields[1]):
            continue
        updates.append(AvailableUpdate(name=name, arch=arch, version=fields[1], repository=fields[2]))
    return updates


def parse_obsoleting(stdout: str) -> list[AvailableUpdate]:
    """The "Obsoleting Packages" block of ``dnf check-update``: each obsoleting package with the
    installed packages it replaces (the indented rows under it, repository ``@System``)."""
    obsoleting: list[AvailableUpdate] = []
    in_block = False
    for line in stdout.splitlines():
        if line.strip().lower().startswith("obsoleting packages"):
            in_block = True
            continue
        fields = line.split()
        if not in_block or len(fields) != 3:
            continue
        name, arch = _split_name_arch(fields[0])
        if not arch:
            continue
        if line[:1].isspace():
            if obsoleting:
                obsoleting[-1].replaces.append(f"{fields[0]} {fields[1]}")
            continue
        obsoleting.append(AvailableUpdate(name=name, arch=arch, version=fields[1], repository=fields[2]))
    return obsoleting


def parse_repoquery_installed(stdout: str) -> dict[tuple[str, str], str]:
    """Our repoquery format → {(name, arch): [epoch:]version-release}."""
    installed: dict[tuple[str, str], str] = {}
    for line in stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6 or fields[0] != REPOQUERY_MARK:
            continue
        _, name, arch, epoch, version, release = fields
        installed[(name, arch)] = format_evr(epoch, version, release)
    return installed


def parse_updateinfo_list(stdout: str) -> list[AdvisoryRef]:
    """dnf 4 ``updateinfo list``: ``ADVISORY-ID  LABEL  NEVRA`` per line.

    LABEL is ``<Severity>/Sec.`` for security advisories (the severity is only
    shown for those) or the type name for the others.
    """
    refs: list[AdvisoryRef] = []
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0] in ("i", " "):
            fields = fields[1:]  # `--all` marks installed advisories with "i"
        if len(fields) != 3:
            continue
        advisory_id, label, nevra = fields
        match = _SECURITY_LABEL.match(label)
        if match:
            advisory_type, severity = "security", map_severity(match.group("severity"))
        elif label in _LIST_TYPES:
            advisory_type, severity = label, "unknown"
        else:
            continue
        try:
            name, version, arch = split_nevra(nevra)
        except ValueError:
            continue
        refs.append(AdvisoryRef(advisory_id, advisory_type, severity, name, arch, version))
    return refs


_INFO_RULE = re.compile(r"^={20,}\s*$")
_INFO_FIELD = re.compile(r"^\s*(?P<key>[A-Za-z][A-Za-z ]*?)?\s*: ?(?P<value>.*)$")


def parse_updateinfo_info(stdout: str) -> dict[str, AdvisoryDetail]:
    """dnf 4 ``updateinfo info``: blocks of ``Key: value`` lines under a ruled title.

    Multi-valued keys (Bugs, CVEs, Description) continue on lines whose key is
    blank (``           : CVE-2024-0002``).
    """
    details: dict[str, AdvisoryDetail] = {}
    title = ""
    current: Optional[AdvisoryDetail] = None
    key = ""
    lines = stdout.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        # A block opens with rule / title / rule.
        if _INFO_RULE.match(line) and index + 2 < len(lines) and _INFO_RULE.match(lines[index + 2]):
            title = lines[index + 1].strip()
            current = None
            key = ""
            index += 3
            continue
        index += 1
        match = _INFO_FIELD.match(line)
        if not match or not line.strip():
            continue
        key = (match.group("key") or "").strip() or key
        value = match.group("value").strip()
        if key == "Update ID":
            current = details.setdefault(value, AdvisoryDetail(advisory_id=value))
            current.title = current.title or title
            continue
        if current is None:
            continue
        if key == "Type":
            current.advisory_type = value
        elif key == "Severity":
            current.severity = map_severity(value)
        elif key == "CVEs" and value and value not in current.cve_ids:
            current.cve_ids.append(value)
        elif key == "Bugs" and value:
            bug_id = value.split(" - ", 1)[0].strip()
            if bug_id not in current.bug_ids:
                current.bug_ids.append(bug_id)
    return details


def parse_advisory_json(list_stdout: str, cve_stdout: str) -> tuple[list[AdvisoryRef], dict[str, AdvisoryDetail]]:
    """dnf 5 ``advisory list --json`` (basic) and ``--json --with-cve`` (extended)."""
    refs: list[AdvisoryRef] = []
    details: dict[str, AdvisoryDetail] = {}

    def load(text: str) -> list:
        text = text.strip()
        if not text:
            return []
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError("expected a JSON array of advisories")
        return data

    for item in load(list_stdout):
        advisory_id = str(item.get("name", ""))
        advisory_type = str(item.get("type", "")).lower()
        severity = map_severity(item.get("severity"))
        try:
            name, version, arch = split_nevra(str(item.get("nevra", "")))
        except ValueError:
            continue
        refs.append(AdvisoryRef(advisory_id, advisory_type, severity, name, arch, version))
        detail = details.setdefault(advisory_id, AdvisoryDetail(advisory_id=advisory_id))
        detail.advisory_type, detail.severity = advisory_type, severity
    for item in load(cve_stdout):
        advisory_id = str(item.get("advisory_name", ""))
        detail = details.setdefault(advisory_id, AdvisoryDetail(advisory_id=advisory_id))
        for reference in item.get("references") or []:
            if str(reference.get("reference_type", "")).lower() == "cve":
                cve = str(reference.get("reference_id", ""))
                if cve and cve not in detail.cve_ids:
                    detail.cve_ids.append(cve)
    return refs, details


_SECTION_ACTIONS = (
    ("installing", "install"),
    ("upgrading", "upgrade"),
    ("reinstalling", "reinstall"),
    ("downgrading", "downgrade"),
    ("removing", "remove"),
)


def parse_transaction_table(stdout: str) -> list[dict[str, str]]:
    """The package table dnf prints before asking to proceed.

    Sections ("Upgrading:", "Installing dependencies:", "Removing dependent
    packages:", ...) hold rows ``name arch version repository size``; the
    table ends at "Transaction Summary". A "replacing" sub-row (obsoletes) is the
    installed package the row above replaces: it becomes that row's ``replaces``
    ("name.arch version", comma-separated). "Skipping ..." sections are not
    changes and are left out.
    """
    packages: list[dict[str, str]] = []
    action: Optional[str] = None
    in_table = False
    pending_name: Optional[str] = None
    for line in stdout.splitlines():
        stripped = line.strip()
        if stripped.startswith("Transaction Summary"):
            break
        if _INFO_RULE.match(line):
            in_table = True
            continue
        if not in_table or not stripped:
            continue
        if not line[:1].isspace() and stripped.endswith(":"):
            header = stripped.lower()
            action = next((act for word, act in _SECTION_ACTIONS if header.startswith(word)), None)
            pending_name = None
            continue
        if action is None or not line[:1].isspace():
            continue
        fields = stripped.split()
        if fields[0] == "replacing" and len(fields) == 3 and packages:
            replaced = f"{fields[1]} {fields[2]}"
            previous = packages[-1].get("replaces")
            packages[-1]["replaces"] = f"{previous}, {replaced}" if previous else replaced
            continue
        if fields[0] in ("upgrading", "obsoleting"):
            continue
        if len(fields) == 1:
            pending_name = fields[0]  # a name too long for its column wraps
            continue
        if pending_name is not None:
            fields = [pending_name] + fields
            pending_name = None
        if len(fields) < 4:
            continue
        packages.append(
            {
                "name": fields[0],
                "arch": fields[1],
                "version": fields[2],
                "repository": fields[3],
                "action": action,
            }
        )
    return packages


def planned_updates(packages: Iterable[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    """What a whole-machine ``dnf upgrade`` would do to updates: {(name, arch): row}.

    Upgrades, and installs that replace an installed package (obsoletes). A plain install
    is a new dependency, not an update of anything installed.
    """
    return {
        (package["name"], package["arch"]): package
        for package in packages
        if package["action"] == "upgrade" or (package["action"] == "install" and package.get("replaces"))
    }


def report_names(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The name each (name, arch) is reported under: the name, or ``name.arch`` (which dnf also
    accepts) when one name is updated under several arches (multilib), as the server keys rows by
    name."""
    keys = list(keys)
    arches_by_name: dict[str, set[str]] = {}
    for name, arch in keys:
        arches_by_name.setdefault(name, set()).add(arch)
    return {(name, arch): f"{name}.{arch}" if len(arches_by_name[name]) > 1 else name for name, arch in keys}


def unmatched_names(output: str) -> list[str]:
    """Names dnf could not act on ("No match for argument", "available, but not installed")."""
    names: list[str] = []
    for pattern in (_NO_MATCH, _NOT_INSTALLED):
        for match in pattern.finditer(output):
            if match.group("name") not in names:
                names.append(match.group("name"))
    return names


def _requested(package: dict[str, str], names: Sequence[str]) -> bool:
    candidates = (package["name"], f"{package['name']}.{package['arch']}")
    return any(fnmatch.fnmatchcase(candidate, pattern) for pattern in names for candidate in candidates)


def dependencies_of(packages: Iterable[dict[str, str]], names: Sequence[str]) -> list[str]:
    """Packages a transaction installs or upgrades that the caller did not name."""
    found: list[str] = []
    for package in packages:
        if package["action"] in ("install", "upgrade") and not _requested(package, names):
            if package["name"] not in found:
                found.append(package["name"])
    return found


# ---------------------------------------------------------------------------


class DnfScanner(Scanner):
    """Pending DNF updates with their advisories; dry-run and install of named packages.

    ``extra_options`` go before every dnf subcommand. Production passes none;
    tests confine dnf with e.g. ``--installroot=DIR``,
    ``--setopt=reposdir=DIR``, ``--releasever=N``, ``--setopt=cachedir=DIR``,
    ``--config=FILE``, ``--noplugins`` or ``-C``.
    """

    package_type = PackageType.DNF

    def __init__(
        self,
        extra_options: Optional[Sequence[str]] = None,
        *,
        binary: Optional[str] = None,
        timeout: float = 1800,
    ) -> None:
        self.extra_options = list(extra_options or [])
        self._binary_override = binary
        self.timeout = timeout

    # -- tool discovery -----------------------------------------------------

    def binary(self) -> Optional[str]:
        candidates = (self._binary_override,) if self._binary_override else DNF_BINARIES
        for candidate in candidates:
            path = shutil.which(candidate) if candidate else None
            if path:
                return path
        return None

    def is_available(self) -> bool:
        """dnf is installed *and* has at least one enabled repository: Debian ships a dnf with none, and
        an agent that offered DNF there would fail every scan. ``repolist`` reads only the repository
        definitions (no metadata download, no network), so the probe takes a fraction of a second."""
        path = self.binary()
        if path is None:
            return False
        try:
            listed = run_command([path, *self.extra_options, "repolist", "--enabled"], timeout=60)
        except ScanError:
            return False
        # dnf 4 and dnf 5 print a "repo id  repo name" header, then one row per repository; with none
        # they print only "No repositories available" on stderr. dnf-plugins-core's "local" plugin
        # adds "_dnf_local", a copy of packages this host already installed: never a source of updates.
        rows = [line for line in listed.stdout.splitlines() if line.strip() and not line.startswith("repo id")]
        return listed.exit_code == 0 and bool({row.split()[0] for row in rows} - {"_dnf_local"})

    def is_dnf5(self) -> bool:
        # Fedora 41+ ships /usr/bin/dnf as a symlink to dnf5; no subprocess needed.
        path = self.binary()
        return bool(path) and os.path.basename(os.path.realpath(path)).startswith("dnf5")

    def _dnf(self, *args: str) -> CommandOutput:
        path = self.binary()
        if path is None:
            raise ScanError("dnf is not installed")
        return run_command([path, *self.extra_options, *args], timeout=self.timeout)

    # -- scan ---------------------------------------------------------------

    def scan(self) -> list[UpdateRecord]:
        check = self._dnf("check-upgrade" if self.is_dnf5() else "check-update")
        if check.exit_code == 0:
            return []
        if check.exit_code != EXIT_UPDATES_AVAILABLE:
            raise ScanError(
                f"dnf check-update exited {check.exit_code}: {tail(_combined(check), 2000)}"
            )
        available = parse_check_update(check.stdout)
        listed = {(update.name, update.arch) for update in available}
        available += [update for update in parse_obsoleting(check.stdout) if (update.name, update.arch) not in listed]
        if not available:
            raise ScanError(
                "dnf check-update reported updates (exit 100) but none could be parsed: "
                + tail(_combined(check), 2000)
            )
        available = self._as_the_transaction_would(available)
        if not available:
            return []
        installed = self._installed_versions(sorted({update.name for update in available}))
        refs, details = self._advisories()
        obsoleting_security = self._obsoleting_security(
            sorted({update.name for update in available if update.replaces}))
        return self._records(available, installed, refs, details, obsoleting_security)

    def _as_the_transaction_would(self, available: list[AvailableUpdate]) -> list[AvailableUpdate]:
        """The rows of ``available`` that ``dnf upgrade`` would really apply.

        Asked of dnf only when check-update is ambiguous (see the module docstring): a name
        listed under several arches, or an obsoleting package. A machine whose whole upgrade
        cannot be resolved keeps check-update's rows, as the names can still be upgraded one
        by one; dnf's error is logged.
        """
        names = [update.name for update in available]
        if len(set(names)) == len(names) and not any(update.replaces for update in available):
            return available
        planned = self._planned_updates()
        if planned is None:
            return available
        # The version too is the transaction's: without "best", dnf may settle for an older one.
        return [dataclasses.replace(update, version=planned[(update.name, update.arch)]["version"])
                for update in available if (update.name, update.arch) in planned]

    def _planned_updates(self) -> Optional[dict[tuple[str, str], dict[str, str]]]:
        """What ``dnf upgrade`` for the whole machine would do (declined at the prompt); None
        when dnf could not resolve it."""
        result = self._dnf("upgrade", "--assumeno")
        if not _resolved(result):
            logger.warning("dnf upgrade --assumeno exited %s: %s", result.exit_code, tail(_combined(result), 500))
            return None
        return planned_updates(parse_transaction_table(result.stdout))

    def _obsoleting_security(self, names: list[str]) -> dict[str, str]:
        """{name: severity} for those of ``names`` (obsoleting packages) a security advisory covers.

        dnf 4's updateinfo lists advisories only for names that are installed, and an obsoleting
        package's name is not, so repoquery's advisory filters answer instead: ``--security``,
        then one severity at a time until every security name has one.
        """
        if not names:
            return {}
        secure = self._repoquery_names("--security", names)
        severities: dict[str, str] = {}
        for severity in ("critical", "important", "moderate", "low"):
            if secure <= severities.keys():
                break
            option = f"--advisory-severities={severity}" if self.is_dnf5() else f"--sec-severity={severity.title()}"
            for name in self._repoquery_names(option, names) & secure:
                severities.setdefault(name, severity)
        return {name: severities.get(name, "unknown") for name in secure}

    def _repoquery_names(self, option: str, names: list[str]) -> set[str]:
        result = self._checked("repoquery", option, "--qf", REPOQUERY_FORMAT, *self._operands(names))
        return {name for name, _arch in parse_repoquery_installed(result.stdout)}

    def _installed_versions(self, names: list[str]) -> dict[tuple[str, str], str]:
        result = self._dnf(
            "repoquery", "--installed", "--latest-limit=1", "--qf", REPOQUERY_FORMAT, *self._operands(names)
        )
        if result.exit_code != 0:
            raise ScanError(f"dnf repoquery --installed exited {result.exit_code}: {tail(_combined(result), 2000)}")
        return parse_repoquery_installed(result.stdout)

    def _advisories(self) -> tuple[list[AdvisoryRef], dict[str, AdvisoryDetail]]:
        if self.is_dnf5():
            listed = self._checked("advisory", "list", "--updates", "--json")
            with_cve = self._checked("advisory", "list", "--updates", "--json", "--with-cve")
            try:
                return parse_advisory_json(listed.stdout, with_cve.stdout)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                raise ScanError(f"dnf advisory list --json gave unreadable output: {exc}") from exc
        listed = self._checked("updateinfo", "list", "--updates")
        refs = parse_updateinfo_list(listed.stdout)
        if not refs:
            return [], {}
        info = self._checked("updateinfo", "info", "--updates")
        return refs, parse_updateinfo_info(info.stdout)

    def _checked(self, *args: str) -> CommandOutput:
        result = self._dnf(*args)
        if result.exit_code != 0:
            raise ScanError(f"dnf {' '.join(args)} exited {result.exit_code}: {tail(_combined(result), 2000)}")
        return result

    def _records(
        self,
        available: list[AvailableUpdate],
        installed: dict[tuple[str, str], str],
        refs: list[AdvisoryRef],
        details: dict[str, AdvisoryDetail],
        obsoleting_security: dict[str, str],
    ) -> list[UpdateRecord]:
        names = report_names((update.name, update.arch) for update in available)
        installed_by_name: dict[str, str] = {}
        for (name, _arch), version in installed.items():
            installed_by_name.setdefault(name, version)

        records: list[UpdateRecord] = []
        for update in available:
            covering = [
                ref for ref in refs
                if ref.package_name == update.name and ref.package_arch in (update.arch, "noarch")
            ]
            advisories = []
            severity = "unknown"
            is_security = False
            cve_ids: list[str] = []
            for ref in covering:
                detail = details.get(ref.advisory_id, AdvisoryDetail(advisory_id=ref.advisory_id))
                advisory_type = detail.advisory_type or ref.advisory_type
                advisory_severity = detail.severity if detail.severity != "unknown" else ref.severity
                if SEVERITY_RANK[advisory_severity] > SEVERITY_RANK[severity]:
                    severity = advisory_severity
                is_security = is_security or advisory_type == "security"
                cve_ids.extend(cve for cve in detail.cve_ids if cve not in cve_ids)
                if all(item["id"] != ref.advisory_id for item in advisories):
                    advisories.append(
                        {
                            "id": ref.advisory_id,
                            "type": advisory_type,
                            "severity": advisory_severity,
                            "title": detail.title,
                            "bug_ids": list(detail.bug_ids),
                            "cve_ids": list(detail.cve_ids),
                        }
                    )
            if update.name in obsoleting_security and not advisories:
                severity, is_security = obsoleting_security[update.name], True
            metadata: dict[str, object] = {
                "arch": update.arch,
                "advisories": advisories,
                "advisory_ids": [item["id"] for item in advisories],
                "advisory_types": sorted({item["type"] for item in advisories}),
            }
            if update.replaces:
                # Not installed under this name: it replaces these (the current version is "").
                metadata["replaces"] = list(update.replaces)
            current = installed.get((update.name, update.arch)) or installed_by_name.get(update.name, "")
            records.append(
                UpdateRecord(
                    package_type=self.package_type,
                    name=names[(update.name, update.arch)],
                    current_version=current,
                    available_version=update.version,
                    severity=severity,
                    is_security=is_security,
                    repository=update.repository,
                    cve_ids=sorted(cve_ids),
                    metadata=metadata,
                )
            )
        return records

    def native_listing(self) -> dict[str, str]:
        """What ``dnf upgrade`` for the whole machine would do, from dnf's resolver (declined at
        the prompt): name -> version. Not check-update's listing, which names both arches of a
        version offered twice although the upgrade applies one."""
        planned = self._planned_updates()
        if planned is None:
            raise ScanError("dnf upgrade --assumeno could not resolve the machine's upgrade")
        names = report_names(planned)
        return {names[key]: row["version"] for key, row in planned.items()}

    # -- operations ---------------------------------------------------------
    # Scanner.check_names has already refused an empty list (``dnf upgrade``
    # without names upgrades the whole machine) and anything but a name, a
    # ``name.arch`` or a NEVRA without epoch (protocol.package_name_problem).

    def _operands(self, names: Sequence[str]) -> list[str]:
        """``names`` as dnf's operands: after "--" where this dnf knows it (see END_OF_OPTIONS)."""
        return list(names) if self.is_dnf5() else [END_OF_OPTIONS, *names]

    def _dry_run(self, names: list[str]) -> OperationResult:
        """Resolve ``dnf upgrade NAMES`` and answer no at the prompt.

        dnf exits 1 with "Operation aborted." after a successful resolution
        that we declined: that is the normal dry-run ending. Exit 0 means there
        was nothing to do. Anything else is a failure.
        """
        result = self._operation(["upgrade", "--assumeno", *SIGNATURE_OPTIONS], names)
        return self._result(result, names, resolved=_resolved(result))

    def _install(self, names: list[str]) -> OperationResult:
        result = self._operation(["upgrade", "-y", *SIGNATURE_OPTIONS], names)
        return self._result(result, names, resolved=result.exit_code == 0)

    def _operation(self, args: list[str], names: list[str]) -> CommandOutput:
        started = time.monotonic()
        try:
            return self._dnf(*args, *self._operands(names))
        except ScanError as exc:
            # Missing binary or timeout: report it as the failed operation it is.
            return CommandOutput(
                argv=[*args, *names], exit_code=-1, stdout="", stderr=str(exc),
                duration_seconds=time.monotonic() - started,
            )

    def _result(self, result: CommandOutput, names: list[str], *, resolved: bool) -> OperationResult:
        output = _combined(result)
        packages = parse_transaction_table(result.stdout)
        # dnf 4 warns "No match for argument" but still acts on the other names;
        # the requested operation did not fully happen, so it is not a success.
        missing = unmatched_names(output)
        return OperationResult(
            succeeded=resolved and not missing,
            exit_code=result.exit_code,
            output_tail=tail(output),
            duration_seconds=result.duration_seconds,
            dependencies=dependencies_of(packages, names),
            packages=packages,
        )


def _resolved(result: CommandOutput) -> bool:
    """``dnf upgrade --assumeno`` resolved: exit 1 with "Operation aborted." is a transaction we
    declined, exit 0 is nothing to do."""
    return result.exit_code == 0 or (result.exit_code == 1 and "Operation aborted" in _combined(result))


def _combined(result: CommandOutput) -> str:
    if result.stdout and result.stderr:
        return result.stdout.rstrip("\n") + "\n" + result.stderr
    return result.stdout or result.stderr
