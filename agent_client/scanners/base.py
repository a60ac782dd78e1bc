"""The one small interface every package-manager scanner and installer implements.

A scanner reports whether its tool exists on this host (``is_available``), then
returns normalized :class:`UpdateRecord` rows. An installer runs a dry-run or a
real install of named packages and returns an :class:`OperationResult`.
Nothing here may claim success for work that failed.

One refusal for every installer: :meth:`Scanner.dry_run` and
:meth:`Scanner.install` check the names first and raise
:class:`PackageNamesRefused` - before any process starts - for an empty list
or any name that is not a plain name (empty, starting with ``-``, holding
whitespace or control characters) or that the package manager's own rule
(:meth:`Scanner.is_valid_name`) rejects. The executor turns the refusal into
a failed command result whose output is its one line.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from agent_client.protocol import PackageType

# One severity vocabulary for every scanner; the server refuses anything else.
SEVERITIES = ("critical", "important", "moderate", "low", "unknown")
OUTPUT_TAIL_CHARS = 8000
# The server stores package names in 255 characters.
MAX_PACKAGE_NAME_CHARS = 255
# A refusal names at most this many of the refused names (it stays one short line).
MAX_REFUSED_NAMES_SHOWN = 5


class ScanError(Exception):
    """The package tool was present but the scan could not be completed."""


class PackageNamesRefused(Exception):
    """A dry-run or install was asked for names its tool must not be given; nothing was run.

    ``names`` are the refused names (empty when no name was given at all).
    """

    def __init__(self, package_type: str, names: Sequence[Any]) -> None:
        self.package_type = package_type
        self.names = list(names)
        if self.names:
            shown = ", ".join(repr(name) for name in self.names[:MAX_REFUSED_NAMES_SHOWN])
            if len(self.names) > MAX_REFUSED_NAMES_SHOWN:
                shown += f" and {len(self.names) - MAX_REFUSED_NAMES_SHOWN} more"
            reason = f"invalid {package_type} package name(s): {shown}"
        else:
            reason = f"no {package_type} package names given"
        super().__init__(f"refused: {reason}; nothing was run")


def is_plain_name(name: Any) -> bool:
    """The rule every package manager shares: a non-empty string of printable, non-space
    characters that cannot be read as an option (no leading ``-``)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_PACKAGE_NAME_CHARS
        and not name.startswith("-")
        and name.isprintable()
        and not any(char.isspace() for char in name)
    )


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
    ``_dry_run`` and ``_install``; they narrow ``is_valid_name`` to their tool's names."""

    package_type: str = ""

    def is_available(self) -> bool:
        raise NotImplementedError

    def scan(self) -> list[UpdateRecord]:
        raise NotImplementedError

    def is_valid_name(self, name: str) -> bool:
        """This package manager's own rule for one (already plain) name."""
        return True

    def check_names(self, names: Sequence[Any]) -> list[str]:
        """The names as a list, or PackageNamesRefused: none given, or any not a valid name here."""
        names = list(names)
        refused = [name for name in names if not (is_plain_name(name) and self.is_valid_name(name))]
        if refused or not names:
            raise PackageNamesRefused(self.package_type, refused)
        return names

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
