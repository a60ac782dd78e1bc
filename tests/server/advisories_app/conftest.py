"""The saved real feed slices (../shared/data/advisories beside the checkout, see its SOURCES.md),
and a fleet shaped like the machines those advisories speak of."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from agents_app.models import Agent, PackageUpdate
from tests.server.conftest import machine_hash

ROOT = Path(__file__).resolve().parents[3]
FEEDS = ROOT.parent / "shared" / "data" / "advisories"


def feed(relative: str) -> Path:
    path = FEEDS / relative
    if not path.exists():
        pytest.fail(f"the advisory slices are missing: {path} (CI keeps ../shared/ beside the checkout)")
    return path


KEV_2025 = "kev/known_exploited_vulnerabilities.cisagov-2025.08.25.slice.json"
KEV_2026_DELTA = "kev/known_exploited_vulnerabilities.vendored-2026.01.27.delta.json"
EPSS_CURRENT = "epss/epss_scores-current.lodestone-2026-09-29.slice.csv"
DEBIAN_TRACKER = "debian-tracker/osvdev-debian-security-tracker.json"


def machine(hostname: str, os_name: str, os_version: str) -> Agent:
    return Agent.objects.create(hostname=hostname, os_family="linux", os_name=os_name, os_version=os_version,
                                machine_id_hash=machine_hash(hostname))


def pending(agent: Agent, name: str, current: str, available: str, package_type: str = "apt",
            **fields) -> PackageUpdate:
    return PackageUpdate.objects.create(agent=agent, package_type=package_type, name=name,
                                        current_version=current, available_version=available, **fields)


@pytest.fixture
def feed_server():
    """The slices served by a real http.server on an ephemeral port; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(FEEDS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
