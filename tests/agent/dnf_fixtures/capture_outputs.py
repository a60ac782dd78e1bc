"""Re-record the dnf outputs the parser unit tests read.

The files in this directory were captured from dnf 4.14.0 (Debian 12
package ``dnf`` 4.14.0-3+deb12u1, rpm 4.18.0) by running, as root::

    cd /work/main && python3 -m tests.agent.dnf_fixtures.capture_outputs

It builds a richer world than the system test (an epoch, a package name too
long for dnf's columns, an advisory with two CVEs and two bugs, an
enhancement) so the parsers see those shapes in real output, and a second one with
the hard cases of sandbox.HARD_* (``check_update_obsoleting``, ``upgrade_assumeno_machine``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from agent_client.scanners.dnf import REPOQUERY_FORMAT
from tests.agent.dnf_fixtures.sandbox import (
    HARD_ADVISORIES,
    HARD_NEW,
    HARD_OLD,
    Advisory,
    DnfSandbox,
    RpmSpec,
    build_rpms,
    make_repository,
)

HERE = Path(__file__).resolve().parent
LONG_NAME = "redflag-test-a-package-name-much-longer-than-the-column"

OLD = [
    RpmSpec("redflag-test-pkg", "1.0"),
    RpmSpec("redflag-test-sec", "1.0"),
    RpmSpec("redflag-test-epoch", "2.0", epoch=3),
    RpmSpec(LONG_NAME, "1.0"),
]
NEW = [
    RpmSpec("redflag-test-pkg", "1.1", requires=("redflag-test-dep",)),
    RpmSpec("redflag-test-dep", "1.0"),
    RpmSpec("redflag-test-sec", "1.1"),
    RpmSpec("redflag-test-epoch", "2.1", epoch=3),
    RpmSpec(LONG_NAME, "1.1"),
]
ADVISORIES = [
    Advisory(
        "RFSA-2024:0001", "security", "Important", "Important: redflag-test-sec security update",
        (NEW[2],), cves=("CVE-2024-12345",),
    ),
    Advisory("RFBA-2024:0002", "bugfix", "None", "redflag-test-pkg bug fix update", (NEW[0],)),
    Advisory(
        "RFSA-2024:0003", "security", "Critical", "Critical: long package security update",
        (NEW[4],), cves=("CVE-2024-0001", "CVE-2024-0002"),
        bugs=(("2001", "first flaw"), ("2002", "second flaw")),
        description="First line of the description.\nSecond line of the description.",
    ),
    Advisory("RFEA-2024:0004", "enhancement", "Moderate", "redflag-test-epoch enhancement", (NEW[3],)),
]


def dnf(sandbox: DnfSandbox, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C", LANG="C")
    return subprocess.run(
        ["dnf", *sandbox.dnf_options(), *args], capture_output=True, text=True, env=env
    )


def save(name: str, completed: subprocess.CompletedProcess) -> None:
    (HERE / f"{name}.stdout").write_text(completed.stdout)
    (HERE / f"{name}.stderr").write_text(completed.stderr)
    (HERE / f"{name}.rc").write_text(f"{completed.returncode}\n")
    print(f"{name}: exit {completed.returncode}", file=sys.stderr)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rpms = build_rpms(base, OLD + NEW)
        make_repository(base / "repo", [rpms[s.filename] for s in NEW], ADVISORIES)
        sandbox = DnfSandbox(base)
        sandbox.rpm_install([rpms[s.filename] for s in OLD])
        names = [s.name for s in OLD]
        save("check_update", dnf(sandbox, "check-update"))
        save(
            "repoquery_installed",
            dnf(sandbox, "repoquery", "--installed", "--latest-limit=1",
                "--qf", REPOQUERY_FORMAT, *names),
        )
        save("updateinfo_list", dnf(sandbox, "updateinfo", "list", "--updates"))
        save("updateinfo_info", dnf(sandbox, "updateinfo", "info", "--updates"))
        save("upgrade_assumeno", dnf(sandbox, "upgrade", "--assumeno", "redflag-test-pkg", LONG_NAME))
        save("upgrade_nonexistent", dnf(sandbox, "upgrade", "-y", "redflag-test-no-such-package"))
        save("upgrade_partial_match",
             dnf(sandbox, "upgrade", "--assumeno", "redflag-test-no-such-package", "redflag-test-sec"))
        save("upgrade_install", dnf(sandbox, "upgrade", "-y", "redflag-test-pkg", "redflag-test-epoch"))
        save("upgrade_nothing_to_do", dnf(sandbox, "upgrade", "--assumeno", "redflag-test-pkg"))
        save("check_update_none", dnf(sandbox, "check-update", "redflag-test-pkg"))
    capture_hard_cases()


def capture_hard_cases() -> None:
    """The obsoleting package and the noarch/x86_64 pair (sandbox.HARD_*): check-update and the
    whole-machine transaction the scanner asks for when check-update is ambiguous."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rpms = build_rpms(base, HARD_OLD + HARD_NEW)
        make_repository(base / "repo", [rpms[s.filename] for s in HARD_NEW], HARD_ADVISORIES)
        sandbox = DnfSandbox(base)
        sandbox.rpm_install([rpms[s.filename] for s in HARD_OLD])
        save("check_update_obsoleting", dnf(sandbox, "check-update"))
        save("upgrade_assumeno_machine", dnf(sandbox, "upgrade", "--assumeno"))


if __name__ == "__main__":
    main()
