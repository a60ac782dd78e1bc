"""Scanners and installers, one per package manager, behind the interface in base.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from agent_client.protocol import Capability
from agent_client.scanners.apt import AptScanner
from agent_client.scanners.base import Scanner
from agent_client.scanners.dnf import DnfScanner
from agent_client.scanners.docker import DockerScanner
from agent_client.scanners.flatpak import FlatpakScanner
from agent_client.scanners.pacman import PacmanScanner
from agent_client.scanners.windows_update import WindowsUpdateScanner
from agent_client.scanners.winget import WingetScanner
from agent_client.scanners.zypper import ZypperScanner


def build_scanners(state_dir: Path) -> dict[str, Scanner]:
    """One scanner per package type, keyed by it; each says itself whether its tool exists on this host."""
    scanners: list[Scanner] = [
        AptScanner(state_dir=str(state_dir)),
        DnfScanner(),
        DockerScanner(),
        FlatpakScanner(),
        PacmanScanner(),
        WindowsUpdateScanner(),
        WingetScanner(),
        ZypperScanner(),
    ]
    return {scanner.package_type: scanner for scanner in scanners}


def capabilities(scanners: dict[str, Scanner], limit: Optional[Sequence[str]] = None) -> list[str]:
    """What this agent offers the server: the package managers that work here (each scanner's
    ``is_available`` runs its tool: a dnf with an enabled repository, a Docker daemon that answers),
    plus system and storage; never more than ``limit`` (``register --capabilities``) when one is set."""
    offered = [name for name, scanner in scanners.items() if scanner.is_available()] + list(Capability.ALWAYS_AVAILABLE)
    return [name for name in offered if limit is None or name in limit]
