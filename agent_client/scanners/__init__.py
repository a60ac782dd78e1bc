"""Scanners and installers, one per package manager, behind the interface in base.py."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from agent_client.scanners.base import Scanner

# What every agent can report besides package managers (system and storage facts).
ALWAYS_AVAILABLE = ["storage", "system"]


def build_scanners(state_dir: Path) -> Dict[str, Scanner]:
    """One scanner per package type; each says itself whether its tool exists on this host."""
    from agent_client.scanners.apt import AptScanner
    from agent_client.scanners.dnf import DnfScanner
    from agent_client.scanners.docker import DockerScanner
    from agent_client.scanners.windows_update import WindowsUpdateScanner
    from agent_client.scanners.winget import WingetScanner

    return {
        "apt": AptScanner(state_dir=str(state_dir)),
        "dnf": DnfScanner(),
        "docker": DockerScanner(),
        "windows_update": WindowsUpdateScanner(),
        "winget": WingetScanner(),
    }


def capabilities(scanners: Dict[str, Scanner]) -> List[str]:
    """The subsystems to ask the server for: available package managers plus system and storage."""
    return [name for name, scanner in scanners.items() if scanner.is_available()] + ALWAYS_AVAILABLE
