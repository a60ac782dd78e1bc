"""pacman scanner and installer (Arch Linux and derivatives).

Only the ``pacman`` and ``pacman-conf`` command lines are used, through :func:`run_command`.

A scan never changes the system. ``pacman -Sy`` on the real sync databases would leave the
machine in the state Arch warns about (new sync databases, old packages: the next
``pacman -S foo`` is a partial upgrade), so the scan does what Arch's ``checkupdates`` does:

1. copy the sync databases into a temporary dbpath (mtimes kept, so an unchanged mirror sends
   nothing new) beside a symlink to the real local database, and ``pacman -Sy`` there, with
   ``--logfile /dev/null`` so the real log is not written either;
2. ``pacman -Qu`` against that copy: ``name current -> available`` per pending update, marked
   ``[ignored]`` for IgnorePkg (reported, flagged ``{"ignored": true}``, as APT's held packages are);
3. one ``pacman -Sp --nodeps --nodeps --print-format`` for all those names: the repository each
   comes from and its download size (with an empty cache directory, so the size is the package's,
   not what is left to fetch).

Severity: pacman carries no advisories. Arch publishes them (security.archlinux.org, read by
``arch-audit``), but not in the sync databases and the agent does not fetch them, so every row
is severity ``unknown``, ``is_security`` False.

Installs and partial upgrades. Arch supports one kind of upgrade: the whole system,
``pacman -Syu``. Upgrading some packages against newer sync databases while leaving others old
(a partial upgrade) is unsupported and breaks machines (a library bumped under programs built
against the old one). The server approves updates by name, so the two meet like this:

* the requested names must cover every pending, not ignored, update, as the same temporary copy
  of the databases shows it, and each must be installed (this is an upgrade, never a new
  install); otherwise nothing runs and the result names what is missing;
* then ``pacman -Syu --needed --noconfirm -- NAMES``: the supported full upgrade, which may pull
  in new dependencies. A package published in the seconds between the check and the real sync
  is upgraded too (it is part of the one supported upgrade); the result's ``packages`` are what
  really changed, read from the local database before and after.

``--noconfirm`` takes pacman's default answer to every question: replace a package that another
replaces (yes), remove a conflicting package (no, so the transaction fails), the first provider.

A dry-run answers from the temporary copy: ``pacman -Sup --needed --print-format`` lists the
transaction (the upgrades and the new dependencies it pulls in) without changing anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
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

# pacman's option parser (getopt_long) stops at "--": a name after it is a target, never an option.
END_OF_OPTIONS = "--"
# One row per package of a -Sp/-Sup transaction. Names, versions and repository names hold no
# spaces (pacman refuses them), so a space separates the fields.
PRINT_FORMAT = "%n %v %r %s"
PENDING_LINE = re.compile(
    r"^(?P<name>\S+) (?P<current>\S+) -> (?P<available>\S+)(?P<ignored> \[ignored\])?$"
)
# The sync database files copied into the temporary dbpath (the .files databases are not needed).
SYNC_DATABASE_SUFFIXES = (".db", ".db.sig")
# The exit code of an operation that has no transaction of pacman's to report (see _failed).
NOT_RUN = -1


@dataclasses.dataclass
class PendingUpdate:
    name: str
    current_version: str
    available_version: str
    ignored: bool


@dataclasses.dataclass
class OfferedPackage:
    """One package of a -Sp/-Sup transaction: what would be installed, from where, how big."""

    name: str
    version: str
    repository: str
    size_bytes: int


# ---------------------------------------------------------------------------
# Parsers (pure functions over pacman's text)


def parse_pending(stdout: str) -> list[PendingUpdate]:
    """``pacman -Qu``: ``name current -> available`` with `` [ignored]`` for IgnorePkg."""
    pending = []
    for line in stdout.splitlines():
        match = PENDING_LINE.match(line.strip())
        if match is not None:
            pending.append(PendingUpdate(match.group("name"), match.group("current"),
                                         match.group("available"), bool(match.group("ignored"))))
    return pending


def parse_transaction(stdout: str) -> list[OfferedPackage]:
    """Rows of ``--print-format PRINT_FORMAT``; anything else on the stream is skipped."""
    offered = []
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[3].isdigit():
            offered.append(OfferedPackage(fields[0], fields[1], fields[2], int(fields[3])))
    return offered


def parse_installed(stdout: str) -> dict[str, str]:
    """``pacman -Q``: ``name version`` per installed package."""
    installed = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) == 2:
            installed[fields[0]] = fields[1]
    return installed


def parse_configuration(stdout: str) -> dict[str, list[tuple[str, str]]]:
    """``pacman-conf``'s dump: {section: [(key, value), ...]}, "options" first, then each repository."""
    sections: dict[str, list[tuple[str, str]]] = {}
    entries: Optional[list[tuple[str, str]]] = None
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            entries = sections.setdefault(line[1:-1], [])
        elif entries is not None and " = " in line:
            key, _, value = line.partition(" = ")
            entries.append((key, value))
        elif entries is not None and line:
            entries.append((line, ""))  # a flag such as CheckSpace
    return sections


def sync_repositories(configuration: dict[str, list[tuple[str, str]]]) -> list[str]:
    """Repositories pacman -Sy refreshes: a Server to fetch from, and Usage Sync (or All, the default)."""
    repositories = []
    for section, entries in configuration.items():
        usage = {value for key, value in entries if key == "Usage"} or {"All"}
        if section != "options" and any(key == "Server" for key, _ in entries) and usage & {"All", "Sync"}:
            repositories.append(section)
    return repositories


def partial_upgrade_problem(names: Sequence[str], installed: dict[str, str], pending: list[PendingUpdate]) -> str:
    """Why upgrading only ``names`` is refused (see the module docstring); "" when it is not."""
    problems = []
    not_installed = [name for name in names if name not in installed]
    if not_installed:
        problems.append(f"not installed (this is an upgrade, not an install): {', '.join(not_installed)}")
    left_behind = [update.name for update in pending if not update.ignored and update.name not in names]
    if left_behind:
        problems.append("Arch supports only a full upgrade (a partial upgrade is unsupported); "
                        f"approve these pending updates too: {', '.join(left_behind)}")
    return "; ".join(problems)


def changes(before: dict[str, str], after: dict[str, str], offered: dict[str, str]) -> list[dict[str, str]]:
    """What a transaction changed in the local database; ``offered`` maps name -> repository."""
    changed = []
    for name, version in sorted(after.items()):
        if before.get(name) != version:
            changed.append({"name": name, "current_version": before.get(name, ""), "new_version": version,
                            "repository": offered.get(name, ""),
                            "action": "upgrade" if name in before else "install"})
    for name in sorted(set(before) - set(after)):
        changed.append({"name": name, "current_version": before[name], "new_version": "", "repository": "",
                        "action": "remove"})
    return changed


# ---------------------------------------------------------------------------


class PacmanScanner(Scanner):
    """Pending pacman updates; dry-run and install as a full system upgrade (module docstring).

    ``config``, ``root`` and ``dbpath`` are pacman's ``--config``, ``--root`` and ``--dbpath``;
    production passes none (the system's), tests point them at a private root.
    """

    package_type = PackageType.PACMAN

    def __init__(
        self,
        *,
        config: Optional[str] = None,
        root: Optional[str] = None,
        dbpath: Optional[str] = None,
        timeout: float = 1800,
    ) -> None:
        self.config = config
        self.root = root
        self.dbpath = dbpath
        self.timeout = timeout

    # -- availability ---------------------------------------------------------

    def is_available(self) -> bool:
        """pacman is installed and its configuration has a repository that pacman -Sy can refresh.

        Debian's pacman package installs a pacman.conf with no repository: there every scan
        would fail, so pacman is not offered.
        """
        if shutil.which("pacman") is None or shutil.which("pacman-conf") is None:
            return False
        try:
            return bool(sync_repositories(self.configuration()))
        except ScanError:
            return False

    def configuration(self) -> dict[str, list[tuple[str, str]]]:
        """pacman.conf (with its Includes) as pacman itself reads it, for this root: one ``pacman-conf``."""
        argv = ["pacman-conf"]
        if self.config:
            argv += ["--config", self.config]
        if self.root:
            argv += ["--rootdir", self.root]
        result = run_command(argv, timeout=self.timeout)
        if result.exit_code != 0:
            raise ScanError(f"pacman-conf exited {result.exit_code}: {tail(_combined(result), 2000)}")
        return parse_configuration(result.stdout)

    def real_dbpath(self) -> str:
        if self.dbpath:
            return self.dbpath
        configured = [value for key, value in self.configuration().get("options", []) if key == "DBPath"]
        if not configured:
            raise ScanError("pacman-conf names no DBPath")
        return configured[0]

    # -- running pacman -------------------------------------------------------

    def _pacman(self, *args: str, dbpath: Optional[str] = None) -> CommandOutput:
        argv = ["pacman"]
        if self.config:
            argv += ["--config", self.config]
        if self.root:
            argv += ["--root", self.root]
        if dbpath or self.dbpath:
            argv += ["--dbpath", dbpath or self.dbpath]
        return run_command([*argv, *args], timeout=self.timeout)

    def _checked(self, *args: str, dbpath: Optional[str] = None) -> CommandOutput:
        result = self._pacman(*args, dbpath=dbpath)
        if result.exit_code != 0:
            raise ScanError(f"pacman {args[0]} exited {result.exit_code}: {tail(_combined(result), 2000)}")
        return result

    @contextlib.contextmanager
    def synced_copy(self) -> Iterator[str]:
        """A temporary dbpath with freshly synced databases; the real ones are never written.

        Its ``local`` is a symlink to the real local database, so only read-only queries may run
        there (-Q, -Sp): nothing that installs.
        """
        real = self.real_dbpath()
        with tempfile.TemporaryDirectory(prefix="redflag-pacman-") as scratch:
            real_sync, sync = os.path.join(real, "sync"), os.path.join(scratch, "sync")
            os.mkdir(sync)
            if os.path.isdir(real_sync):
                for entry in os.listdir(real_sync):
                    if entry.endswith(SYNC_DATABASE_SUFFIXES):
                        shutil.copy2(os.path.join(real_sync, entry), os.path.join(sync, entry))
            os.symlink(os.path.join(real, "local"), os.path.join(scratch, "local"))
            self._checked("-Sy", "--noprogressbar", "--logfile", os.devnull, dbpath=scratch)
            yield scratch

    def _pending_listing(self, dbpath: str) -> str:
        """``pacman -Qu``'s output in ``dbpath``: "" when nothing is pending."""
        result = self._pacman("-Qu", dbpath=dbpath)
        if result.exit_code == 1 and not result.stdout.strip() and not result.stderr.strip():
            return ""  # -Qu answers "nothing matched" with exit 1 and no output
        if result.exit_code != 0:
            raise ScanError(f"pacman -Qu exited {result.exit_code}: {tail(_combined(result), 2000)}")
        return result.stdout

    def _pending(self, dbpath: str) -> list[PendingUpdate]:
        return parse_pending(self._pending_listing(dbpath))

    def _installed(self, dbpath: Optional[str] = None) -> dict[str, str]:
        return parse_installed(self._checked("-Q", dbpath=dbpath).stdout)

    def _print_transaction(self, dbpath: str, *args: str) -> CommandOutput:
        """A print-only (-p) transaction in the temporary dbpath; its empty cache makes %s the package size."""
        return self._pacman("--logfile", os.devnull, "--cachedir", os.path.join(dbpath, "cache"), "--noconfirm",
                            "--print-format", PRINT_FORMAT, *args, dbpath=dbpath)

    # -- scan -----------------------------------------------------------------

    def scan(self) -> list[UpdateRecord]:
        with self.synced_copy() as dbpath:
            pending = self._pending(dbpath)
            if not pending:
                return []
            offered = self._print_transaction(dbpath, "-Sp", "--nodeps", "--nodeps", END_OF_OPTIONS,
                                              *[update.name for update in pending])
        if offered.exit_code != 0:
            raise ScanError(f"pacman -Sp exited {offered.exit_code}: {tail(_combined(offered), 2000)}")
        by_name = {package.name: package for package in parse_transaction(offered.stdout)}
        return [self._record(update, by_name.get(update.name)) for update in pending]

    def _record(self, update: PendingUpdate, offered: Optional[OfferedPackage]) -> UpdateRecord:
        return UpdateRecord(
            package_type=self.package_type,
            name=update.name,
            current_version=update.current_version,
            available_version=update.available_version,
            repository=offered.repository if offered else "",
            size_bytes=offered.size_bytes if offered else None,
            metadata={"ignored": True} if update.ignored else {},
        )

    def native_listing(self) -> dict[str, str]:
        """What ``checkupdates`` prints: ``pacman -Qu`` against freshly synced copies of the databases."""
        with self.synced_copy() as dbpath:
            listing = self._pending_listing(dbpath)
        # Split by whitespace, not by parse_pending's pattern: a row that pattern missed still shows here.
        return {fields[0]: fields[3] for fields in map(str.split, listing.splitlines())
                if len(fields) >= 4 and fields[2] == "->"}

    # -- operations -----------------------------------------------------------
    # Scanner.check_names has already refused an empty list and anything but an Arch package name.

    def _dry_run(self, names: list[str]) -> OperationResult:
        started = time.monotonic()
        try:
            with self.synced_copy() as dbpath:
                installed = self._installed(dbpath)
                problem = partial_upgrade_problem(names, installed, self._pending(dbpath))
                result = self._print_transaction(dbpath, "-Sup", "--needed", END_OF_OPTIONS, *names)
        except ScanError as exc:
            return _failed(str(exc), started)
        transaction = parse_transaction(result.stdout)
        output = "\n".join(filter(None, [problem, _combined(result)]))
        return OperationResult(
            succeeded=result.exit_code == 0 and not problem,
            exit_code=result.exit_code,
            output_tail=tail(output),
            duration_seconds=time.monotonic() - started,
            dependencies=[package.name for package in transaction if package.name not in names],
            packages=[{"name": package.name, "current_version": installed.get(package.name, ""),
                       "new_version": package.version, "repository": package.repository,
                       "action": "upgrade" if package.name in installed else "install"}
                      for package in transaction],
        )

    def _install(self, names: list[str]) -> OperationResult:
        started = time.monotonic()
        try:
            with self.synced_copy() as dbpath:
                problem = partial_upgrade_problem(names, self._installed(dbpath), self._pending(dbpath))
                offered = parse_transaction(self._print_transaction(dbpath, "-Sup", "--needed").stdout)
            if problem:
                return _failed(f"refused: {problem}; nothing was run", started)
            before = self._installed()
            result = self._pacman("-Syu", "--needed", "--noconfirm", "--noprogressbar", END_OF_OPTIONS, *names)
            after = self._installed()
        except ScanError as exc:
            return _failed(str(exc), started)
        changed = changes(before, after, {package.name: package.repository for package in offered})
        return OperationResult(
            succeeded=result.exit_code == 0,
            exit_code=result.exit_code,
            output_tail=tail(_combined(result)),
            duration_seconds=time.monotonic() - started,
            dependencies=[change["name"] for change in changed if change["action"] == "install"],
            packages=changed,
        )


def _failed(reason: str, started: float) -> OperationResult:
    """A failed operation with no pacman transaction to report: refused (pacman never started), a sync
    or query that failed, or pacman not finishing within the timeout (which the reason says)."""
    return OperationResult(succeeded=False, exit_code=NOT_RUN, output_tail=tail(reason),
                           duration_seconds=time.monotonic() - started)


def _combined(result: CommandOutput) -> str:
    if result.stdout and result.stderr:
        return result.stdout.rstrip("\n") + "\n" + result.stderr
    return result.stdout or result.stderr
