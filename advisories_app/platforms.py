"""Which distribution release a machine runs, which one an advisory speaks of, and how its versions compare.

Both sides are reduced to a (distro, release) pair: an OSV ecosystem ("Debian:12", "Ubuntu:22.04:LTS",
"AlmaLinux:9", "Rocky Linux:9", "Alpine:v3.19", "Red Hat:rhel_eus:9.2::appstream"), a Debian tracker
release name ("bookworm") and an agent's /etc/os-release facts (NAME, VERSION_ID) all land on
("debian", "12"), ("ubuntu", "22.04"), ("almalinux", "9"), ("alpine", "3.19")...

Versions are compared by univers, which implements each ecosystem's own rules (dpkg's epoch, tilde
and revision; rpm's rpmvercmp; apk's suffixes) rather than by a comparison of our own.
"""

from __future__ import annotations

import re
from functools import cache

from univers.versions import AlpineLinuxVersion, DebianVersion, InvalidVersion, RpmVersion, Version

from advisories_app.choices import Distro

# Debian release code names, as the Security Tracker JSON names releases.
DEBIAN_CODENAMES = {"buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14"}

VERSION_CLASSES: dict[str, type[Version]] = {
    Distro.DEBIAN: DebianVersion,
    Distro.UBUNTU: DebianVersion,
    Distro.ALMALINUX: RpmVersion,
    Distro.ROCKY: RpmVersion,
    Distro.RHEL: RpmVersion,
    Distro.ALPINE: AlpineLinuxVersion,
}

# os-release NAME (lower-cased, first word) → distro. The agent sends NAME and VERSION_ID.
OS_NAMES = {"debian": Distro.DEBIAN, "ubuntu": Distro.UBUNTU, "almalinux": Distro.ALMALINUX,
            "rocky": Distro.ROCKY, "red": Distro.RHEL, "alpine": Distro.ALPINE}

_MAJOR = re.compile(r"^(\d+)")
_MAJOR_MINOR = re.compile(r"^(\d+\.\d+)")


def _release(distro: str, version: str) -> str:
    """The release part that advisories use: "22.04" for Ubuntu, "3.19" for Alpine, the major elsewhere."""
    pattern = _MAJOR_MINOR if distro in (Distro.UBUNTU, Distro.ALPINE) else _MAJOR
    match = pattern.match(version.strip().lstrip("v"))
    return match.group(1) if match else ""


def machine_platform(os_name: str, os_version: str) -> tuple[str, str] | None:
    """(distro, release) of a machine from its os-release NAME and VERSION_ID; None when not covered."""
    words = os_name.strip().lower().split()
    distro = OS_NAMES.get(words[0]) if words else None
    if distro is None:
        return None
    release = _release(distro, os_version)
    return (distro, release) if release else None


def osv_platform(ecosystem: str) -> tuple[str, str] | None:
    """(distro, release) of an OSV ecosystem string; None for ecosystems no machine reports.

    Ubuntu Pro/FIPS streams ("Ubuntu:Pro:18.04:LTS") are left out: their fixes ship only to machines
    attached to Ubuntu Pro, which the agent does not report.
    """
    name, _, rest = ecosystem.partition(":")
    if name == "Red Hat":
        # "Red Hat:rhel_eus:9.2::appstream", "Red Hat:enterprise_linux:9::baseos": the stream's major.
        product, _, stream = rest.partition(":")
        release = _release(Distro.RHEL, stream)
        return (Distro.RHEL, release) if product.startswith(("rhel", "enterprise_linux")) and release else None
    if name == "Ubuntu" and rest.startswith("Pro:"):
        return None
    distro = {"Debian": Distro.DEBIAN, "Ubuntu": Distro.UBUNTU, "AlmaLinux": Distro.ALMALINUX,
              "Rocky Linux": Distro.ROCKY, "Alpine": Distro.ALPINE}.get(name)
    release = _release(distro, rest) if distro else ""
    return (distro, release) if release else None


def debian_platform(release_name: str) -> tuple[str, str] | None:
    """(distro, release) of a Debian tracker release name; "bookworm-security" is bookworm's."""
    number = DEBIAN_CODENAMES.get(release_name.removesuffix("-security"))
    return (Distro.DEBIAN, number) if number else None


@cache
def parse_version(distro: str, text: str) -> Version | None:
    """The version in ``distro``'s own ordering; None when it is not a valid version there."""
    try:
        return VERSION_CLASSES[distro](text)
    except (InvalidVersion, ValueError, TypeError):
        return None


def version_less(distro: str, left: str, right: str) -> bool | None:
    """left < right by ``distro``'s rules; None when either is not a valid version (never guessed)."""
    parsed_left, parsed_right = parse_version(distro, left), parse_version(distro, right)
    if parsed_left is None or parsed_right is None:
        return None
    return parsed_left < parsed_right
