"""Release detection, and univers' version order checked against the distributions' own tools.

Every fixed version in the Debian/Ubuntu slices is compared by ``dpkg --compare-versions`` and every
one in the AlmaLinux/Rocky slices by rpm's own rpmvercmp (``rpm --eval %{lua: rpm.vercmp(…)}``),
against the versions the records list and against neighbours that differ in the last character.
No apk tool is packaged for Debian, so Alpine's order is checked on hand-picked pairs.
"""

from __future__ import annotations

import itertools
import subprocess

import pytest

from advisories_app.choices import Distro
from advisories_app.importers import osv_records, read_source
from advisories_app.platforms import debian_platform, machine_platform, osv_platform, version_less
from tests.agent.conftest import require_tools
from tests.server.advisories_app.conftest import feed


@pytest.mark.parametrize(("os_name", "os_version", "expected"), [
    ("Debian GNU/Linux", "12", (Distro.DEBIAN, "12")),
    ("Ubuntu", "22.04", (Distro.UBUNTU, "22.04")),
    ("AlmaLinux", "9.4", (Distro.ALMALINUX, "9")),
    ("Rocky Linux", "8.10", (Distro.ROCKY, "8")),
    ("Red Hat Enterprise Linux", "9.2", (Distro.RHEL, "9")),
    ("Alpine Linux", "3.19.1", (Distro.ALPINE, "3.19")),
    ("Windows 11", "10.0.22631", None),
    ("Debian GNU/Linux", "", None),  # sid/testing has no VERSION_ID: no release to match
])
def test_machine_platform(os_name, os_version, expected):
    assert machine_platform(os_name, os_version) == expected


def test_advisory_platforms_agree_with_machines():
    assert osv_platform("Debian:12") == debian_platform("bookworm") == debian_platform("bookworm-security") \
        == machine_platform("Debian GNU/Linux", "12")
    assert osv_platform("Ubuntu:22.04:LTS") == machine_platform("Ubuntu", "22.04")
    assert osv_platform("Ubuntu:Pro:22.04:LTS") is None
    assert osv_platform("Red Hat:rhel_eus:9.2::appstream") == machine_platform("Red Hat Enterprise Linux", "9.4")
    assert osv_platform("Alpine:v3.19") == machine_platform("Alpine Linux", "3.19.4")


def _version_pairs(directories: list[str]) -> list[tuple[str, str]]:
    pairs = set()
    for directory in directories:
        for record in osv_records(read_source(feed(directory))):
            for affected in record["affected"]:
                fixed = [event["fixed"] for version_range in affected.get("ranges", [])
                         for event in version_range["events"] if "fixed" in event]
                for version in fixed:
                    neighbour = version[:-1] + ("0" if version[-1] != "0" else "1")
                    pairs.update((version, other) for other in [neighbour, *affected.get("versions", [])[:6]])
    return sorted(pairs)


def _dpkg_less(left: str, right: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", left, "lt", right], check=False).returncode == 0


def _rpm_less(pairs: list[tuple[str, str]]) -> list[bool]:
    """rpmvercmp over EVR strings, all pairs in one rpm run."""
    calls = "".join(f'print(rpm.vercmp("{left}", "{right}") .. " ") ' for left, right in pairs)
    output = subprocess.run(["rpm", "--eval", f"%{{lua: {calls}}}"], capture_output=True, text=True,
                            check=True).stdout.split()
    return [int(value) < 0 for value in output]


def test_debian_and_ubuntu_versions_order_as_dpkg_does():
    require_tools("dpkg")
    pairs = _version_pairs(["osv/debian", "osv/ubuntu"])
    assert len(pairs) > 100
    disagreements = [(left, right) for left, right in pairs
                     if version_less(Distro.DEBIAN, left, right) != _dpkg_less(left, right)]
    assert disagreements == []


def test_rpm_versions_order_as_rpmvercmp_does():
    require_tools("rpm")
    pairs = [pair for pair in _version_pairs(["osv/almalinux", "osv/rocky"]) if '"' not in "".join(pair)]
    assert len(pairs) > 50
    expected = list(itertools.chain.from_iterable(_rpm_less(pairs[start:start + 200])
                                                  for start in range(0, len(pairs), 200)))
    assert [version_less(Distro.ALMALINUX, left, right) for left, right in pairs] == expected


@pytest.mark.parametrize(("left", "right"), [
    ("2.43.6-r0", "2.43.7-r0"), ("2.43.7-r0", "2.43.7-r1"), ("3.1.8_rc1-r0", "3.1.8-r0"),
    ("3.1.8-r0", "3.1.8_p1-r0"), ("1.2.3-r9", "1.2.3a-r0"),
])
def test_alpine_order(left, right):
    """apk-tools' rules (version.c): _rc before the release, _p after it, -rN the package revision."""
    assert version_less(Distro.ALPINE, left, right) is True
    assert version_less(Distro.ALPINE, right, left) is False


def test_an_unparseable_version_gives_no_answer():
    assert version_less(Distro.DEBIAN, "not a version!", "1.0-1") is None
