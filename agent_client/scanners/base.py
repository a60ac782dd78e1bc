"""The one small interface every package-manager scanner and installer implements.

A scanner reports whether its tool exists on this host (``is_available``), then
returns normalized :class:`UpdateRecord` rows. An installer runs a dry-run or a
real install of named packages and returns an :class:`OperationResult`.
Nothing here may claim success for work that failed.

One rule for package names, in one place: ``protocol.package_name_problem``,
the grammar the server also applies before it stores a scanned name or signs a
command. :meth:`Scanner.name_problem` is that rule, narrowed only where a
scanner has a stricter rule of its own (and says why there). It is used twice:

* :meth:`Scanner.dry_run` and :meth:`Scanner.install` check the names first and
  raise :class:`PackageNamesRefused` - before any process starts - for an empty
  list or any name the rule refuses (an option, a URL, a path, a group or
  module, a glob, whitespace or a shell metacharacter). The executor turns the
  refusal into a failed command result whose output is its one line.
* :meth:`Scanner.sort_for_report` keeps a scanned name the rule refuses out of
  a scan report's ``updates`` and lists it, with the reason, in
  ``not_checked``: the server refuses a whole report (400) for one such name.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from agent_client.protocol import PackageType, package_name_problem

# One severity vocabulary for every scanner; the server refuses anything else.
SEVERITIES = ("critical", "important", "moderate", "low", "unknown")
OUTPUT_TAIL_CHARS = 8000
# A refusal names at most this many of the refused names (it stays one short line).
MAX_REFUSED_NAMES_SHOWN = 5
# The server stores each not_checked line in 255 characters and takes at most 1000 of them.
NOT_CHECKED_LINE_CHARS = 255
MAX_NOT_CHECKED = 1000


class ScanError(Exception):
    """The package tool was present but the scan could not be completed."""


class PackageNamesRefused(Exception):
    """A dry-run or install was asked for names its tool must not be given; nothing was run.

    ``names`` are the refused names (empty when no name was given at all); ``problem``
    is why the first of them was refused.
    """

    def __init__(self, package_type: str, names: Sequence[Any], problem: str = "") -> None:
        self.package_type = package_type
        self.names = list(names)
        self.problem = problem
        if self.names:
            shown = ", ".join(shown_name(name) for name in self.names[:MAX_REFUSED_NAMES_SHOWN])
            if len(self.names) > MAX_REFUSED_NAMES_SHOWN:
                shown += f" and {len(self.names) - MAX_REFUSED_NAMES_SHOWN} more"
            reason = f"invalid {package_type} package name(s): {shown}"
            if problem:
                reason += f" ({problem})"
        else:
            reason = f"no {package_type} package names given"
        super().__init__(f"refused: {reason}; nothing was run")


def shown_name(name: Any, limit: int = 60) -> str:
    """A name as a refusal shows it: quoted, escaped (a newline cannot split the line), shortened."""
    text = ascii(name) if isinstance(name, str) else f"<{type(name).__name__}>"
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def not_checked_line(name: Any, reason: str) -> str:
    """One entry of a scan report's ``not_checked``: ``name: reason``, printable, at most 255 characters."""
    text = name if isinstance(name, str) and name.isprintable() and len(name) <= 128 else shown_name(name, 128)
    line = f"{text}: {reason}"
    if not line.isprintable():
        line = ascii(line)[1:-1]
    return line[:NOT_CHECKED_LINE_CHARS]


@dataclasses.dataclass
class UpdateRecord:
    package_type: str
    name: str
    current_version: str
    available_version: str
    severity: str = "unknown"
    is_security: bool = False
    repository: str = ""
    size_bytes: Optional[int] = None
    cve_ids: list[str] = dataclasses.field(default_factory=list)
    kb_ids: list[str] = dataclasses.field(default_factory=list)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.package_type not in PackageType.ALL:
            raise ValueError(f"unknown package type {self.package_type!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class OperationResult:
    """Outcome of a dry-run or an install."""

    succeeded: bool
    exit_code: int
    output_tail: str
    duration_seconds: float
    # For a dry-run: the extra packages the operation would pull in (not requested).
    dependencies: list[str] = dataclasses.field(default_factory=list)
    # Packages the operation would change or changed, with versions where known.
    packages: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tail(text: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    return text[-limit:]


@dataclasses.dataclass
class CommandOutput:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    duration_seconds: float


def run_command(
    argv: Sequence[str],
    *,
    timeout: float = 1800,
    env: Optional[Mapping[str, str]] = None,
    stdin: Optional[str] = None,
) -> CommandOutput:
    """Run a package tool with a clean, non-interactive, C-locale environment.

    Never raises for a non-zero exit: callers decide what an exit code means
    (``dnf check-update`` exits 100 when updates exist). A missing binary or
    a timeout raises ScanError naming the command.
    """
    full_env = dict(os.environ)
    full_env.update({"LC_ALL": "C", "LANG": "C", "DEBIAN_FRONTEND": "noninteractive"})
    if env:
        full_env.update(env)
    started = time.monotonic()
    try:
        completed = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=full_env,
        )
    except FileNotFoundError as exc:
        raise ScanError(f"{argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise ScanError(f"{argv[0]} did not finish within {timeout:.0f} s") from exc
    return CommandOutput(
        argv=list(argv),
        exit_code=completed.returncode,
        stdout=completed.stdout,
        stderr=completed.stderr,
        duration_seconds=time.monotonic() - started,
    )


# What a scanner runs its tool with: run_command, or a test's recording fake.
CommandRunner = Callable[..., CommandOutput]


class Scanner:
    """Base class: subclasses set ``package_type`` and implement ``is_available``, ``scan``,
    ``_dry_run`` and ``_install``; a stricter name rule goes in ``extra_name_problem``."""

    package_type: str = ""

    def is_available(self) -> bool:
        raise NotImplementedError

    def scan(self) -> list[UpdateRecord]:
        raise NotImplementedError

    def name_problem(self, name: Any) -> Optional[str]:
        """Why ``name`` must not reach this package manager; None when it may.

        The rule is protocol.package_name_problem, the server's own; a scanner
        adds only a stricter rule of its own, in ``extra_name_problem``.
        """
        return package_name_problem(self.package_type, name) or self.extra_name_problem(name)

    def extra_name_problem(self, name: str) -> Optional[str]:
        """A scanner's stricter rule for a name the grammar already accepted; None by default."""
        return None

    def check_names(self, names: Sequence[Any]) -> list[str]:
        """The names as a list, or PackageNamesRefused: none given, or any that ``name_problem`` refuses."""
        names = list(names)
        problems = [(name, self.name_problem(name)) for name in names]
        refused = [(name, problem) for name, problem in problems if problem is not None]
        if refused or not names:
            raise PackageNamesRefused(self.package_type, [name for name, _ in refused],
                                      refused[0][1] if refused else "")
        return names

    def sort_for_report(self, records: Sequence[UpdateRecord]) -> tuple[list[UpdateRecord], list[str]]:
        """(records the server takes, ``not_checked`` lines for the rest).

        A scanned name that ``name_problem`` refuses, or a name seen twice, would
        make the server refuse the whole report: it is listed as not checked,
        with the reason, never sent as an update.
        """
        kept: list[UpdateRecord] = []
        not_checked: list[str] = []
        seen: set[str] = set()
        for record in records:
            problem = self.name_problem(record.name)
            if problem is None and record.name in seen:
                problem = "reported twice by one scan"
            if problem is not None:
                not_checked.append(not_checked_line(record.name, f"not reported: {problem}"))
                continue
            seen.add(record.name)
            kept.append(record)
        return kept, not_checked

    def dry_run(self, names: Sequence[str]) -> OperationResult:
        """What installing ``names`` would do, changing nothing. Raises PackageNamesRefused first."""
        return self._dry_run(self.check_names(names))

    def install(self, names: Sequence[str]) -> OperationResult:
        """Install (upgrade) ``names``. Raises PackageNamesRefused before anything runs."""
        return self._install(self.check_names(names))

    def _dry_run(self, names: list[str]) -> OperationResult:
        raise NotImplementedError

    def _install(self, names: list[str]) -> OperationResult:
        raise NotImplementedError

    def native_listing(self) -> dict[str, str]:
        """The package tool's own plain listing of pending updates, name -> available version.

        Taken by a different route from :meth:`scan` (the tool's simplest "what would upgrade"
        command), so that ``scan --verify`` can show where the two disagree. A scanner with no
        such listing raises NotImplementedError.
        """
        raise NotImplementedError
