"""One refusal contract for every installer (agent_client/scanners/base.py).

A dry-run or install asked for a name its package manager must not be given
raises PackageNamesRefused with one line of reason, and starts no process: the
tools on PATH here are recording fakes (and Docker's Engine a recording fake
socket), so "nothing ran" is observed, not assumed. A control test shows the
same recorders do see a valid name run.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from agent_client.protocol import PackageType
from agent_client.scanners.apt import AptScanner
from agent_client.scanners.base import PackageNamesRefused, ScanError, Scanner
from agent_client.scanners.dnf import DnfScanner
from agent_client.scanners.docker import DockerScanner
from agent_client.scanners.windows_update import WindowsUpdateScanner
from agent_client.scanners.winget import WingetScanner
from tests.agent.test_docker import FakeEngine

# Refused by every package manager: option-like, shell-like, empty, whitespace, control characters.
COMMON_BAD_NAMES = ["-o Dpkg::x", "foo;rm -rf /", "", "two words", "--allow-unauthenticated", "-y", "tab\tname",
                    "new\nline", "x" * 256]
# Refused by one package manager's own rule.
OWN_BAD_NAMES = {
    PackageType.APT: ["Foo", "foo;rm", "a"],  # Debian policy: lowercase, 2+ characters of [a-z0-9+.-]
    PackageType.DNF: [],  # dnf takes globs, name.arch and NEVRAs: the common rule is its rule
    PackageType.DOCKER: ["Nginx:1", "nginx;latest", "/nginx"],  # a reference, lowercase repository
    PackageType.WINDOWS_UPDATE: ["KB4601345", "KB4601345;Remove-Item"],  # only a GUID goes into the script
    PackageType.WINGET: ["DolbyLaboratories.DolbyAccessOEM_rz1teb\u2026", "Microsoft.Edg..."],  # truncated Ids
}
VALID_NAME = {
    PackageType.APT: "openssl",
    PackageType.DNF: "openssl",
    PackageType.DOCKER: "nginx:1.25",
    PackageType.WINDOWS_UPDATE: "bcd58b64-3cef-42da-b169-a66060ae195e",
    PackageType.WINGET: "Microsoft.Edge",
}
FAKE_TOOLS = ("apt-get", "apt-cache", "apt-mark", "dpkg-query", "dnf", "dnf-3", "dnf5", "powershell", "winget")
OPERATIONS = ("dry_run", "install")


class Tools:
    """Recording fakes for every tool an installer could start, and the scanners wired to them."""

    def __init__(self, root: Path, engine: FakeEngine) -> None:
        self.root = root
        self.bin = root / "bin"
        self.log = root / "started.log"
        self.engine = engine
        self.bin.mkdir()
        for name in FAKE_TOOLS:
            fake = self.bin / name
            fake.write_text(f'#!/bin/sh\necho "$0 $*" >> "{self.log}"\nexit 0\n')
            fake.chmod(0o755)

    def scanner(self, package_type: str) -> Scanner:
        scanners = {
            PackageType.APT: lambda: AptScanner(state_dir=str(self.root / "state")),
            PackageType.DNF: lambda: DnfScanner(),
            PackageType.DOCKER: lambda: DockerScanner(socket_path=self.engine.socket_path, registry_timeout=1),
            PackageType.WINDOWS_UPDATE: lambda: WindowsUpdateScanner(powershell=str(self.bin / "powershell")),
            PackageType.WINGET: lambda: WingetScanner(winget=str(self.bin / "winget")),
        }
        return scanners[package_type]()

    def started(self) -> list[str]:
        """Every process a fake tool saw start, then every request the fake Engine saw."""
        processes = self.log.read_text().splitlines() if self.log.exists() else []
        return processes + [f"docker engine {method} {path}" for method, path in self.engine.requests]


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    # One fake Engine for the module (stopping one takes half a second); each test starts with no requests.
    # AF_UNIX paths are limited to ~107 bytes; tmp_path can be longer.
    socket_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rf-refusal-{uuid.uuid4().hex[:12]}.sock"
    fake = FakeEngine(str(socket_path))
    yield fake
    fake.close()
    socket_path.unlink(missing_ok=True)


@pytest.fixture
def tools(tmp_path, monkeypatch, engine) -> Tools:
    engine.requests.clear()
    fakes = Tools(tmp_path, engine)
    monkeypatch.setenv("PATH", str(fakes.bin))  # nothing but the recorders can start
    return fakes


def refusal(package_type: str, name: str) -> str:
    """The one reason, word for word, whatever the package manager."""
    return f"refused: invalid {package_type} package name(s): {name!r}; nothing was run"


BAD_CASES = [(package_type, name) for package_type in PackageType.ALL
             for name in COMMON_BAD_NAMES + OWN_BAD_NAMES[package_type]]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("package_type,bad_name", BAD_CASES)
def test_a_bad_name_is_refused_with_one_reason_and_nothing_starts(tools, package_type, bad_name, operation):
    scanner = tools.scanner(package_type)
    with pytest.raises(PackageNamesRefused) as refused:
        # A valid name beside it does not let the command through: the whole command is refused.
        getattr(scanner, operation)([VALID_NAME[package_type], bad_name])
    assert str(refused.value) == refusal(package_type, bad_name)
    assert "\n" not in str(refused.value)
    assert refused.value.names == [bad_name]
    assert tools.started() == []


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("package_type", PackageType.ALL)
def test_no_names_at_all_is_refused_the_same_way(tools, package_type, operation):
    # `dnf upgrade` or `winget upgrade` without names would upgrade everything.
    with pytest.raises(PackageNamesRefused) as refused:
        getattr(tools.scanner(package_type), operation)([])
    assert str(refused.value) == f"refused: no {package_type} package names given; nothing was run"
    assert refused.value.names == []
    assert tools.started() == []


def test_a_long_list_of_bad_names_stays_one_short_line(tools):
    bad = [f"-{index}" for index in range(40)]
    with pytest.raises(PackageNamesRefused) as refused:
        tools.scanner(PackageType.APT).install(bad)
    message = str(refused.value)
    assert message.startswith("refused: invalid apt package name(s): '-0', '-1', '-2', '-3', '-4' and 35 more")
    assert len(message) < 200 and refused.value.names == bad
    assert tools.started() == []


@pytest.mark.parametrize("package_type", PackageType.ALL)
def test_control_the_recorders_see_a_valid_name_run(tools, package_type):
    """Without this, "nothing started" above could be a recorder that never records."""
    try:
        tools.scanner(package_type).install([VALID_NAME[package_type]])
    except ScanError:
        pass  # a fake tool answers nothing useful; that it was started is the point
    assert tools.started() != []
