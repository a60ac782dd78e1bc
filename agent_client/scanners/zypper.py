"""zypper scanner and installer (openSUSE, SLES), with security patches.

Only the ``zypper`` command line is used, through :func:`run_command`, always with
``--non-interactive`` and, where the answer is read, ``--xmlout``: zypper's XML is its
stable interface for machines, its tables are for people.

A scan costs at most three zypper calls, however many updates are pending:

1. ``zypper --xmlout list-updates``: every package update, with the installed version
   (``edition-old``) and the repository alias it comes from.
2. ``zypper --xmlout list-patches``: the *needed* patches (SUSE's name for an updateinfo
   advisory), with category, severity and the CVE ids it fixes. A patch does not say there
   which packages it updates, so, only when a patch is needed:
3. ``zypper --xmlout info -t patch -- IDS``: each patch's "Conflicts" list,
   ``name[.arch] < fixed-edition``, which names the packages the patch updates. zypper wraps
   this answer in XML messages but writes its text as a table of fields; that text is parsed.

A package update is a security update when a needed patch of category ``security`` updates it;
its severity is the highest of the patches' severities, in base.SEVERITIES words.

Exit codes (zypper(8)): 0 is success; 100-103 are "success, and ..." (102: reboot needed,
103: zypper updated itself); 104 means a name matched nothing; 106 means a repository was
skipped because its metadata could not be read, so a scan is incomplete; 107 means an RPM
scriptlet failed. Anything else is an error.

The parsers are module-level functions, fed by the tests with the real zypper's output.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
import xml.etree.ElementTree as ElementTree
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

ZYPPER_BINARY = "zypper"
# zypper stops reading options at "--": a name after it is an operand, never an option.
END_OF_OPTIONS = "--"

EXIT_OK = 0
EXIT_REBOOT_NEEDED = 102
EXIT_ZYPPER_RESTART_NEEDED = 103
EXIT_NO_REPOSITORIES = 6
# The installation happened (102: the kernel or glibc changed; 103: zypper itself was updated).
OPERATION_DONE_EXITS = (EXIT_OK, EXIT_REBOOT_NEEDED, EXIT_ZYPPER_RESTART_NEEDED)

# zypper's patch severities (libzypp Patch::SeverityFlag) in the agent's words.
SEVERITY_MAP = {
    "critical": "critical",
    "important": "important",
    "moderate": "moderate",
    "low": "low",
    "unspecified": "unknown",
}
SEVERITY_RANK = {"unknown": 0, "low": 1, "moderate": 2, "important": 3, "critical": 4}
SECURITY_CATEGORY = "security"

# install-summary sections of an update transaction, in the words OperationResult uses.
_SUMMARY_ACTIONS = {
    "to-upgrade": "upgrade",
    "to-install": "install",
    "to-reinstall": "reinstall",
    "to-downgrade": "downgrade",
    "to-remove": "remove",
    "to-change-arch": "change-arch",
    "to-change-vendor": "change-vendor",
}
# Messages that mean zypper did not act on a requested name (it goes on with the others).
_NOT_INSTALLED = re.compile(r"^Package '(?P<name>[^']+)' is not installed\.")
_NOT_A_PACKAGE_NAME = re.compile(r"^'(?P<name>[^']+)' not found in package names\.")
# `zypper info` fields start at column 0 ("Conflicts   : ..."); their continuation lines are indented.
_INFO_FIELD = re.compile(r"^(?P<field>[A-Z][A-Za-z ]*?)\s*: ?(?P<value>.*)$")
_COUNTED_LIST = re.compile(r"^\[\d+\]$")


@dataclasses.dataclass
class PackageUpdate:
    name: str
    arch: str
    version: str
    current_version: str
    repository: str


@dataclasses.dataclass
class Patch:
    patch_id: str
    category: str
    severity: str  # in base.SEVERITIES
    title: str
    cve_ids: list[str] = dataclasses.field(default_factory=list)
    # Capability names from "Conflicts": "name" or "name.arch".
    packages: set[str] = dataclasses.field(default_factory=set)

    @property
    def is_security(self) -> bool:
        return self.category == SECURITY_CATEGORY

    def updates(self, update: PackageUpdate) -> bool:
        return update.name in self.packages or f"{update.name}.{update.arch}" in self.packages


def read_stream(stdout: str, command: str) -> ElementTree.Element:
    """The ``<stream>`` element of an ``--xmlout`` answer; ScanError when it is not XML."""
    try:
        return ElementTree.fromstring(stdout)
    except ElementTree.ParseError as exc:
        raise ScanError(f"zypper {command} gave unreadable XML ({exc}): {tail(stdout, 2000)}") from exc


def error_messages(stream: ElementTree.Element) -> list[str]:
    return [(message.text or "").strip() for message in stream.iter("message") if message.get("type") == "error"]


def parse_list_updates(stream: ElementTree.Element) -> list[PackageUpdate]:
    """``list-updates`` rows of kind package."""
    updates: list[PackageUpdate] = []
    for item in stream.iter("update"):
        if item.get("kind") != "package":
            continue
        source = item.find("source")
        updates.append(
            PackageUpdate(
                name=item.get("name", ""),
                arch=item.get("arch", ""),
                version=item.get("edition", ""),
                current_version=item.get("edition-old", ""),
                repository=source.get("alias", "") if source is not None else "",
            )
        )
    return updates


def parse_list_patches(stream: ElementTree.Element) -> list[Patch]:
    """``list-patches`` rows of kind patch: the needed patches (zypper lists only those by default)."""
    patches: list[Patch] = []
    for item in stream.iter("update"):
        if item.get("kind") != "patch":
            continue
        cve_ids: list[str] = []
        for issue in item.iter("issue"):
            cve = issue.get("id", "")
            if issue.get("type") == "cve" and cve and cve not in cve_ids:
                cve_ids.append(cve)
        patches.append(
            Patch(
                patch_id=item.get("name", ""),
                category=item.get("category", "").lower(),
                severity=SEVERITY_MAP.get(item.get("severity", "").lower(), "unknown"),
                title=(item.findtext("summary") or "").strip(),
                cve_ids=sorted(cve_ids),
            )
        )
    return patches


def info_fields(text: str) -> dict[str, list[str]]:
    """One ``zypper info`` block as {field: lines}: a one-line value, or the indented lines under it."""
    fields: dict[str, list[str]] = {}
    current: Optional[list[str]] = None
    for line in text.splitlines():
        match = _INFO_FIELD.match(line)
        if match and not line[:1].isspace():
            value = match.group("value").strip()
            current = fields.setdefault(match.group("field"), [])
            if value and not _COUNTED_LIST.match(value):
                current.append(value)
        elif current is not None and line.strip():
            current.append(line.strip())
    return fields


def parse_patch_packages(stream: ElementTree.Element) -> dict[str, set[str]]:
    """``info -t patch``: patch id -> the capability names of its "Conflicts" (the packages it updates).

    A conflict reads ``name < 1.1-1`` or ``name.x86_64 < 1.1-1``; the first word is kept.
    """
    covered: dict[str, set[str]] = {}
    for message in stream.iter("message"):
        fields = info_fields(message.text or "")
        if "Name" not in fields or "Conflicts" not in fields:
            continue
        names = covered.setdefault(fields["Name"][0], set())
        names.update(conflict.split()[0] for conflict in fields["Conflicts"])
    return covered


def parse_install_summary(stream: ElementTree.Element) -> list[dict[str, str]]:
    """The packages an update transaction changes (dry-run or real), from ``<install-summary>``."""
    packages: list[dict[str, str]] = []
    for summary in stream.iter("install-summary"):
        for section in summary:
            action = _SUMMARY_ACTIONS.get(section.tag)
            if action is None:
                continue
            for solvable in section.iter("solvable"):
                if solvable.get("type", "package") != "package":
                    continue
                packages.append(
                    {
                        "name": solvable.get("name", ""),
                        "arch": solvable.get("arch", ""),
                        "version": solvable.get("edition", ""),
                        "previous_version": solvable.get("edition-old", ""),
                        "action": action,
                    }
                )
    return packages


def unmatched_names(stream: ElementTree.Element) -> list[str]:
    """Names zypper did not update: not installed, or no package of that name (a capability at best)."""
    names: list[str] = []
    for message in stream.iter("message"):
        text = (message.text or "").strip()
        for pattern in (_NOT_INSTALLED, _NOT_A_PACKAGE_NAME):
            match = pattern.match(text)
            if match and match.group("name") not in names:
                names.append(match.group("name"))
    return names


def dependencies_of(packages: Iterable[dict[str, str]], names: Sequence[str]) -> list[str]:
    """Packages a transaction installs or upgrades that the caller did not name (as name or name.arch)."""
    found: list[str] = []
    for package in packages:
        requested = package["name"] in names or f"{package['name']}.{package['arch']}" in names
        if package["action"] in ("install", "upgrade") and not requested and package["name"] not in found:
            found.append(package["name"])
    return found


def readable_output(stream: ElementTree.Element, stderr: str) -> str:
    """What zypper told a person, without the XML: its messages, the packages it changed, stderr."""
    lines: list[str] = []
    for element in stream.iter():
        if element.tag == "message":
            lines.append((element.text or "").rstrip())
        elif element.tag in _SUMMARY_ACTIONS:
            lines.append(f"{_SUMMARY_ACTIONS[element.tag]}:")
        elif element.tag == "solvable":
            edition, previous = element.get("edition", ""), element.get("edition-old")
            change = f"{previous} -> {edition}" if previous else edition
            lines.append(f"  {element.get('name', '')}.{element.get('arch', '')} {change}")
        elif element.tag == "progress" and element.get("done") == "1":
            lines.append(element.get("name", ""))
        elif element.tail and element.tail.strip():
            lines.append(element.tail.strip())  # zypper writes some answers as bare text in the stream
    if stderr.strip():
        lines.append(stderr.rstrip())
    return "\n".join(lines)


def parse_table(stdout: str) -> dict[str, str]:
    """The plain ``zypper list-updates`` table: name -> available version.

    Rows are ``S | Repository | Name | Current Version | Available Version | Arch``; the header row
    and the rule under it are skipped.
    """
    listing: dict[str, str] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) != 6 or cells[2] == "Name":
            continue
        listing[cells[2]] = cells[4]
    return listing


# ---------------------------------------------------------------------------


class ZypperScanner(Scanner):
    """Pending zypper updates with the patches that fix them; dry-run and install of named packages.

    ``root`` is zypper's ``--root`` (its repositories, caches, rpm database and log all live under it);
    ``reposd_dir`` and ``cache_dir`` (``--reposd-dir``, ``--cache-dir``) move the repository
    definitions and the caches. Production passes none of them; tests confine zypper with them.
    """

    package_type = PackageType.ZYPPER

    def __init__(
        self,
        root: Optional[str] = None,
        *,
        reposd_dir: Optional[str] = None,
        cache_dir: Optional[str] = None,
        binary: str = ZYPPER_BINARY,
        timeout: float = 1800,
    ) -> None:
        self.global_options = ["--non-interactive"]
        for option, value in (("--root", root), ("--reposd-dir", reposd_dir), ("--cache-dir", cache_dir)):
            if value is not None:
                self.global_options += [option, str(value)]
        # zypper 1.14 writes its log to the host's /var/log/zypper.log even with --root (its history,
        # lock and caches do follow the root): a private root keeps its log too.
        self.environment = {"ZYPP_LOGFILE": os.path.join(root, "var/log/zypper.log")} if root is not None else {}
        self.binary = binary
        self.timeout = timeout

    def _zypper(self, *args: str, xml: bool = True) -> CommandOutput:
        # Looked up at each call, as dnf is: a test's PATH decides which zypper runs.
        path = shutil.which(self.binary)
        if path is None:
            raise ScanError("zypper is not installed")
        output_format = ["--xmlout"] if xml else ["--terse"]
        return run_command([path, *self.global_options, *output_format, *args], timeout=self.timeout,
                           env=self.environment)

    def is_available(self) -> bool:
        """zypper is installed *and* has an enabled repository. Without one, zypper can install
        nothing and ``list-updates`` answers "no updates" with a warning: a false all-clear, so the
        capability is not offered (``repos`` then exits 6). ``repos`` reads only the repository
        definitions: no download."""
        try:
            listed = self._zypper("repos")
        except ScanError:
            return False
        if listed.exit_code not in (EXIT_OK, EXIT_NO_REPOSITORIES):
            return False
        try:
            stream = read_stream(listed.stdout, "repos")
        except ScanError:
            return False
        return any(repo.get("enabled") == "1" for repo in stream.iter("repo"))

    # -- scan ---------------------------------------------------------------

    def scan(self) -> list[UpdateRecord]:
        updates = parse_list_updates(self._checked("list-updates"))
        if not updates:
            return []
        patches = parse_list_patches(self._checked("list-patches"))
        if patches:
            covered = parse_patch_packages(
                self._checked("info", "-t", "patch", END_OF_OPTIONS, *sorted({p.patch_id for p in patches})))
            for patch in patches:
                patch.packages = covered.get(patch.patch_id, set())
        return [self._record(update, [patch for patch in patches if patch.updates(update)]) for update in updates]

    def _checked(self, *args: str) -> ElementTree.Element:
        """The XML answer of a read-only zypper call; ScanError for any error, a skipped repository included."""
        result = self._zypper(*args)
        command = args[0]
        if result.exit_code != EXIT_OK:
            raise ScanError(f"zypper {command} exited {result.exit_code}: {tail(_combined(result), 2000)}")
        stream = read_stream(result.stdout, command)
        errors = error_messages(stream)
        if errors:
            raise ScanError(f"zypper {command} reported an error: {tail(' '.join(errors), 2000)}")
        return stream

    def _record(self, update: PackageUpdate, patches: list[Patch]) -> UpdateRecord:
        severity = "unknown"
        for patch in patches:
            if SEVERITY_RANK[patch.severity] > SEVERITY_RANK[severity]:
                severity = patch.severity
        advisories = [
            {"id": patch.patch_id, "type": patch.category, "severity": patch.severity, "title": patch.title,
             "cve_ids": list(patch.cve_ids)}
            for patch in patches
        ]
        return UpdateRecord(
            package_type=self.package_type,
            name=update.name,
            current_version=update.current_version,
            available_version=update.version,
            severity=severity,
            is_security=any(patch.is_security for patch in patches),
            repository=update.repository,
            cve_ids=sorted({cve for patch in patches for cve in patch.cve_ids}),
            metadata={
                "arch": update.arch,
                "advisories": advisories,
                "advisory_ids": [patch.patch_id for patch in patches],
                "advisory_types": sorted({patch.category for patch in patches}),
            },
        )

    def native_listing(self) -> dict[str, str]:
        """``zypper --terse list-updates``, the table an admin reads: name -> available version."""
        result = self._zypper("list-updates", xml=False)
        if result.exit_code != EXIT_OK:
            raise ScanError(f"zypper list-updates exited {result.exit_code}: {tail(_combined(result), 2000)}")
        return parse_table(result.stdout)

    # -- operations ---------------------------------------------------------
    # Scanner.check_names has already refused an empty list (``zypper update`` without names
    # updates the whole machine) and anything but an RPM name or ``name.arch``: no option, path,
    # URL, ``pattern:``/``patch:`` selector, version relation or .rpm file.

    def _dry_run(self, names: list[str]) -> OperationResult:
        """``zypper update --dry-run NAMES``: the solver's transaction, with the dependencies it
        pulls in, and nothing downloaded or installed."""
        return self._operation(["update", "--dry-run"], names)

    def _install(self, names: list[str]) -> OperationResult:
        """``zypper update NAMES``, not ``install``: ``update`` upgrades an installed package and
        never installs a new one (a name that is not installed is left alone, and reported here as
        not done), while ``install`` would add any package of that name. New dependencies the
        upgrade needs are installed, as ``zypper update`` does.

        Signatures are zypper's own rules, never relaxed here: no ``--no-gpg-checks``, no
        ``--gpg-auto-import-keys``, and ``--non-interactive`` answers "no" to an untrusted key or
        an unsigned file.
        """
        return self._operation(["update"], names)

    def _operation(self, args: list[str], names: list[str]) -> OperationResult:
        started = time.monotonic()
        try:
            result = self._zypper(*args, END_OF_OPTIONS, *names)
        except ScanError as exc:
            # Missing binary or timeout: report it as the failed operation it is.
            return OperationResult(succeeded=False, exit_code=-1, output_tail=str(exc),
                                   duration_seconds=time.monotonic() - started)
        try:
            stream = read_stream(result.stdout, args[0])
        except ScanError as exc:
            return OperationResult(succeeded=False, exit_code=result.exit_code, output_tail=tail(str(exc)),
                                   duration_seconds=result.duration_seconds)
        packages = parse_install_summary(stream)
        # zypper goes on with the other names when one is not installed or not a package name: the
        # requested operation did not fully happen, so it is not a success.
        done = result.exit_code in OPERATION_DONE_EXITS and not error_messages(stream) and not unmatched_names(stream)
        return OperationResult(
            succeeded=done,
            exit_code=result.exit_code,
            output_tail=tail(readable_output(stream, result.stderr)),
            duration_seconds=result.duration_seconds,
            dependencies=dependencies_of(packages, names),
            packages=packages,
        )


def _combined(result: CommandOutput) -> str:
    if result.stdout and result.stderr:
        return result.stdout.rstrip("\n") + "\n" + result.stderr
    return result.stdout or result.stderr
