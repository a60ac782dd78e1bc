"""AptScanner against the real apt and dpkg of this machine.

The system tests build small .deb packages in tmp_path, serve them from a
local ``file:`` repository with two suites (``bookworm`` and
``bookworm-security``) and point apt at ONLY that repository through the
scanner's ``-o`` options (private sources list, lists and cache directories),
so the machine's own sources and lists are never read or written. They do
install and purge real packages (all named ``redflag-test-*``) and use
``apt-mark hold``; a fixture finalizer purges and unholds them even when a
test fails.

Debian packages needed: apt and dpkg (always present) and dpkg-dev
(dpkg-scanpackages). The Release files are written here, so apt-utils
(apt-ftparchive) is not needed. Root is needed.

The parser tests at the bottom read outputs captured from this repository on
Debian 12 (apt 2.6.1); see tests/agent/apt_fixtures/README.md.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_client.executor import CommandExecutor, ExecutedLedger
from agent_client.outbox import Outbox
from agent_client.scanners import apt as apt_module
from agent_client.scanners.apt import (
    AptScanner,
    normalize_apt_options,
    parse_cache_sizes,
    parse_origins,
    parse_policy,
    parse_simulation,
    parse_unpacked,
    parse_upgradable_list,
)
from agent_client.scanners.base import CommandOutput, ScanError, UpdateRecord
from tests.agent.conftest import require_root, require_tools
from tests.agent.hostile import FileServer, ToolShims, hostile_names, refuse_every_name
from tests.agent.test_executor import AGENT_ID, Signer

FIXTURES = Path(__file__).parent / "apt_fixtures"
LOCK_TIMEOUT = 600

PKG = "redflag-test-pkg"
DEP = "redflag-test-dep"
SEC = "redflag-test-sec"
HELD = "redflag-test-held"
PHASED = "redflag-test-phased"
ALL_TEST_PACKAGES = [PKG, DEP, SEC, HELD, PHASED]

# (name, version, depends, suite the new version is served from)
OLD_VERSIONS = [(PKG, "1.0", ""), (SEC, "1.0", ""), (HELD, "1.0", "")]
NEW_VERSIONS = [
    (PKG, "1.1", DEP, "bookworm"),
    (DEP, "1.0", "", "bookworm"),
    (SEC, "1.1", "", "bookworm-security"),
    (HELD, "1.1", "", "bookworm-security"),
]
# Source packages named differently from the binary, as Debian's advisories name them: SEC plainly,
# HELD the way a binNMU names it (source name and the source's version).
SOURCE_FIELDS = {SEC: "redflag-test-security-src", HELD: "redflag-test-heldsrc (1.1)"}
# Label is the same for both suites, so only the suite name can mark the
# security one: that is the case the scanner must get right from a real
# repository (the "Debian-Security" label case is covered by parser tests).
SUITES = {"bookworm": "RedFlagTest", "bookworm-security": "RedFlagTest"}


# --- building the repository ------------------------------------------------


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(argv, capture_output=True, text=True, env=env, **kwargs)


def check(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = run(argv, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def build_deb(out_dir: Path, work: Path, name: str, version: str, depends: str = "", source: str = "") -> Path:
    root = work / f"{name}_{version}"
    (root / "DEBIAN").mkdir(parents=True)
    doc = root / "usr" / "share" / "doc" / name
    doc.mkdir(parents=True)
    (doc / "VERSION").write_text(f"{name} {version}\n")
    # A conffile, so that "dpkg --remove" leaves the package known to dpkg (state rc) until purged.
    (root / "etc").mkdir()
    (root / "etc" / f"{name}.conf").write_text(f"# {name} {version}\n")
    (root / "DEBIAN" / "conffiles").write_text(f"/etc/{name}.conf\n")
    control = [
        f"Package: {name}",
        *([f"Source: {source}"] if source else []),
        f"Version: {version}",
        "Architecture: all",
        "Maintainer: RedFlag Tests <tests@example.invalid>",
        "Section: misc",
        "Priority: optional",
    ]
    if depends:
        control.append(f"Depends: {depends}")
    control += [f"Description: RedFlag APT scanner test package {version}", " Built by tests/agent/test_apt.py."]
    (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    # dpkg-deb refuses a control directory that is not 0755-ish, and the package's files get
    # the modes they have here: set them, whatever umask this process runs with (the server's
    # settings, which pytest-django may import, set 077).
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{name}_{version}_all.deb"
    check(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)])
    return deb


def write_release(dist_dir: Path, suite: str, label: str, arch: str) -> None:
    """A Release file like the archive's, with the checksums apt verifies."""
    index_files = sorted(p for p in dist_dir.rglob("Packages*") if p.is_file())
    lines = [
        f"Origin: {label}",
        f"Label: {label}",
        f"Suite: {suite}",
        f"Codename: {suite}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Architectures: {arch} all",
        "Components: main",
        "SHA256:",
    ]
    for path in index_files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f" {digest} {path.stat().st_size} {path.relative_to(dist_dir)}")
    (dist_dir / "Release").write_text("\n".join(lines) + "\n")


class AptRepo:
    """A local two-suite repository plus the apt options that isolate apt."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "repo"
        self.old_debs: dict[str, Path] = {}
        self.new_debs: dict[str, Path] = {}
        self.arch = check(["dpkg", "--print-architecture"]).stdout.strip()
        etc = base / "etc"
        (etc / "sources.list.d").mkdir(parents=True)
        (etc / "preferences.d").mkdir(parents=True)
        # apt creates files in these directories but not the directories.
        (base / "lists" / "partial").mkdir(parents=True)
        (base / "cache" / "archives" / "partial").mkdir(parents=True)
        self.sources_list = etc / "sources.list"
        self.options = [
            f"-o Dir::Etc::sourcelist={self.sources_list}",
            f"-o Dir::Etc::sourceparts={etc / 'sources.list.d'}",
            f"-o Dir::Etc::preferences={etc / 'preferences'}",
            f"-o Dir::Etc::preferencesparts={etc / 'preferences.d'}",
            f"-o Dir::State::Lists={base / 'lists'}",
            f"-o Dir::Cache={base / 'cache'}",
        ]

    def build(self) -> None:
        work = self.base / "build"
        for name, version, depends in OLD_VERSIONS:
            self.old_debs[name] = build_deb(self.base / "old", work, name, version, depends,
                                            SOURCE_FIELDS.get(name, ""))
        for name, version, depends, suite in NEW_VERSIONS:
            self.new_debs[name] = build_deb(self.root / "pool" / suite, work, name, version, depends,
                                            SOURCE_FIELDS.get(name, ""))
        for suite, label in SUITES.items():
            binary = self.root / "dists" / suite / "main" / f"binary-{self.arch}"
            binary.mkdir(parents=True)
            scanned = check(
                ["dpkg-scanpackages", "--multiversion", f"pool/{suite}", "/dev/null"], cwd=str(self.root)
            )
            (binary / "Packages").write_text(scanned.stdout)
            write_release(self.root / "dists" / suite, suite, label, self.arch)
        self.sources_list.write_text(
            "".join(f"deb [trusted=yes] file:{self.root} {suite} main\n" for suite in SUITES)
        )

    def scanner(self, **kwargs) -> AptScanner:
        kwargs.setdefault("state_dir", str(self.base / "state"))
        kwargs.setdefault("lock_timeout_seconds", LOCK_TIMEOUT)
        return AptScanner(apt_options=self.options, **kwargs)

    def apt_argv(self) -> list[str]:
        return normalize_apt_options(self.options) + ["-o", f"DPkg::Lock::Timeout={LOCK_TIMEOUT}"]


# --- machine state helpers ----------------------------------------------------


def installed_version(name: str) -> str:
    """The installed version, or "" when the package is not installed."""
    result = run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", name])
    if result.returncode != 0:
        return ""
    status, _, version = result.stdout.partition(" ")
    return version.strip() if status == "installed" else ""


def apt_mark(action: str, names: list[str]) -> None:
    """apt-mark needs the dpkg lock another engineer's apt may hold: retry."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        result = run(["apt-mark", action, *names])
        if result.returncode == 0 or time.monotonic() > deadline or "lock" not in result.stderr.lower():
            break
        time.sleep(2)
    if result.returncode != 0:
        raise AssertionError(f"apt-mark {action} {names} failed:\n{result.stdout}\n{result.stderr}")


def remove_test_packages(repo_argv: list[str]) -> None:
    present = [name for name in ALL_TEST_PACKAGES if run(["dpkg-query", "-W", name]).returncode == 0]
    held = set(run(["apt-mark", "showhold"]).stdout.split())
    to_unhold = [name for name in ALL_TEST_PACKAGES if name in held]
    if to_unhold:
        apt_mark("unhold", to_unhold)
    if present:
        check(["apt-get", "-q", *repo_argv, "purge", "-y", "--allow-change-held-packages", *present])
    left = [name for name in ALL_TEST_PACKAGES if run(["dpkg-query", "-W", name]).returncode == 0]
    assert not left, f"test packages still known to dpkg after purge: {left}"


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> AptRepo:
    require_tools("apt-get", "apt-cache", "apt-mark", "dpkg", "dpkg-deb", "dpkg-query", "dpkg-scanpackages")
    require_root()
    built = AptRepo(tmp_path_factory.mktemp("apt"))
    built.build()
    return built


@pytest.fixture
def machine(repo: AptRepo, request: pytest.FixtureRequest) -> Iterator[AptRepo]:
    """Old versions installed, HELD on hold; everything removed afterwards."""
    require_tools("apt-get", "apt-cache", "apt-mark", "dpkg", "dpkg-deb", "dpkg-query", "dpkg-scanpackages")
    require_root()
    argv = repo.apt_argv()
    # The test packages live in the machine's one dpkg database: two test runs at
    # once (a developer's and CI's) must take turns. Released after the clean-up.
    lock = open(os.path.join(tempfile.gettempdir(), "redflag-apt-tests.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    request.addfinalizer(lock.close)
    # Registered before anything is installed, so a failure half-way through
    # setup still purges what got installed.
    request.addfinalizer(lambda: remove_test_packages(argv))
    remove_test_packages(argv)  # leftovers of an interrupted earlier run
    check(["apt-get", "-q", *argv, "install", "-y", *[str(repo.old_debs[name]) for name, _, _ in OLD_VERSIONS]])
    apt_mark("hold", [HELD])
    # Each test starts with lists apt considers stale, so its first scan or
    # operation refreshes them itself.
    Path(repo.scanner().refresh_stamp_path).unlink(missing_ok=True)
    yield repo


# --- system tests ---------------------------------------------------------------


def test_is_available() -> None:
    require_tools("apt-get", "dpkg-query")
    assert AptScanner().is_available()


def test_scan_finds_exactly_the_test_updates(machine: AptRepo) -> None:
    require_tools("apt-get", "dpkg-scanpackages")
    require_root()
    records = {record.name: record for record in machine.scanner().scan()}

    # Only the private repository is configured, so nothing else on the
    # machine can have a candidate newer than what is installed.
    assert set(records) == {PKG, SEC, HELD}

    pkg, sec, held = records[PKG], records[SEC], records[HELD]
    assert (pkg.current_version, pkg.available_version) == ("1.0", "1.1")
    assert (sec.current_version, sec.available_version) == ("1.0", "1.1")
    assert (held.current_version, held.available_version) == ("1.0", "1.1")
    for record in records.values():
        assert record.package_type == "apt"

    assert sec.is_security and sec.severity == "important"
    assert sec.repository == "RedFlagTest/bookworm-security"
    assert not pkg.is_security and pkg.severity == "unknown"
    assert pkg.repository == "RedFlagTest/bookworm"

    assert held.metadata["held_back"] is True
    assert held.metadata["held"] is True
    assert held.is_security and held.severity == "important"
    assert held.repository == "bookworm-security/main"
    assert "held_back" not in pkg.metadata and "held" not in pkg.metadata

    assert pkg.size_bytes == machine.new_debs[PKG].stat().st_size
    assert sec.size_bytes == machine.new_debs[SEC].stat().st_size
    assert held.size_bytes == machine.new_debs[HELD].stat().st_size

    # The source package, from the same apt-cache show as the sizes: an upgrade and a held-back one.
    assert sec.metadata["source"] == "redflag-test-security-src"
    assert held.metadata["source"] == "redflag-test-heldsrc"
    assert "source" not in pkg.metadata  # no Source field: the source has the binary's name
    # What the real dpkg recorded for the installed packages agrees.
    installed = check(["dpkg-query", "-W", "-f=${binary:Package}\t${source:Package}\n", "--", PKG, SEC, HELD]).stdout
    assert sorted(installed.splitlines()) == sorted(
        [f"{PKG}\t{PKG}", f"{SEC}\tredflag-test-security-src", f"{HELD}\tredflag-test-heldsrc"])


def test_scan_refreshes_lists_only_when_stale(machine: AptRepo, tmp_path: Path) -> None:
    require_tools("apt-get")
    require_root()
    scanner = machine.scanner(refresh_interval_seconds=3600, state_dir=str(tmp_path / "state"))
    assert scanner.refresh_lists() is True  # no stamp yet
    stamp = Path(scanner.refresh_stamp_path)
    assert stamp.exists()
    assert scanner.refresh_lists() is False
    scanner.scan()  # does not refresh, and still sees the updates from the lists
    assert scanner.refresh_lists() is False

    old = time.time() - 7200
    os.utime(stamp, (old, old))
    assert scanner.refresh_lists() is True


def test_scan_reports_apt_update_failure(machine: AptRepo, tmp_path: Path) -> None:
    require_tools("apt-get")
    require_root()
    broken_sources = tmp_path / "broken.list"
    broken_sources.write_text(f"deb [trusted=yes] file:{tmp_path / 'missing'} bookworm main\n")
    options = [opt for opt in machine.options if "sourcelist=" not in opt]
    options.append(f"-o Dir::Etc::sourcelist={broken_sources}")
    scanner = AptScanner(apt_options=options, state_dir=str(tmp_path / "state"), lock_timeout_seconds=LOCK_TIMEOUT)
    with pytest.raises(ScanError, match="apt-get update failed"):
        scanner.scan()
    assert not Path(scanner.refresh_stamp_path).exists()

    # An install that cannot refresh stale lists fails before touching dpkg.
    result = scanner.install([PKG])
    assert not result.succeeded
    assert result.exit_code == 100
    assert "apt-get update failed; no package was changed" in result.output_tail
    assert installed_version(PKG) == "1.0"


def test_dry_run_reports_changes_and_dependency(machine: AptRepo) -> None:
    require_tools("apt-get")
    require_root()
    scanner = machine.scanner()
    result = scanner.dry_run([PKG, SEC])

    assert result.succeeded, result.output_tail
    assert result.exit_code == 0
    assert result.dependencies == [DEP]
    changes = {entry["name"]: entry for entry in result.packages}
    assert set(changes) == {PKG, SEC, DEP}
    assert (changes[PKG]["current_version"], changes[PKG]["new_version"]) == ("1.0", "1.1")
    assert (changes[SEC]["current_version"], changes[SEC]["new_version"]) == ("1.0", "1.1")
    assert changes[DEP] == {
        "name": DEP,
        "current_version": "",
        "new_version": "1.0",
        "action": "install",
        "repository": "RedFlagTest/bookworm",
    }
    assert "Inst redflag-test-pkg [1.0] (1.1" in result.output_tail
    assert result.duration_seconds > 0
    # A simulation changes nothing.
    assert installed_version(PKG) == "1.0" and installed_version(DEP) == ""


def test_dry_run_of_held_package_fails_like_the_install_would(machine: AptRepo) -> None:
    require_tools("apt-get")
    require_root()
    scanner = machine.scanner()
    result = scanner.dry_run([HELD])
    assert not result.succeeded
    assert "held packages would be changed" in result.output_tail
    assert HELD in result.output_tail

    install = scanner.install([HELD])
    assert not install.succeeded
    assert install.exit_code != 0
    assert "Held packages were changed" in install.output_tail
    assert installed_version(HELD) == "1.0"


def test_dry_run_of_unknown_package_fails_without_starting_apt(machine: AptRepo, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    require_tools("apt-get")
    require_root()
    shims = ToolShims(tmp_path / "shims", ["apt-get", "dpkg-query"], monkeypatch)
    scanner = machine.scanner()
    result = scanner.dry_run(["redflag-test-does-not-exist"])
    assert not result.succeeded
    assert result.exit_code == 1  # dpkg-query's: it knows no such package
    assert "dpkg-query: no packages found matching redflag-test-does-not-exist" in result.output_tail
    assert ("redflag: not installed, so not upgraded: redflag-test-does-not-exist; apt-get was not started"
            in result.output_tail)
    assert shims.started_by("apt-get") == []


def test_dry_run_of_package_not_installed_fails(machine: AptRepo) -> None:
    require_tools("apt-get")
    require_root()
    scanner = machine.scanner()
    # DEP exists in the repository but dpkg has never seen it: refused before apt-get.
    result = scanner.dry_run([DEP])
    assert not result.succeeded
    assert "not installed, so not upgraded: redflag-test-dep; apt-get was not started" in result.output_tail

    # Removed but not purged, dpkg still knows it: apt-get runs, and --only-upgrade skips it with exit
    # code 0, which must not be reported as a success either.
    check(["apt-get", "-q", *machine.apt_argv(), "install", "-y", str(machine.new_debs[DEP])])
    check(["dpkg", "--remove", DEP])
    result = scanner.dry_run([DEP])
    assert not result.succeeded
    assert result.exit_code == 0
    assert "redflag: not installed, so not upgraded: redflag-test-dep\n" in result.output_tail


def test_install_upgrades_for_real(machine: AptRepo) -> None:
    require_tools("apt-get", "dpkg-query")
    require_root()
    scanner = machine.scanner()
    result = scanner.install([PKG, SEC])

    assert result.succeeded, result.output_tail
    assert result.exit_code == 0
    assert installed_version(PKG) == "1.1"
    assert installed_version(SEC) == "1.1"
    assert installed_version(DEP) == "1.0"
    assert installed_version(HELD) == "1.0"  # not named, and held anyway
    assert result.dependencies == [DEP]
    changes = {entry["name"]: entry for entry in result.packages}
    assert changes[PKG] == {"name": PKG, "current_version": "1.0", "new_version": "1.1", "action": "upgrade"}
    assert changes[DEP]["action"] == "install"

    # The machine's state now matches: the next scan only has the held one.
    remaining = {record.name for record in scanner.scan()}
    assert remaining == {HELD}


def test_install_of_nonexistent_package_fails(machine: AptRepo) -> None:
    require_tools("apt-get")
    require_root()
    scanner = machine.scanner()
    result = scanner.install(["redflag-test-does-not-exist"])
    assert not result.succeeded
    assert result.exit_code == 1
    assert "not installed, so not upgraded: redflag-test-does-not-exist" in result.output_tail
    assert result.packages == []
    assert installed_version(PKG) == "1.0"


def test_real_apt_never_sees_a_hostile_name(machine: AptRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the executor (a signed command, as the server sends it) and the scanner itself."""
    require_tools("apt-get", "dpkg-query")
    require_root()
    shims = ToolShims(tmp_path / "shims", ["apt-get", "apt-cache", "apt-mark", "dpkg", "dpkg-query"], monkeypatch)
    marker = tmp_path / "pwned"
    signer = Signer()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    scanner = machine.scanner()
    executor = CommandExecutor(agent_id=AGENT_ID, signing_keys=[signer.public], outbox=outbox,
                               ledger=ExecutedLedger(tmp_path / "executed.sqlite3"), scanners={"apt": scanner},
                               system_facts=dict, record=lambda event: None)
    new_pkg = machine.new_debs[PKG]  # a real .deb that would upgrade PKG from outside the repository
    with FileServer(new_pkg.parent) as files:
        names = hostile_names(marker=marker, url=f"{files.url}/{new_pkg.name}", package_file=new_pkg)
        # apt-get reads "name-" as "remove name", "name=1.1" and "name/suite" as a version or release pick.
        names += [f"{PKG}-", f"{PKG}=1.1", f"{PKG}/bookworm", f"./{new_pkg.name}"]
        # "name:stream" is a Debian name with an architecture qualifier: the grammar admits it (below).
        names.remove("name:stream")
        refuse_every_name(names=names, valid=SEC, package_type="apt", signer=signer, executor=executor,
                          scanner=scanner, outbox=outbox)
        assert shims.started() == []  # no process at all
        assert files.requests == []
    assert not marker.exists()
    assert [installed_version(name) for name in (PKG, SEC, DEP, HELD)] == ["1.0", "1.0", "", "1.0"]

    # Grammar-valid names no installed package has: "redflag-test-.+", which apt-get would read as a
    # regular expression matching PKG, SEC and HELD, and "name:stream". dpkg-query, which matches
    # exactly, knows no such package, so apt-get is not started.
    started_before = len(shims.started())  # installed_version's own dpkg-query calls
    for name in ("redflag-test-.+", "name:stream"):
        pattern = signer.command("install_updates", {"package_type": "apt", "packages": [name]})
        assert executor.handle(pattern) == "failed"
        assert "apt-get was not started" in outbox.pending()[-1].payload["output"]
    assert [line.split(" ", 1)[0] for line in shims.started()[started_before:]] == ["dpkg-query", "dpkg-query"]
    assert [installed_version(name) for name in (PKG, SEC, HELD)] == ["1.0", "1.0", "1.0"]

    # The same route with a valid name reaches the real apt-get, after "--".
    install = signer.command("install_updates", {"package_type": "apt", "packages": [SEC]})
    assert executor.handle(install) == "succeeded", outbox.pending()[-1].payload["output"]
    assert any(line.startswith("apt-get ") and line.endswith(f" install -y --only-upgrade -o "
                                                               f"Dpkg::Options::=--force-confdef -o "
                                                               f"Dpkg::Options::=--force-confold -- {SEC}")
               for line in shims.started_by("apt-get"))
    assert installed_version(SEC) == "1.1" and installed_version(PKG) == "1.0"


def test_native_listing_agrees_with_the_scan(machine: AptRepo) -> None:
    """``apt list --upgradable`` (the tool's own listing) names what the scan reports, kept-back included."""
    require_tools("apt", "apt-get", "dpkg")
    require_root()
    scanner = machine.scanner()
    records = scanner.scan()
    assert scanner.native_listing() == {record.name: record.available_version for record in records}
    assert scanner.native_listing() == {PKG: "1.1", SEC: "1.1", HELD: "1.1"}


# --- phased updates -----------------------------------------------------------
# apt 2.6.1 decides phasing (apt-pkg/policy.cc) per machine: only with a machine id (APT::Machine-ID,
# else the file Dir::Etc::machine-id) and only when Dir::Bin::ischroot (/usr/bin/ischroot) exits
# non-zero ("not a chroot"); then a draw seeded with source name, version and machine id decides.
# Checked here: without a machine id, or with an ischroot that says "chroot", apt installs a 0%
# update. The test pins both, so the deferral does not depend on the machine or container it runs in.
PHASING_MACHINE_ID = "00000000000000000000000000000000"


@pytest.fixture(scope="module")
def phased_repo(tmp_path_factory: pytest.TempPathFactory) -> AptRepo:
    """One suite, bookworm-security, serving PHASED 1.1 with Phased-Update-Percentage: 0."""
    require_tools("apt-get", "apt-cache", "dpkg", "dpkg-deb", "dpkg-scanpackages", "false")
    require_root()
    repo = AptRepo(tmp_path_factory.mktemp("apt-phased"))
    work = repo.base / "build"
    repo.old_debs[PHASED] = build_deb(repo.base / "old", work, PHASED, "1.0")
    repo.new_debs[PHASED] = build_deb(repo.root / "pool" / "bookworm-security", work, PHASED, "1.1")
    binary = repo.root / "dists" / "bookworm-security" / "main" / f"binary-{repo.arch}"
    binary.mkdir(parents=True)
    scanned = check(["dpkg-scanpackages", "pool/bookworm-security", "/dev/null"], cwd=str(repo.root)).stdout
    (binary / "Packages").write_text(scanned.replace("Version: 1.1\n", "Version: 1.1\nPhased-Update-Percentage: 0\n"))
    write_release(repo.root / "dists" / "bookworm-security", "bookworm-security", "RedFlagTest", repo.arch)
    repo.sources_list.write_text(f"deb [trusted=yes] file:{repo.root} bookworm-security main\n")
    return repo


@pytest.fixture
def phased_machine(phased_repo: AptRepo, request: pytest.FixtureRequest) -> Iterator[AptRepo]:
    argv = phased_repo.apt_argv()
    lock = open(os.path.join(tempfile.gettempdir(), "redflag-apt-tests.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    request.addfinalizer(lock.close)
    request.addfinalizer(lambda: remove_test_packages(argv))
    remove_test_packages(argv)
    check(["apt-get", "-q", *argv, "install", "-y", str(phased_repo.old_debs[PHASED])])
    yield phased_repo


def phasing_options(repo: AptRepo, *extra: str) -> list[str]:
    return [*repo.options, f"-o APT::Machine-ID={PHASING_MACHINE_ID}",
            f"-o Dir::Bin::ischroot={shutil.which('false')}", *extra]


def test_phased_security_update_deferred_by_apt_is_security_and_phased(phased_machine: AptRepo, tmp_path: Path) -> None:
    require_tools("apt-get", "apt-cache")
    require_root()
    options = phasing_options(phased_machine)
    scanner = AptScanner(apt_options=options, state_dir=str(tmp_path / "state"), lock_timeout_seconds=LOCK_TIMEOUT)
    (record,) = scanner.scan()

    # What the real apt does with these settings: keeps it back, installs nothing.
    upgrade = check(["apt-get", "-s", *normalize_apt_options(options), "upgrade"]).stdout
    assert f"The following packages have been kept back:\n  {PHASED}\n" in upgrade
    assert "Inst " not in upgrade
    policy = check(["apt-cache", *normalize_apt_options(options), "policy", PHASED]).stdout
    assert "1.1 500 (phased 0%)" in policy

    assert (record.name, record.current_version, record.available_version) == (PHASED, "1.0", "1.1")
    assert record.is_security and record.severity == "important"
    assert record.repository == "bookworm-security/main"
    assert record.metadata["held_back"] is True
    assert record.metadata["phased"] is True and record.metadata["phased_percentage"] == 0
    assert "held" not in record.metadata
    assert scanner.native_listing() == {PHASED: "1.1"}


@pytest.mark.parametrize("extra", ["-o APT::Get::Always-Include-Phased-Updates=true",
                                   "-o Dir::Bin::ischroot=/bin/true"])
def test_phased_update_apt_would_install_is_an_ordinary_security_update(phased_machine: AptRepo, tmp_path: Path,
                                                                          extra: str) -> None:
    """Where apt does not defer it (told to include phased updates, or a chroot), it is no held-back row."""
    require_tools("apt-get", "true")
    require_root()
    options = phasing_options(phased_machine, extra.replace("/bin/true", shutil.which("true") or "/bin/true"))
    scanner = AptScanner(apt_options=options, state_dir=str(tmp_path / "state"), lock_timeout_seconds=LOCK_TIMEOUT)
    (record,) = scanner.scan()

    upgrade = check(["apt-get", "-s", *normalize_apt_options(options), "upgrade"]).stdout
    assert f"Inst {PHASED} [1.0] (1.1 RedFlagTest:bookworm-security [all])" in upgrade

    assert record.is_security and record.repository == "RedFlagTest/bookworm-security"
    assert "held_back" not in record.metadata and "phased" not in record.metadata


# --- parser tests on captured real output -------------------------------------


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_parse_captured_dist_upgrade_simulation() -> None:
    parsed = parse_simulation(fixture_text("dist_upgrade_simulation.txt"))
    inst = {entry["name"]: entry for entry in parsed["inst"]}
    assert set(inst) == {PKG, DEP, SEC}
    assert inst[PKG]["current"] == "1.0" and inst[PKG]["candidate"] == "1.1"
    assert inst[PKG]["origins"] == [("RedFlagTest", "bookworm")]
    assert inst[DEP]["current"] == ""  # a new package, not an update
    assert inst[SEC]["origins"] == [("RedFlagTest", "bookworm-security")]
    assert inst[SEC]["arch"] == "all"
    assert parsed["kept_back"] == {HELD: ("1.0", "1.1")}
    assert parsed["phased"] == {}
    assert parsed["held_changes"] == []


def test_parse_captured_held_dry_run() -> None:
    parsed = parse_simulation(fixture_text("dry_run_held.txt"))
    assert parsed["held_changes"] == [HELD]
    assert [entry["name"] for entry in parsed["inst"]] == [HELD]


def test_parse_captured_policy() -> None:
    policy = parse_policy(fixture_text("policy_held.txt"))
    assert policy[HELD]["installed"] == "1.0"
    assert policy[HELD]["candidate"] == "1.1"
    assert len(policy[HELD]["sources"]) == 1
    uri, dist = policy[HELD]["sources"][0]
    assert uri.startswith("file:") and dist == "bookworm-security/main"


def test_parse_captured_phased_policy() -> None:
    """apt 2.6.1 marks a phased candidate "1.1 500 (phased 0%)"; its sources are still the candidate's."""
    policy = parse_policy(fixture_text("policy_phased.txt"))
    assert policy[PHASED]["candidate"] == "1.1"
    assert policy[PHASED]["phased_percentage"] == 0
    (source,) = policy[PHASED]["sources"]
    assert source[1] == "bookworm-security/main"
    assert parse_policy(fixture_text("policy_held.txt"))[HELD]["phased_percentage"] is None


def test_parse_upgradable_list_names_foreign_architectures_as_apt_get_does() -> None:
    output = (
        "Listing...\n"
        "apt/oldstable-security 2.6.2 amd64 [upgradable from: 2.6.1]\n"
        "apt-transport-https/oldstable,oldstable-security 2.6.2 all [upgradable from: 2.6.1]\n"
        "libc6/oldstable 2.36-9+deb12u4 i386 [upgradable from: 2.36-9+deb12u3]\n"
    )
    assert parse_upgradable_list(output, "amd64") == {
        "apt": "2.6.2", "apt-transport-https": "2.6.2", "libc6:i386": "2.36-9+deb12u4"}


def test_parse_captured_cache_show() -> None:
    sizes = parse_cache_sizes(fixture_text("cache_show.txt"))
    assert set(sizes) == {(PKG, "1.1", "all"), (SEC, "1.1", "all"), (HELD, "1.1", "all")}
    assert all(size > 0 for size in sizes.values())


def test_source_names_are_keyed_as_the_scan_names_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """apt-cache show's records give each update its source. libssl3 and bash: fields as apt 2.6.1 printed
    them on this Debian 12 machine (bash is a binNMU: "Source: bash (5.2.15-2)"). libc6 for i386 and amd64:
    built the same way, the amd64 one with a marker source, to show that "libc6:i386" in the scan is found
    by its "Package: libc6" and "Architecture: i386" record, not by the native one."""
    show = (
        "Package: libssl3\nSource: openssl\nVersion: 3.0.22-1~deb12u2\nArchitecture: amd64\nMulti-Arch: same\n"
        "Size: 2039888\nDescription: Secure Sockets Layer toolkit - shared libraries\n This package is part of\n\n"
        "Package: bash\nSource: bash (5.2.15-2)\nVersion: 5.2.15-2+b13\nArchitecture: amd64\nMulti-Arch: foreign\n"
        "Size: 1490652\n\n"
        "Package: libc6\nSource: glibc\nVersion: 2.36-9+deb12u4\nArchitecture: i386\nSize: 2621000\n\n"
        "Package: libc6\nSource: marker-native\nVersion: 2.36-9+deb12u4\nArchitecture: amd64\nSize: 2757000\n"
    )
    started: list[list[str]] = []

    def fake_run(argv, **kwargs):
        started.append(list(argv))
        return CommandOutput(argv=list(argv), exit_code=0, stdout=show, stderr="", duration_seconds=0.0)

    monkeypatch.setattr(apt_module, "run_command", fake_run)
    records = [
        UpdateRecord(package_type="apt", name="libssl3", current_version="3.0.17-1~deb12u2",
                     available_version="3.0.22-1~deb12u2", metadata={"arch": "amd64"}),
        UpdateRecord(package_type="apt", name="bash", current_version="5.2.15-2+b7", available_version="5.2.15-2+b13",
                     metadata={"arch": "amd64"}),
        UpdateRecord(package_type="apt", name="libc6:i386", current_version="2.36-9+deb12u3",
                     available_version="2.36-9+deb12u4", metadata={"arch": "i386"}),
        UpdateRecord(package_type="apt", name="not-in-cache", current_version="1", available_version="2"),
    ]
    AptScanner(state_dir="/nonexistent")._add_cache_fields(records)
    assert len(started) == 1  # one apt-cache show for sizes and sources together
    assert [record.metadata.get("source") for record in records] == ["openssl", None, "glibc", None]
    assert [record.size_bytes for record in records] == [2039888, 1490652, 2621000, None]


def test_parse_captured_install_output() -> None:
    changes = parse_unpacked(fixture_text("install_output.txt"))
    assert changes == [
        {"name": DEP, "current_version": "", "new_version": "1.0", "action": "install"},
        {"name": PKG, "current_version": "1.0", "new_version": "1.1", "action": "upgrade"},
        {"name": SEC, "current_version": "1.0", "new_version": "1.1", "action": "upgrade"},
    ]


def test_parse_debian_and_ubuntu_origin_strings() -> None:
    # Lines in the format apt 2.6 prints for Debian and Ubuntu archives
    # (pkgCache::VerIterator::RelStr: "Label:Version/Suite", comma-separated).
    output = (
        "Inst libc6 [2.36-9+deb12u3] (2.36-9+deb12u4 Debian:12.5/stable, Debian-Security:12/stable-security [amd64])\n"
        "Inst openssl [3.0.2-0ubuntu1.10] (3.0.2-0ubuntu1.12 Ubuntu:22.04/jammy-updates [amd64]) []\n"
        "Inst libfoo:i386 [1] (2 localhost [i386])\n"
        "Remv old-kernel [6.1.0-10]\n"
    )
    parsed = parse_simulation(output)
    libc, openssl, libfoo = parsed["inst"]
    assert libc["origins"] == [("Debian", "stable"), ("Debian-Security", "stable-security")]
    assert openssl["origins"] == [("Ubuntu", "jammy-updates")]
    assert libfoo["name"] == "libfoo:i386" and libfoo["origins"] == [("", "localhost")]
    assert parsed["remv"] == [{"name": "old-kernel", "current": "6.1.0-10"}]
    assert parse_origins("Debian-Security:12/stable-security") == [("Debian-Security", "stable-security")]


def test_scan_record_security_mapping_from_label() -> None:
    scanner = AptScanner(state_dir="/nonexistent")
    parsed = parse_simulation(
        "Inst libc6 [1] (2 Debian:12.5/stable, Debian-Security:12/stable-security [amd64])\n"
        "Inst vim [1] (2 Debian:12.5/stable [amd64])\n"
    )
    libc = scanner._record_from_inst(parsed["inst"][0], held={"libc6"})
    vim = scanner._record_from_inst(parsed["inst"][1], held=set())
    assert libc.is_security and libc.severity == "important"
    assert libc.repository == "Debian-Security/stable-security"
    assert libc.metadata["held"] is True
    assert not vim.is_security and vim.severity == "unknown"


def test_unrecognised_inst_line_is_a_scan_error() -> None:
    with pytest.raises(ScanError, match="unrecognised"):
        parse_simulation("Inst something weird\n")


def test_apt_options_are_normalised() -> None:
    assert normalize_apt_options(["-o Dir::Cache=/x", "-oA::B=1", "C::D=2"]) == [
        "-o",
        "Dir::Cache=/x",
        "-o",
        "A::B=1",
        "-o",
        "C::D=2",
    ]
    with pytest.raises(ValueError):
        normalize_apt_options(["--allow-unauthenticated"])
