"""Scanners and installers, one per package manager, behind the interface in base.py.

Each scanner module is imported when its scanner is first used, not when the agent starts: an
idle agent keeps only the ones this host has (bench/agent.py measures the agent's memory against
a bare interpreter; the eight modules together hold about 3 MiB).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from agent_client.protocol import Capability, PackageType
from agent_client.scanners.base import Scanner

# package type -> (module, class); the arguments each gets are in build_scanners.
SCANNER_CLASSES = {
    PackageType.APT: ("agent_client.scanners.apt", "AptScanner"),
    PackageType.DNF: ("agent_client.scanners.dnf", "DnfScanner"),
    PackageType.DOCKER: ("agent_client.scanners.docker", "DockerScanner"),
    PackageType.FLATPAK: ("agent_client.scanners.flatpak", "FlatpakScanner"),
    PackageType.PACMAN: ("agent_client.scanners.pacman", "PacmanScanner"),
    PackageType.WINDOWS_UPDATE: ("agent_client.scanners.windows_update", "WindowsUpdateScanner"),
    PackageType.WINGET: ("agent_client.scanners.winget", "WingetScanner"),
    PackageType.ZYPPER: ("agent_client.scanners.zypper", "ZypperScanner"),
}


def scanner_class(package_type: str) -> type:
    module, name = SCANNER_CLASSES[package_type]
    return getattr(importlib.import_module(module), name)


class LazyScanner:
    """A scanner whose module is imported, and which is built, at its first use; it then behaves as
    the scanner itself (every attribute is the real scanner's)."""

    def __init__(self, package_type: str, **kwargs: Any) -> None:
        self.package_type = package_type
        self._kwargs = kwargs
        self._scanner: Optional[Scanner] = None
        self._lock = threading.Lock()

    @property
    def scanner(self) -> Scanner:
        if self._scanner is None:
            with self._lock:
                if self._scanner is None:
                    self._scanner = scanner_class(self.package_type)(**self._kwargs)
        return self._scanner

    def __getattr__(self, name: str) -> Any:  # only for what the proxy itself does not have
        return getattr(self.scanner, name)

    def __repr__(self) -> str:
        return f"LazyScanner({self.package_type!r}, loaded={self._scanner is not None})"


def build_scanners(state_dir: Path) -> dict[str, Scanner]:
    """One scanner per package type, keyed by it; each says itself whether its tool exists on this host."""
    arguments: dict[str, dict[str, Any]] = {PackageType.APT: {"state_dir": str(state_dir)}}
    return {kind: LazyScanner(kind, **arguments.get(kind, {})) for kind in SCANNER_CLASSES}  # type: ignore[misc]


def capabilities(scanners: dict[str, Scanner], limit: Optional[Sequence[str]] = None) -> list[str]:
    """What this agent offers the server: the package managers that work here (each scanner's
    ``is_available`` runs its tool: a dnf with an enabled repository, a Docker daemon that answers),
    plus system and storage; never more than ``limit`` (``register --capabilities``) when one is set.
    A manager outside ``limit`` is not probed (nor its scanner loaded): it could not be offered."""
    offered = [name for name, scanner in scanners.items()
               if (limit is None or name in limit) and scanner.is_available()]
    return offered + [name for name in Capability.ALWAYS_AVAILABLE if limit is None or name in limit]
