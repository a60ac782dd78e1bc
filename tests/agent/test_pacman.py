"""pacman scanner and installer, against the real pacman.

Debian's ``pacman-package-manager`` (pacman 6.0.2, repo-add; bsdtar from ``libarchive-tools``)
runs here on packages built by the test. makepkg refuses to run as root, and a package is only a
compressed tar of ``.PKGINFO`` plus its files, so :func:`build_package` writes exactly that with
bsdtar; ``repo-add`` makes the repository database. Everything lives under tmp_path: a private
root, its own dbpath, cache, log, GnuPG and hook directories, named in a private pacman.conf
given to every call (the machine's /var/lib/pacman, cache and log are never used).

The test repository says ``SigLevel = Never`` and nothing else does: its packages are built
here, unsigned, and signing them would need a pacman keyring (pacman-key --init, a key imported
and locally signed) that tests nothing of the agent's own. The agent passes no signature option of
its own: pacman's SigLevel from pacman.conf decides, as it does for every other pacman on the host.

No Django here: this file also runs under Python 3.9.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

from agent_client.executor import CommandExecutor, ExecutedLedger
from agent_client.outbox import KIND_COMMAND_RESULT, Outbox
from agent_client.scanners.base import ScanError, run_command
from agent_client.scanners.pacman import PacmanScanner
from tests.agent.conftest import require_root, require_tools
from tests.agent.hostile import FileServer, ToolShims, hostile_names, refuse_every_name
from tests.agent.test_executor import AGENT_ID, Signer

SYSTEM_TOOLS = ("pacman", "pacman-conf", "repo-add", "bsdtar")
REPOSITORY = "redflag-test"
PUBLISHED_FROM = int(time.time())


def build_package(directory: Path, name: str, version: str, depends: tuple[str, ...] = ()) -> Path:
    """A real package file: a gzip'd tar whose first member is .PKGINFO, then the package's files."""
    tree = directory / f"tree-{name}-{version}"
    (tree / "usr" / "share" / name).mkdir(parents=True)
    (tree / "usr" / "share" / name / "version").write_text(f"{name} {version}\n")
    pkginfo = [f"pkgname = {name}", f"pkgbase = {name}", f"pkgver = {version}", "pkgdesc = RedFlag test package",
               "url = https://example.invalid/", "builddate = 1764633600", "packager = RedFlag tests <tests@invalid>",
               "size = 64", "arch = any", "license = MIT", *(f"depend = {dependency}" for dependency in depends)]
    (tree / ".PKGINFO").write_text("\n".join(pkginfo) + "\n")
    package = directory / f"{name}-{version}-any.pkg.tar.gz"
    subprocess.run(["bsdtar", "-czf", str(package), "-C", str(tree), ".PKGINFO", "usr"], check=True)
    return package


class PacmanSandbox:
    """A private root with its own pacman.conf and a local repository the test publishes into."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.repo = base / "repo"
        self.root = base / "root"
        self.dbpath = self.root / "var" / "lib" / "pacman"
        self.cache = base / "cache"
        self.log = base / "pacman.log"
        self.config = base / "pacman.conf"
        self.publications = 0
        for directory in (self.repo, self.dbpath, self.cache, base / "gnupg", base / "hooks"):
            directory.mkdir(parents=True)
        self.write_config(f"[{REPOSITORY}]\nSigLevel = Never\nServer = file://{self.repo}\n")

    def write_config(self, repositories: str) -> None:
        self.config.write_text(
            "[options]\nArchitecture = auto\n"
            f"CacheDir = {self.cache}/\nLogFile = {self.log}\nGPGDir = {self.base / 'gnupg'}/\n"
            f"HookDir = {self.base / 'hooks'}/\n\n" + repositories)

    def publish(self, *packages: tuple[str, ...]) -> None:
        """Build and add ``(name, version, dependency...)`` packages, in one repo-add (a slow shell script)."""
        built = [build_package(self.repo, name, version, tuple(depends)) for name, version, *depends in packages]
        database = self.repo / f"{REPOSITORY}.db.tar.gz"
        added = run_command(["repo-add", "--quiet", str(database), *map(str, built)])
        assert added.exit_code == 0, added.stderr
        # A file:// sync fetches a database only when it is newer, to the second, than the copy it has;
        # a test publishes within the second of its last sync, so each publication is dated a minute on.
        self.publications += 1
        stamp = PUBLISHED_FROM + 60 * self.publications
        os.utime(database, (stamp, stamp))

    def pacman(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["pacman", "--config", str(self.config), "--root", str(self.root),
                               "--dbpath", str(self.dbpath), *args], capture_output=True, text=True,
                              env={**os.environ, "LC_ALL": "C"})

    def installed(self) -> dict[str, str]:
        listed = self.pacman("-Q")
        return dict(line.split() for line in listed.stdout.splitlines())

    def scanner(self) -> PacmanScanner:
        return PacmanScanner(config=str(self.config), root=str(self.root), dbpath=str(self.dbpath))

    def state(self) -> dict[str, tuple[int, bytes]]:
        """Every file of the dbpath (sync and local databases), the cache and the log: mtime and content."""
        files = [path for top in (self.dbpath, self.cache) for path in top.rglob("*") if path.is_file()]
        files += [self.log] if self.log.exists() else []
        return {str(path): (path.stat().st_mtime_ns, path.read_bytes()) for path in sorted(files)}


def system_test() -> None:
    require_tools(*SYSTEM_TOOLS)
    require_root()  # pacman -Sy and -S refuse to run otherwise, even on a private root


@pytest.fixture
def sandbox(tmp_path) -> PacmanSandbox:
    """alpha, beta and delta 1.0-1 installed; then alpha 2.0-1 and beta 2.0-1 (which needs the new gamma) published.

    The root's own sync database is left as it was at install time: only a sync shows the updates.
    """
    system_test()
    box = PacmanSandbox(tmp_path)
    box.publish(("alpha", "1.0-1"), ("beta", "1.0-1"), ("delta", "1.0-1"))
    installed = box.pacman("-Sy", "--noconfirm", "--", "alpha", "beta", "delta")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    box.publish(("alpha", "2.0-1"), ("gamma", "1.0-1"), ("beta", "2.0-1", "gamma"))
    return box


def real_pending(box: PacmanSandbox) -> dict[str, str]:
    """``pacman -Qu`` in the private root after a real ``pacman -Sy`` there (the test may sync its own root)."""
    synced = box.pacman("-Sy")
    assert synced.returncode == 0, synced.stderr
    listed = box.pacman("-Qu")
    return {fields[0]: fields[3] for fields in map(str.split, listed.stdout.splitlines())}


def repository_info(box: PacmanSandbox, name: str) -> dict[str, str]:
    """``pacman -Si NAME`` as {field: value}."""
    info = box.pacman("-Si", "--", name)
    assert info.returncode == 0, info.stderr
    return {key.strip(): value.strip() for key, _, value in
            (line.partition(":") for line in info.stdout.splitlines()) if value}


# ---------------------------------------------------------------------------
# Scan


def test_scan_is_what_pacman_Qu_says_after_a_real_sync(sandbox):
    records = sandbox.scanner().scan()

    expected = real_pending(sandbox)
    assert expected == {"alpha": "2.0-1", "beta": "2.0-1"}
    assert {record.name: record.available_version for record in records} == expected
    for record in records:
        info = repository_info(sandbox, record.name)
        assert (record.current_version, record.available_version) == ("1.0-1", info["Version"])
        assert record.repository == info["Repository"] == REPOSITORY
        # pacman -Si rounds the size for people; the package file itself is the exact truth.
        assert record.size_bytes == (sandbox.repo / f"{record.name}-2.0-1-any.pkg.tar.gz").stat().st_size
        assert (record.severity, record.is_security, record.cve_ids) == ("unknown", False, [])
        assert record.metadata == {}


def test_scan_syncs_a_copy_and_never_the_real_databases(sandbox):
    """As checkupdates does: the root's sync database, local database, cache and log are untouched."""
    before = sandbox.state()
    scanner = sandbox.scanner()

    assert len(scanner.scan()) == 2
    assert scanner.native_listing()
    assert scanner.dry_run(["alpha", "beta"]).succeeded

    assert sandbox.state() == before
    # The real sync database still predates version 2: without a sync of its own, pacman sees nothing.
    assert sandbox.pacman("-Qu").stdout == ""


def test_native_listing_agrees_with_scan(sandbox):
    scanner = sandbox.scanner()
    listing = scanner.native_listing()
    assert listing == {record.name: record.available_version for record in scanner.scan()}
    assert listing == {"alpha": "2.0-1", "beta": "2.0-1"}


def test_an_up_to_date_root_scans_empty_and_has_nothing_to_install(sandbox):
    upgraded = sandbox.pacman("-Syu", "--noconfirm")
    assert upgraded.returncode == 0, upgraded.stderr
    scanner = sandbox.scanner()
    assert scanner.scan() == []
    assert scanner.native_listing() == {}
    for result in (scanner.dry_run(["alpha"]), scanner.install(["alpha"])):
        assert result.succeeded, result.output_tail
        assert (result.packages, result.dependencies) == ([], [])


def test_an_ignored_package_is_reported_flagged_and_need_not_be_approved(sandbox):
    """IgnorePkg: pacman -Qu marks it "[ignored]", pacman -Syu leaves it; so the scan flags it and the
    full upgrade without it is not a partial one."""
    config = sandbox.config.read_text().replace("[options]\n", "[options]\nIgnorePkg = beta\n")
    sandbox.config.write_text(config)
    scanner = sandbox.scanner()

    flagged = {record.name: record.metadata for record in scanner.scan()}
    assert flagged == {"alpha": {}, "beta": {"ignored": True}}
    result = scanner.install(["alpha"])

    assert result.succeeded, result.output_tail
    assert sandbox.installed() == {"alpha": "2.0-1", "beta": "1.0-1", "delta": "1.0-1"}


def test_a_scan_that_cannot_sync_raises(sandbox):
    sandbox.write_config(f"[{REPOSITORY}]\nSigLevel = Never\nServer = file://{sandbox.base / 'no-such-repo'}\n")
    with pytest.raises(ScanError, match="pacman -Sy"):
        sandbox.scanner().scan()


# ---------------------------------------------------------------------------
# Availability


def test_available_only_with_a_sync_repository_that_has_a_server(sandbox, tmp_path, monkeypatch):
    assert sandbox.scanner().is_available()

    sandbox.write_config("")  # Debian's own /etc/pacman.conf: no repository at all
    assert not sandbox.scanner().is_available()
    sandbox.write_config(f"[{REPOSITORY}]\nSigLevel = Never\n")  # a repository with nowhere to sync from
    assert not sandbox.scanner().is_available()
    # A repository pacman -Sy does not refresh (Usage without Sync).
    sandbox.write_config(f"[{REPOSITORY}]\nSigLevel = Never\nUsage = Search Install\nServer = file://{sandbox.repo}\n")
    assert not sandbox.scanner().is_available()
    sandbox.write_config(f"[{REPOSITORY}]\nSigLevel = Never\nUsage = Sync\nServer = file://{sandbox.repo}\n")
    assert sandbox.scanner().is_available()

    sandbox.write_config(f"[{REPOSITORY}]\nSigLevel = Never\nServer = file://{sandbox.repo}\n")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert not sandbox.scanner().is_available()


# ---------------------------------------------------------------------------
# Dry-run and install


def test_dry_run_lists_the_new_dependency_and_changes_nothing(sandbox):
    before = sandbox.state()

    result = sandbox.scanner().dry_run(["alpha", "beta"])

    assert result.succeeded, result.output_tail
    assert result.dependencies == ["gamma"]
    assert sorted((package["name"], package["current_version"], package["new_version"], package["action"])
                  for package in result.packages) == [
        ("alpha", "1.0-1", "2.0-1", "upgrade"), ("beta", "1.0-1", "2.0-1", "upgrade"),
        ("gamma", "", "1.0-1", "install")]
    assert {package["repository"] for package in result.packages} == {REPOSITORY}
    assert sandbox.state() == before
    assert sandbox.installed() == {"alpha": "1.0-1", "beta": "1.0-1", "delta": "1.0-1"}


def test_install_really_upgrades_and_pulls_in_the_dependency(sandbox):
    result = sandbox.scanner().install(["alpha", "beta"])

    assert result.succeeded, result.output_tail
    assert sandbox.installed() == {"alpha": "2.0-1", "beta": "2.0-1", "gamma": "1.0-1", "delta": "1.0-1"}
    assert (sandbox.root / "usr/share/beta/version").read_text() == "beta 2.0-1\n"
    assert result.dependencies == ["gamma"]
    assert result.packages == [
        {"name": "alpha", "current_version": "1.0-1", "new_version": "2.0-1", "repository": REPOSITORY,
         "action": "upgrade"},
        {"name": "beta", "current_version": "1.0-1", "new_version": "2.0-1", "repository": REPOSITORY,
         "action": "upgrade"},
        {"name": "gamma", "current_version": "", "new_version": "1.0-1", "repository": REPOSITORY,
         "action": "install"},
    ]
    assert sandbox.scanner().scan() == []


@pytest.mark.parametrize("names,missing", [
    (["alpha"], "approve these pending updates too: beta"),
    (["alpha", "beta", "gamma"], "not installed (this is an upgrade, not an install): gamma"),
])
def test_a_partial_upgrade_or_a_new_package_is_refused_before_pacman_changes_anything(
        sandbox, tmp_path, monkeypatch, names, missing):
    shims = ToolShims(tmp_path / "shims", ["pacman"], monkeypatch)
    before = sandbox.state()
    scanner = sandbox.scanner()

    dry_run, install = scanner.dry_run(names), scanner.install(names)

    assert not dry_run.succeeded and missing in dry_run.output_tail
    assert not install.succeeded and missing in install.output_tail
    assert install.output_tail.startswith("refused: ") and install.output_tail.endswith("; nothing was run")
    assert sandbox.state() == before
    # pacman ran, but only in the temporary copy: never a transaction on the root's own databases.
    assert shims.started_by("pacman")
    assert not [line for line in shims.started_by("pacman") if f"--dbpath {sandbox.dbpath} " in line
                and " -S" in line]


# ---------------------------------------------------------------------------
# Hostile names: refused before any process, nothing fetched or installed


def result_payloads(outbox: Outbox) -> list[dict]:
    return [item.payload for item in outbox.pending() if item.kind == KIND_COMMAND_RESULT]


def last_output(outbox: Outbox) -> Optional[str]:
    results = result_payloads(outbox)
    return results[-1]["output"] if results else None


def test_real_pacman_never_sees_a_hostile_name(sandbox, tmp_path, monkeypatch):
    """Through the executor (a signed command, as the server sends it) and the scanner itself."""
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    evil = build_package(evil_dir, "alpha", "9.9-1")
    shims = ToolShims(tmp_path / "shims", ["pacman", "pacman-conf"], monkeypatch)
    marker = tmp_path / "pwned"
    monkeypatch.chdir(evil_dir)
    signer = Signer()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    scanner = sandbox.scanner()
    executor = CommandExecutor(agent_id=AGENT_ID, signing_keys=[signer.public], outbox=outbox,
                               ledger=ExecutedLedger(tmp_path / "executed.sqlite3"), scanners={"pacman": scanner},
                               system_facts=dict, record=lambda event: None)
    with FileServer(evil_dir) as files:
        # "@core" is dnf's group syntax; pacman has none, and "@" is legal in an Arch name: it is below.
        names = [name for name in hostile_names(marker=marker, url=f"{files.url}/{evil.name}", package_file=evil)
                 if name != "@core"]
        # pacman's own syntax for a repository, a version constraint, a package file and an option.
        names += [f"{REPOSITORY}/alpha", "alpha>=9", "alpha=9.9-1", "--overwrite=*", "-Syu"]
        refuse_every_name(names=names, valid="alpha", package_type="pacman", signer=signer, executor=executor,
                          scanner=scanner, outbox=outbox)
        assert shims.started_by("pacman") == []  # pacman-conf answered is_available; pacman never started
        assert files.requests == []
        assert not marker.exists()
        assert sandbox.installed() == {"alpha": "1.0-1", "beta": "1.0-1", "delta": "1.0-1"}

        # A package file's name is an Arch package name too (-S would only look it up in the repositories),
        # as is "@core": neither is installed, so both are refused before any transaction.
        refused = scanner.install(["alpha", "beta", evil.name, "@core"])
        assert not refused.succeeded
        assert f"not installed (this is an upgrade, not an install): {evil.name}, @core" in refused.output_tail
        assert not [line for line in shims.started_by("pacman") if " -Syu " in line]
        assert files.requests == []

        # The same route with valid names reaches the real pacman: after "--", as a full upgrade.
        install = signer.command("install_updates", {"package_type": "pacman", "packages": ["alpha", "beta"]})
        assert executor.handle(install) == "succeeded", last_output(outbox)
    (upgrade,) = [line for line in shims.started_by("pacman") if " -Syu " in line]
    assert upgrade.endswith(" -Syu --needed --noconfirm --noprogressbar -- alpha beta")
    assert sandbox.installed()["alpha"] == "2.0-1"


def test_an_unsigned_package_is_refused_where_pacman_conf_requires_signatures(tmp_path):
    """The agent adds no signature switch of its own: pacman.conf's SigLevel decides, and is obeyed."""
    system_test()
    box = PacmanSandbox(tmp_path)
    box.publish(("alpha", "1.0-1"))
    assert box.pacman("-Sy", "--noconfirm", "--", "alpha").returncode == 0
    box.publish(("alpha", "2.0-1"))
    box.write_config(f"[{REPOSITORY}]\nSigLevel = PackageRequired DatabaseNever\nServer = file://{box.repo}\n")

    result = box.scanner().install(["alpha"])

    assert not result.succeeded
    assert "alpha-2.0-1-any.pkg.tar.gz.sig" in result.output_tail  # pacman wanted the signature there is not
    assert box.installed() == {"alpha": "1.0-1"}
