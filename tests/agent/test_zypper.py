"""zypper scanner and installer, against the real zypper and rpm.

The world is built here, once per module, with the DNF tests' helpers
(tests/agent/dnf_fixtures/sandbox.py): noarch RPMs signed with a throwaway
GnuPG key, a createrepo_c repository whose updateinfo.xml carries a security
patch (two CVEs, severity Important, updating two packages) and a
non-security one (category recommended, severity moderate). The repository's
repomd.xml is signed with the same key, and the key is imported into each
test's private root, as a distribution's release package does: zypper checks
both and nothing is switched off. Each test gets a fresh root (``zypper
--root``) holding version 1.0 of two packages; 1.1 is published.

The expected answers are zypper's own, read from the plain tables a person
reads (``zypper list-updates``, ``list-patches``, ``list-patches --cve``),
never from the scanner's XML route. Each test also proves the host's own
package state untouched.

Needs root and Debian's ``zypper``, ``rpm`` (rpmbuild, rpmsign),
``createrepo-c`` and ``gnupg``. No Django here: this file also runs under
Python 3.9.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from agent_client.executor import CommandExecutor, ExecutedLedger
from agent_client.outbox import Outbox
from agent_client.scanners import zypper as zypper_module
from agent_client.scanners.base import ScanError, run_command
from agent_client.scanners.zypper import ZypperScanner, info_fields, parse_table
from tests.agent.conftest import require_root, require_tools
from tests.agent.dnf_fixtures.sandbox import (
    Advisory,
    DnfSandbox,
    RpmSpec,
    SigningKey,
    build_rpms,
    make_repository,
)
from tests.agent.hostile import FileServer, ToolShims, hostile_names, refuse_every_name
from tests.agent.test_executor import AGENT_ID, Signer

SYSTEM_TOOLS = ("zypper", "rpm", "rpmbuild", "rpmsign", "createrepo_c", "modifyrepo_c", "gpg", "gpg-agent", "gpgconf")
REPO_ALIAS = "redflag-test"

OLD = [RpmSpec("redflag-test-pkg", "1.0"), RpmSpec("redflag-test-sec", "1.0")]
NEW = [
    RpmSpec("redflag-test-pkg", "1.1", requires=("redflag-test-dep",)),
    RpmSpec("redflag-test-dep", "1.0"),
    RpmSpec("redflag-test-sec", "1.1"),
]
SECURITY_PATCH = Advisory(
    "RFSA-2024:0001", "security", "Important", "Important: redflag-test-sec security update",
    # Two packages, one of them not installed: zypper lists both under "Conflicts : [2]".
    (NEW[2], NEW[1]), cves=("CVE-2024-12345", "CVE-2024-23456"), bugs=(("1001", "the flaw"),),
)
RECOMMENDED_PATCH = Advisory("RFBA-2024:0002", "recommended", "moderate", "redflag-test-pkg bug fix", (NEW[0],))
# Host paths zypper or rpm would write to if they escaped the private root.
# The host's package state. Not its logs or lock file (/var/log/zypper.log, /run/zypp.pid): any zypper on this
# machine writes those, the agent's own capability probe in the end-to-end tests included, which CI may run
# at the same time as this test (the SQLite and PostgreSQL passes run side by side).
HOST_STATE = ("~/.rpmdb", "/var/lib/rpm", "/etc/zypp/repos.d", "/var/cache/zypp", "/var/lib/zypp")


def host_state() -> dict[str, object]:
    snapshot: dict[str, object] = {}
    for raw in HOST_STATE:
        path = os.path.expanduser(raw)
        try:
            snapshot[path] = (os.stat(path).st_mtime_ns, sorted(os.listdir(path)) if os.path.isdir(path) else None)
        except FileNotFoundError:
            snapshot[path] = None
    return snapshot


# ---------------------------------------------------------------------------
# The parsers' edge cases that the built repository does not produce


def test_info_fields_keeps_indented_lines_with_their_field():
    # The shape of `zypper info -t patch` (zypper 1.14.42): a description line that looks like a field
    # is indented, so it stays in the description and cannot add a package to "Conflicts".
    text = ("Name        : SUSE-2024-1\nDescription : \n    Conflicts   : not-a-package < 1\n"
            "Conflicts   : [2]\n    libfoo.x86_64 < 1.2-3.1\n    foo-doc < 1.2-3.1\n")
    fields = info_fields(text)
    assert fields["Name"] == ["SUSE-2024-1"]
    assert fields["Description"] == ["Conflicts   : not-a-package < 1"]
    assert fields["Conflicts"] == ["libfoo.x86_64 < 1.2-3.1", "foo-doc < 1.2-3.1"]


def test_parse_table_skips_header_rule_and_chatter():
    text = ("Loading repository data...\nS | Repository | Name | Current Version | Available Version | Arch\n"
            "--+------------+------+-----------------+-------------------+-------\n"
            "v | repo-oss   | curl | 8.0-1.1         | 8.6-1.1           | x86_64\n")
    assert parse_table(text) == {"curl": "8.6-1.1"}


def test_missing_binary_is_unavailable_and_a_failed_operation():
    scanner = ZypperScanner(binary="redflag-no-such-zypper")
    assert not scanner.is_available()
    with pytest.raises(ScanError, match="zypper is not installed"):
        scanner.scan()
    result = scanner.install(["redflag-test-pkg"])
    assert not result.succeeded and result.exit_code == -1


# ---------------------------------------------------------------------------
# The real zypper against a private repository and root


@dataclasses.dataclass
class BuiltWorld:
    base: Path
    rpms: dict[str, Path]
    key: SigningKey

    @property
    def repo(self) -> Path:
        return self.base / "repo"


@pytest.fixture(scope="module")
def built_repository(tmp_path_factory) -> BuiltWorld:
    """Signed RPMs and a signed repository, built once; each test gets a fresh root."""
    require_tools(*SYSTEM_TOOLS)
    require_root()
    base = tmp_path_factory.mktemp("zypper-world")
    key = SigningKey(base)
    try:
        rpms = build_rpms(base, OLD + NEW, signing_key=key)
        make_repository(base / "repo", [rpms[spec.filename] for spec in NEW], [SECURITY_PATCH, RECOMMENDED_PATCH])
        # zypper checks repomd.xml's detached signature (repo_gpgcheck) against the keys in the root's rpmdb.
        signed = run_command(["gpg", "--batch", "--homedir", str(key.home), "--local-user", key.uid,
                              "--armor", "--detach-sign", str(base / "repo/repodata/repomd.xml")])
        assert signed.exit_code == 0, signed.stderr
    finally:
        key.close()
    return BuiltWorld(base, rpms, key)


@dataclasses.dataclass
class ZypperRoot:
    """A DnfSandbox's root (rpmdb with the key and version 1.0) plus zypper's own repository file in it."""

    rpm: DnfSandbox
    cache: Path

    @property
    def root(self) -> Path:
        return self.rpm.root

    def scanner(self, **options) -> ZypperScanner:
        return ZypperScanner(str(self.root), cache_dir=str(self.cache), **options)

    def plain(self, *args: str) -> str:
        """zypper's table for a person, run the way an admin would on this root."""
        result = run_command(["zypper", "--non-interactive", "--terse", "--root", str(self.root),
                              "--cache-dir", str(self.cache), *args],
                             env={"ZYPP_LOGFILE": str(self.root / "var/log/zypper.log")})
        assert result.exit_code == 0, result.stdout + result.stderr
        return result.stdout


@pytest.fixture
def world(built_repository, tmp_path):
    rpm = DnfSandbox(tmp_path, signing_key=built_repository.key)
    rpm.rpm_install([built_repository.rpms[spec.filename] for spec in OLD])
    repos = rpm.root / "etc/zypp/repos.d"
    repos.mkdir(parents=True)
    (repos / f"{REPO_ALIAS}.repo").write_text(
        f"[{REPO_ALIAS}]\nname=RedFlag test repository\nenabled=1\nautorefresh=1\n"
        f"baseurl=file:{built_repository.repo}\ngpgcheck=1\n")
    before = host_state()
    yield ZypperRoot(rpm, tmp_path / "zypp-cache")
    assert host_state() == before, "zypper/rpm touched the host's own package state"


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The rows of a ``--terse`` table whose header starts with ``first_header``."""
    rows: list[list[str]] = []
    in_table = False
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if cells[0] == first_header:
            in_table = True
        elif in_table and len(cells) > 1 and not set(line) <= set("-+"):
            rows.append(cells)
    return rows


def test_real_scan_is_what_zyppers_own_tables_say(world, monkeypatch):
    calls: list[list[str]] = []
    real_run = zypper_module.run_command

    def counting_run(argv, **kwargs):
        calls.append(list(argv))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(zypper_module, "run_command", counting_run)
    records = {record.name: record for record in world.scanner().scan()}
    assert len(calls) == 3  # list-updates, list-patches, one info for every patch

    # What an admin reads: the updates, the needed patches, and which CVE each patch fixes.
    updates = {row[2]: row for row in table_rows(world.plain("list-updates"), "S")}
    patches = {row[1]: row for row in table_rows(world.plain("list-patches"), "Repository")}
    cves = table_rows(world.plain("list-patches", "--cve"), "Issue")
    # The tables name a repository; a record carries its alias, the id `zypper --repo` takes.
    aliases = {row[2]: row[1] for row in table_rows(world.plain("repos"), "#")}
    # Which packages each patch updates: what was published in updateinfo.xml.
    patched = {advisory.advisory_id: {package.name for package in advisory.packages}
               for advisory in (SECURITY_PATCH, RECOMMENDED_PATCH)}

    assert sorted(records) == sorted(updates) == ["redflag-test-pkg", "redflag-test-sec"]
    assert sorted(patches) == ["RFBA-2024:0002", "RFSA-2024:0001"]
    for name, record in records.items():
        _status, repository_name, _name, current, available, arch = updates[name]
        assert (record.current_version, record.available_version, record.repository, record.metadata["arch"]) == (
            current, available, aliases[repository_name], arch)
        covering = sorted(patch_id for patch_id in patches if name in patched[patch_id])
        assert record.metadata["advisory_ids"] == covering
        assert record.is_security == any(patches[patch_id][2] == "security" for patch_id in covering)
        assert record.severity == patches[covering[0]][3]  # one patch each here
        assert record.cve_ids == sorted(row[1] for row in cves if row[0] == "cve" and row[2] in covering)

    sec = records["redflag-test-sec"]
    assert (sec.current_version, sec.available_version, sec.repository) == ("1.0-1", "1.1-1", REPO_ALIAS)
    assert sec.is_security and sec.severity == "important"
    assert sec.cve_ids == ["CVE-2024-12345", "CVE-2024-23456"]
    assert sec.metadata["advisory_types"] == ["security"]
    pkg = records["redflag-test-pkg"]
    assert not pkg.is_security and pkg.severity == "moderate" and pkg.cve_ids == []
    assert pkg.metadata["advisories"][0]["type"] == "recommended"
    assert world.rpm.installed("redflag-test-pkg", "redflag-test-sec", "redflag-test-dep") == {
        "redflag-test-pkg": "1.0-1", "redflag-test-sec": "1.0-1"}


def test_native_listing_agrees_with_scan(world):
    scanner = world.scanner()
    assert scanner.native_listing() == {record.name: record.available_version for record in scanner.scan()}
    assert scanner.native_listing() == {"redflag-test-pkg": "1.1-1", "redflag-test-sec": "1.1-1"}


def test_real_dry_run_lists_the_new_dependency_and_changes_nothing(world):
    result = world.scanner().dry_run(["redflag-test-pkg"])

    assert result.succeeded, result.output_tail
    assert result.exit_code == 0
    assert result.dependencies == ["redflag-test-dep"]
    assert [(p["name"], p["version"], p["action"]) for p in result.packages] == [
        ("redflag-test-pkg", "1.1-1", "upgrade"), ("redflag-test-dep", "1.0-1", "install")]
    assert "redflag-test-pkg.noarch 1.0-1 -> 1.1-1" in result.output_tail
    assert world.rpm.installed("redflag-test-pkg", "redflag-test-sec", "redflag-test-dep") == {
        "redflag-test-pkg": "1.0-1", "redflag-test-sec": "1.0-1"}
    assert not (world.root / "usr/share/redflag-test-dep").exists()


def test_real_install_upgrades_the_named_packages(world):
    scanner = world.scanner()

    result = scanner.install(["redflag-test-pkg", "redflag-test-sec"])

    assert result.succeeded, result.output_tail
    assert result.exit_code == 0
    assert result.dependencies == ["redflag-test-dep"]
    assert world.rpm.installed("redflag-test-pkg", "redflag-test-sec", "redflag-test-dep") == {
        "redflag-test-pkg": "1.1-1", "redflag-test-sec": "1.1-1", "redflag-test-dep": "1.0-1"}
    assert (world.root / "usr/share/redflag-test-pkg/version").read_text().strip() == "1.1-1"
    assert scanner.scan() == []
    assert world.plain("list-patches").count("| needed |") == 0


def test_real_install_of_one_package_leaves_the_other(world):
    result = world.scanner().install(["redflag-test-sec"])

    assert result.succeeded, result.output_tail
    assert result.dependencies == []
    assert world.rpm.installed("redflag-test-pkg", "redflag-test-sec") == {
        "redflag-test-pkg": "1.0-1", "redflag-test-sec": "1.1-1"}


def test_an_unknown_name_fails_and_nothing_changes(world):
    scanner = world.scanner()
    for operation in (scanner.dry_run, scanner.install):
        result = operation(["redflag-test-no-such-package", "redflag-test-sec"])
        assert not result.succeeded and result.exit_code == 104
        assert "No provider of 'redflag-test-no-such-package' found." in result.output_tail
    assert world.rpm.installed("redflag-test-sec") == {"redflag-test-sec": "1.0-1"}


def test_a_name_that_is_not_installed_is_not_installed_and_not_a_success(world):
    """``update`` leaves a published but not installed package alone (``install`` would add it);
    zypper goes on with the other names, and the result says the command was not fully done."""
    scanner = world.scanner()
    dry_run = scanner.dry_run(["redflag-test-dep", "redflag-test-sec"])
    assert not dry_run.succeeded
    assert "Package 'redflag-test-dep' is not installed." in dry_run.output_tail
    assert [(p["name"], p["action"]) for p in dry_run.packages] == [("redflag-test-sec", "upgrade")]

    result = scanner.install(["redflag-test-dep", "redflag-test-sec"])

    assert not result.succeeded and result.exit_code == 0
    assert "Package 'redflag-test-dep' is not installed." in result.output_tail
    assert world.rpm.installed("redflag-test-dep", "redflag-test-sec") == {"redflag-test-sec": "1.1-1"}


def test_is_available_only_with_an_enabled_repository(world, tmp_path):
    assert world.scanner().is_available()
    empty = tmp_path / "no-repos.d"
    empty.mkdir()
    without_repositories = world.scanner(reposd_dir=str(empty))
    assert not without_repositories.is_available()
    disabled = tmp_path / "disabled-repos.d"
    disabled.mkdir()
    (disabled / "off.repo").write_text(f"[off]\nenabled=0\nbaseurl=file:{world.rpm.base / 'repo'}\n")
    assert not world.scanner(reposd_dir=str(disabled)).is_available()


def test_real_scan_with_an_unreadable_repository_raises(world):
    (world.root / "etc/zypp/repos.d/broken.repo").write_text(
        f"[broken]\nenabled=1\nautorefresh=1\nbaseurl=file:{world.rpm.base / 'no-such-repo'}\n")
    with pytest.raises(ScanError, match="exited 106"):
        world.scanner().scan()


# ---------------------------------------------------------------------------
# Hostile names against the real zypper: refused before any update process, nothing fetched or installed


def test_real_zypper_never_sees_a_hostile_name(world, built_repository, tmp_path, monkeypatch):
    """Through the executor (a signed command, as the server sends it) and the scanner itself."""
    shims = ToolShims(tmp_path / "shims", ["zypper"], monkeypatch)
    marker = tmp_path / "pwned"
    package_file = built_repository.rpms[NEW[0].filename]
    monkeypatch.chdir(package_file.parent)
    signer = Signer()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    scanner = world.scanner()
    executor = CommandExecutor(agent_id=AGENT_ID, signing_keys=[signer.public], outbox=outbox,
                               ledger=ExecutedLedger(tmp_path / "executed.sqlite3"), scanners={"zypper": scanner},
                               system_facts=dict, record=lambda event: None)
    with FileServer(package_file.parent) as files:
        names = hostile_names(marker=marker, url=f"{files.url}/{package_file.name}", package_file=package_file)
        names += [package_file.name, "redflag-test-*", "pattern:base", "patch:RFSA-2024:0001", "redflag-test-pkg>1.0"]
        refuse_every_name(names=names, valid="redflag-test-sec", package_type="zypper", signer=signer,
                          executor=executor, scanner=scanner, outbox=outbox)
        # A refused name starts no zypper process at all.
        assert shims.started() == []
        assert files.requests == []
        assert not marker.exists()
        assert world.rpm.installed("redflag-test-pkg", "redflag-test-sec") == {
            "redflag-test-pkg": "1.0-1", "redflag-test-sec": "1.0-1"}

        # The same route with a valid name reaches the real zypper, after "--".
        install = signer.command("install_updates", {"package_type": "zypper", "packages": ["redflag-test-sec"]})
        assert executor.handle(install) == "succeeded"
    (started,) = [line for line in shims.started() if " update " in line]
    assert started.endswith(" --xmlout update -- redflag-test-sec")
    assert world.rpm.installed("redflag-test-sec") == {"redflag-test-sec": "1.1-1"}

