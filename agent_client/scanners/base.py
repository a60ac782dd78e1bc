"""The one small interface every package-manager scanner and installer implements.

A scanner reports whether its tool exists on this host (``is_available``), then
returns normalized :class:`UpdateRecord` rows. An installer runs a dry-run or a
real install of named packages and returns an :class:`OperationResult`.
Nothing here may claim success for work that failed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

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
