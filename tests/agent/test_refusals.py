"""One refusal contract for every installer (agent_client/scanners/base.py).

The rule is protocol.package_name_problem, the grammar the server applies too:
a scanner refuses exactly what it refuses (Docker alone adds a stricter rule,
proved stricter here). A dry-run or install asked for a name the rule refuses
raises PackageNamesRefused with one line of reason, and starts no process: the
tools on PATH here are recording fakes (and Docker's Engine a recording fake
socket), so "nothing ran" is observed, not assumed. A control test shows the
same recorders do see a valid name run. The real apt and dnf get the same
hostile names in test_apt.py and test_dnf.py.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest

from agent_client.protocol import PackageType, package_name_problem
from agent_client.scanners.apt import AptScanner
from agent_client.scanners.base import PackageNamesRefused, ScanError, Scanner, shown_name
from agent_client.scanners.dnf import DnfScanner
from agent_client.scanners.docker import DockerScanner
from agent_client.scanners.flatpak import FlatpakScanner
from agent_client.scanners.pacman import PacmanScanner
from agent_client.scanners.windows_update import WindowsUpdateScanner
from agent_client.scanners.winget import WingetScanner
from agent_client.scanners.zypper import ZypperScanner
from tests.agent.test_docker import FakeEngine

# Refused for every package manager: options, URLs, paths, groups, modules, globs, shell syntax, empty,
# whitespace, control characters, too long.
COMMON_BAD_NAMES = ["-o Dpkg::x", "-o APT::Get::Trivial-Only=false", "foo;rm -rf /", "pkg;touch /tmp/pwned",
                    "$(touch /tmp/pwned)", "`id`", "a|b", "a&&b", "", "two words", "--allow-unauthenticated", "-y",
                    "tab\tname", "new\nline", "x" * 256, "https://127.0.0.1:8080/x.rpm", "/tmp/x.rpm", "../x.deb",
                    "@core", "lib*", "p?g", "[ab]c", "name=1.0", "~i", "?installed"]
# Refused by one package manager's grammar only.
OWN_BAD_NAMES = {
    # Debian policy, and "-" never last: apt-get would read "openssh-server-" as "remove openssh-server".
    PackageType.APT: ["Foo", "foo;rm", "a", "openssh-server-", "libc6:i386-", "name/bookworm"],
    # No module stream, no package file ("x.rpm" is one in dnf's working directory), no epoch.
    PackageType.DNF: ["name:stream", "nodejs:18/default", "x.rpm", "redflag-test-pkg-1.1-1.noarch.rpm",
                      "glibc-2:2.34-1.x86_64", "name/bookworm"],
    PackageType.DOCKER: ["Nginx:1", "nginx;latest", "/nginx", "MyHost/app"],  # Docker's reading of a reference
    PackageType.WINDOWS_UPDATE: ["KB4601345", "KB4601345;Remove-Item"],  # only a GUID goes into the script
    PackageType.WINGET: ["DolbyLaboratories.DolbyAccessOEM_rz1teb\u2026", "Microsoft.Edg..."],  # truncated Ids
    # Not a kind/ prefix, a remote: prefix, an empty arch, an arch without branch, a two-part id.
    PackageType.FLATPAK: ["app/org.mozilla.firefox/x86_64/stable", "flathub:org.mozilla.firefox",
                          "org.mozilla.firefox//stable", "org.gnome.Platform/x86_64", "org.mozilla", "1org.x.y"],
    # No selector ("pattern:", "patch:"), version relation, package file or repository path.
    PackageType.ZYPPER: ["pattern:lamp_server", "patch:SUSE-2024-1", "x.rpm", "redflag-test-pkg-1.1-1.noarch.rpm",
                         "name>=1.0", "repo-oss/curl"],
    # No repository/ prefix, version relation, architecture suffix, capital letter or leading dot.
    PackageType.PACMAN: ["core/openssl", "openssl>=3.0", "openssl=3.0-1", "openssl:x86_64", "OpenSSL", ".hidden"],
}
# Accepted for their package manager (shapes the grammar must not refuse).
GOOD_NAMES = {
    PackageType.APT: ["openssl", "g++", "libstdc++6", "libgtk2.0-0", "libc6:i386", "linux-image-6.1.0-18-amd64"],
    PackageType.DNF: ["openssl", "glibc.x86_64", "kernel-core", "python3.11", "gcc-c++", "rpm", "foo-rpm"],
    PackageType.DOCKER: ["nginx", "nginx:1.25", "library/nginx:latest", "ghcr.io/org/app:v1.2",
                         "127.0.0.1:5000/app:1.0", "nginx@sha256:" + "a" * 64],
    PackageType.WINDOWS_UPDATE: ["bcd58b64-3cef-42da-b169-a66060ae195e"],
    PackageType.WINGET: ["Microsoft.Edge", "Mozilla.Firefox", "Microsoft.DotNet.SDK.3_1", "9NBLGGH4NNS1"],
    PackageType.FLATPAK: ["org.mozilla.firefox", "org.gnome.Platform/x86_64/46", "com.valvesoftware.Steam",
                          "org.freedesktop.Platform.GL32.default/i386/23.08-extra"],
    PackageType.ZYPPER: ["openssl", "glibc.x86_64", "libopenssl1_1", "kernel-default", "gcc-c++", "python311"],
    PackageType.PACMAN: ["openssl", "gcc-libs", "lib32-glibc", "libc++", "python-pip", "qt6-base", "nss_ldap"],
}
VALID_NAME = {
    PackageType.APT: "openssl",
    PackageType.DNF: "openssl",
    PackageType.DOCKER: "nginx:1.25",
    PackageType.WINDOWS_UPDATE: "bcd58b64-3cef-42da-b169-a66060ae195e",
    PackageType.WINGET: "Microsoft.Edge",
    PackageType.FLATPAK: "org.mozilla.firefox",
    PackageType.ZYPPER: "openssl",
    PackageType.PACMAN: "openssl",
}
FAKE_TOOLS = ("apt-get", "apt-cache", "apt-mark", "dpkg-query", "dnf", "dnf-3", "dnf5", "powershell", "winget",
              "flatpak", "zypper", "pacman")
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
            PackageType.FLATPAK: lambda: FlatpakScanner(),
            PackageType.ZYPPER: lambda: ZypperScanner(),
            PackageType.PACMAN: lambda: PacmanScanner(dbpath=str(self.root / "pacman-db")),
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


def refusal(scanner: Scanner, name: str) -> str:
    """The one reason, word for word, whatever the package manager."""
    problem = scanner.name_problem(name)
    return f"refused: invalid {scanner.package_type} package name(s): {shown_name(name)} ({problem}); nothing was run"


def corpus(package_type: str) -> list[str]:
    """Every name above plus random strings over the characters that matter, the same on every run."""
    rng = random.Random(20261201)
    alphabet = "aZ09.-_+:@/*?[]~=;$`&|<> \t\n\u2026"
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(2000)]
    named = [name for names in (COMMON_BAD_NAMES, *OWN_BAD_NAMES.values(), *GOOD_NAMES.values()) for name in names]
    return named + fuzz + ["ab" + text for text in fuzz]


# "@core" is dnf's group syntax; pacman has none, and makepkg allows "@" first in an Arch name, so for
# pacman it is a name (test_pacman.py shows the installer refusing it as not installed).
LEGAL_NAMES = {PackageType.PACMAN: ["@core"]}
BAD_CASES = [(package_type, name) for package_type in PackageType.ALL
             for name in COMMON_BAD_NAMES + OWN_BAD_NAMES[package_type]
             if name not in LEGAL_NAMES.get(package_type, [])]


@pytest.mark.parametrize("package_type", PackageType.ALL)
def test_the_scanners_rule_is_the_protocol_grammar(tools, package_type):
    """What a scanner refuses is what the server refuses; only Docker's extra rule refuses more."""
    scanner = tools.scanner(package_type)
    for name in corpus(package_type):
        grammar, scanners = package_name_problem(package_type, name), scanner.name_problem(name)
        if grammar is not None:
            assert scanners == grammar, name
        elif package_type != PackageType.DOCKER:
            assert scanners is None, name
    for name in GOOD_NAMES[package_type]:
        assert scanner.name_problem(name) is None, name
    assert tools.started() == []


def test_dockers_extra_rule_is_stricter_and_says_why(tools):
    scanner = tools.scanner(PackageType.DOCKER)
    assert package_name_problem(PackageType.DOCKER, "MyHost/app") is None
    assert scanner.name_problem("MyHost/app") == "not an image reference: 'MyHost/app'"


def test_truncated_winget_ids_are_refused_by_the_grammar_itself():
    # winget cuts a long Id to the column and ends it with an ellipsis: no extra winget rule is needed.
    for truncated in OWN_BAD_NAMES[PackageType.WINGET]:
        assert package_name_problem(PackageType.WINGET, truncated) is not None


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("package_type,bad_name", BAD_CASES)
def test_a_bad_name_is_refused_with_one_reason_and_nothing_starts(tools, package_type, bad_name, operation):
    scanner = tools.scanner(package_type)
    with pytest.raises(PackageNamesRefused) as refused:
        # A valid name beside it does not let the command through: the whole command is refused.
        getattr(scanner, operation)([VALID_NAME[package_type], bad_name])
    assert str(refused.value) == refusal(scanner, bad_name)
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
    assert message.startswith("refused: invalid apt package name(s): '-0', '-1', '-2', '-3', '-4' and 35 more (")
    assert len(message) < 300 and refused.value.names == bad
    assert tools.started() == []


@pytest.mark.parametrize("package_type", PackageType.ALL)
def test_control_the_recorders_see_a_valid_name_run(tools, package_type):
    """Without this, "nothing started" above could be a recorder that never records."""
    try:
        tools.scanner(package_type).install([VALID_NAME[package_type]])
    except ScanError:
        pass  # a fake tool answers nothing useful; that it was started is the point
    assert tools.started() != []
