"""Re-capture the real apt outputs the parser tests read (root, Debian/Ubuntu).

    cd /work/main && .venv/bin/python -m tests.agent.apt_fixtures.capture

Builds the same repository as test_apt.py in a temporary directory, installs
the old test packages, holds redflag-test-held, records each command's stdout
into this directory, then purges and unholds everything.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.agent.test_apt import (
    HELD,
    OLD_VERSIONS,
    PKG,
    SEC,
    AptRepo,
    apt_mark,
    check,
    remove_test_packages,
    run,
)

OUT = Path(__file__).parent


def main() -> None:
    repo = AptRepo(Path(tempfile.mkdtemp(prefix="redflag-apt-capture-")))
    repo.build()
    argv = repo.apt_argv()
    try:
        remove_test_packages(argv)
        check(["apt-get", "-q", *argv, "install", "-y", *[str(repo.old_debs[n]) for n, _, _ in OLD_VERSIONS]])
        apt_mark("hold", [HELD])
        check(["apt-get", "-q", *argv, "update"])
        captures = {
            "dist_upgrade_simulation.txt": [
                "apt-get", "-q", *argv, "-s", "-o", "APT::Get::Show-Versions=true", "dist-upgrade",
            ],
            "dry_run_held.txt": ["apt-get", "-q", *argv, "-s", "install", "--only-upgrade", HELD],
            "policy_held.txt": ["apt-cache", *argv, "policy", HELD],
            "cache_show.txt": ["apt-cache", *argv, "show", "--no-all-versions", PKG, SEC, HELD],
            "install_output.txt": [
                "apt-get", "-q", *argv, "install", "-y", "--only-upgrade",
                "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", PKG, SEC,
            ],
        }
        for name, command in captures.items():
            result = run(command)
            (OUT / name).write_text(result.stdout)
            print(name, "exit", result.returncode)
    finally:
        remove_test_packages(argv)


if __name__ == "__main__":
    main()
