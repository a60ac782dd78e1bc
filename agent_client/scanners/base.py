"""The one small interface every package-manager scanner and installer implements.

A scanner reports whether its tool exists on this host (``is_available``), then
returns normalized :class:`UpdateRecord` rows. An installer runs a dry-run or a
real install of named packages and returns an :class:`OperationResult`.
Nothing here may claim success for work that failed.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

# One severity vocabulary for every scanner; the server refuses anything else.
SEVERITIES = ("critical", "important", "moderate", "low", "unknown")
PACKAGE_TYPES = ("apt", "dnf", "docker", "windows_update", "winget")
OUTPUT_TAIL_CHARS = 8000


class ScanError(Exception):
    """The package tool was present but the scan could not be completed."""


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
    cve_ids: List[str] = dataclasses.field(default_factory=list)
    kb_ids: List[str] = dataclasses.field(default_factory=list)
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.package_type not in PACKAGE_TYPES:
            raise ValueError(f"unknown package type {self.package_type!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class OperationResult:
    """Outcome of a dry-run or an install."""

    succeeded: bool
    exit_code: int
    output_tail: str
    duration_seconds: float
    # For a dry-run: the extra packages the operation would pull in (not requested).
    dependencies: List[str] = dataclasses.field(default_factory=list)
    # Packages the operation would change or changed, with versions where known.
    packages: List[Dict[str, str]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def tail(text: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    return text[-limit:]


@dataclasses.dataclass
class CommandOutput:
    argv: List[str]
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


class Scanner:
    """Base class: subclasses set ``package_type`` and implement the methods."""

    package_type: str = ""

    def is_available(self) -> bool:
        raise NotImplementedError

    def scan(self) -> List[UpdateRecord]:
        raise NotImplementedError

    def dry_run(self, names: List[str]) -> OperationResult:
        raise NotImplementedError

    def install(self, names: List[str]) -> OperationResult:
        raise NotImplementedError
