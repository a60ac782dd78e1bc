"""DNF scanner and installer.

Two layers:

* Parser tests read outputs recorded from a real dnf: the files in
  tests/agent/dnf_fixtures/ were captured from dnf 4.14.0 on Debian 12
  (package dnf 4.14.0-3+deb12u1, rpm 4.18.0) by
  ``python3 -m tests.agent.dnf_fixtures.capture_outputs``.
* System tests run the real dnf against RPMs built here, in a createrepo_c
  repository with updateinfo, and an ``--installroot`` under tmp_path. The
  RPMs are signed with a throwaway GnuPG key and the repository checks it
  (the agent installs only signed packages). They need root and Debian's
  ``dnf``, ``rpm`` (rpmbuild, rpmsign), ``createrepo-c`` and ``gnupg`` packages.

No Django here: this file also runs under Python 3.9.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Optional

import pytest

from agent_client.executor import CommandExecutor, ExecutedLedger
from agent_client.outbox import KIND_COMMAND_RESULT, Outbox
from agent_client.scanners import dnf as dnf_module
from agent_client.scanners.base import CommandOutput, ScanError, run_command
from agent_client.scanners.dnf import (
    DnfScanner,
    parse_advisory_json,
    parse_check_update,
    parse_obsoleting,
    parse_repoquery_installed,
    parse_transaction_table,
    parse_updateinfo_info,
    parse_updateinfo_list,
    planned_updates,
    report_names,
    split_nevra,
    unmatched_names,
)
from tests.agent.conftest import require_root, require_tools
from tests.agent.dnf_fixtures.sandbox import (
    HARD_ADVISORIES,
    HARD_NEW,
    HARD_OLD,
    Advisory,
    DnfSandbox,
    RpmSpec,
    SigningKey,
    build_rpms,
    make_repository,
)
from tests.agent.hostile import FileServer, ToolShims, hostile_names, refuse_every_name
from tests.agent.test_executor import AGENT_ID, Signer

FIXTURES = Path(__file__).resolve().parent / "dnf_fixtures"
LONG_NAME = "redflag-test-a-package-name-much-longer-than-the-column"
SYSTEM_TOOLS = ("dnf", "rpm", "rpmbuild", "rpmsign", "createrepo_c", "modifyrepo_c", "gpg", "gpg-agent", "gpgconf")


def recorded(name: str) -> CommandOutput:
    return CommandOutput(
        argv=["dnf"],
        exit_code=int((FIXTURES / f"{name}.rc").read_text()),
        stdout=(FIXTURES / f"{name}.stdout").read_text(),
        stderr=(FIXTURES / f"{name}.stderr").read_text(),
        duration_seconds=0.1,
    )


# ---------------------------------------------------------------------------
# Parsers on recorded dnf 4.14 output


def test_parse_check_update_reads_every_row_and_skips_progress_line():
    updates = parse_check_update(recorded("check_update").stdout)
    assert [(u.name, u.arch, u.version, u.repository) for u in updates] == [
        (LONG_NAME, "noarch", "1.1-1", "redflag-test"),
        ("redflag-test-epoch", "noarch", "3:2.1-1", "redflag-test"),
        ("redflag-test-pkg", "noarch", "1.1-1", "redflag-test"),
        ("redflag-test-sec", "noarch", "1.1-1", "redflag-test"),
    ]


def test_parse_check_update_rejoins_wrapped_names_and_stops_at_obsoletes():
    # Not recorded: the shape older dnf/yum print when a name overflows its
    # column, and the "Obsoleting Packages" block (needs an Obsoletes repo).
    text = (
        "Last metadata expiration check: 0:01:02 ago on Mon 01 Jan 2024 10:00:00 AM UTC.\n"
        "\n"
        "a-very-long-package-name-that-wraps.x86_64\n"
        "                       1.2-3.el9      baseos\n"
        "kernel.x86_64          5.14.0-1.el9   baseos\n"
        "Obsoleting Packages\n"
        "grub2-tools.x86_64     1:2.06-2.el9   baseos\n"
        "    grub2-tools.x86_64 1:2.06-1.el9   @baseos\n"
    )
    updates = parse_check_update(text)
    assert [(u.name, u.version) for u in updates] == [
        ("a-very-long-package-name-that-wraps", "1.2-3.el9"),
        ("kernel", "5.14.0-1.el9"),
    ]
    (obsoleting,) = parse_obsoleting(text)
    assert (obsoleting.name, obsoleting.version, obsoleting.replaces) == (
        "grub2-tools", "1:2.06-2.el9", ["grub2-tools.x86_64 1:2.06-1.el9"])


def test_parse_recorded_obsoleting_block_and_machine_transaction():
    """Recorded from the hard-cases world (sandbox.HARD_*): check-update lists both arches of one
    version and a new name under "Obsoleting Packages"; the transaction applies one arch of each
    and installs the new name in place of the old one."""
    check = recorded("check_update_obsoleting")
    assert check.exit_code == 100
    assert [(u.name, u.arch) for u in parse_check_update(check.stdout)] == [
        ("redflag-test-multi", "noarch"), ("redflag-test-multi", "x86_64"),
        ("redflag-test-multix", "noarch"), ("redflag-test-multix", "x86_64"),
    ]
    (obsoleting,) = parse_obsoleting(check.stdout)
    assert (obsoleting.name, obsoleting.arch, obsoleting.version, obsoleting.repository) == (
        "redflag-test-new", "noarch", "2.0-1", "redflag-test")
    assert obsoleting.replaces == ["redflag-test-old.noarch 1.0-1"]

    table = parse_transaction_table(recorded("upgrade_assumeno_machine").stdout)
    assert table[0] == {"name": "redflag-test-new", "arch": "noarch", "version": "2.0-1",
                        "repository": "redflag-test", "action": "install",
                        "replaces": "redflag-test-old.noarch 1.0-1"}
    planned = planned_updates(table)
    assert sorted(planned) == [("redflag-test-multi", "noarch"), ("redflag-test-multix", "noarch"),
                               ("redflag-test-new", "noarch")]
    # A plain install (a new dependency) is not an update.
    assert planned_updates([{"name": "dep", "arch": "noarch", "version": "1", "action": "install"}]) == {}


def test_report_names_qualify_only_a_name_under_several_arches():
    assert report_names([("glibc", "i686"), ("glibc", "x86_64"), ("vim", "x86_64")]) == {
        ("glibc", "i686"): "glibc.i686", ("glibc", "x86_64"): "glibc.x86_64", ("vim", "x86_64"): "vim"}


def test_parse_repoquery_installed_keeps_epochs():
    installed = parse_repoquery_installed(recorded("repoquery_installed").stdout)
    assert installed == {
        (LONG_NAME, "noarch"): "1.0-1",
        ("redflag-test-epoch", "noarch"): "3:2.0-1",
        ("redflag-test-pkg", "noarch"): "1.0-1",
        ("redflag-test-sec", "noarch"): "1.0-1",
    }


def test_split_nevra():
    assert split_nevra("redflag-test-epoch-3:2.1-1.noarch") == ("redflag-test-epoch", "3:2.1-1", "noarch")
    assert split_nevra("glibc-0:2.34-60.el9.x86_64") == ("glibc", "2.34-60.el9", "x86_64")
    assert split_nevra("redflag-test-sec-1.1-1.noarch.rpm") == ("redflag-test-sec", "1.1-1", "noarch")
    with pytest.raises(ValueError):
        split_nevra("nodashes")


def test_parse_updateinfo_list_types_and_security_severity():
    refs = parse_updateinfo_list(recorded("updateinfo_list").stdout)
    assert [(r.advisory_id, r.advisory_type, r.severity, r.package_name, r.package_version) for r in refs] == [
        ("RFSA-2024:0003", "security", "critical", LONG_NAME, "1.1-1"),
        ("RFEA-2024:0004", "enhancement", "unknown", "redflag-test-epoch", "3:2.1-1"),
        ("RFBA-2024:0002", "bugfix", "unknown", "redflag-test-pkg", "1.1-1"),
        ("RFSA-2024:0001", "security", "important", "redflag-test-sec", "1.1-1"),
    ]


def test_parse_updateinfo_info_multi_line_fields():
    details = parse_updateinfo_info(recorded("updateinfo_info").stdout)
    assert set(details) == {"RFSA-2024:0001", "RFBA-2024:0002", "RFSA-2024:0003", "RFEA-2024:0004"}
    critical = details["RFSA-2024:0003"]
    assert critical.advisory_type == "security"
    assert critical.severity == "critical"
    assert critical.title == "Critical: long package security update"
    assert critical.cve_ids == ["CVE-2024-0001", "CVE-2024-0002"]
    assert critical.bug_ids == ["2001", "2002"]
    assert details["RFSA-2024:0001"].cve_ids == ["CVE-2024-12345"]
    assert details["RFSA-2024:0001"].severity == "important"
    # A non-security advisory's severity only appears in `info`.
    assert details["RFEA-2024:0004"].severity == "moderate"
    assert details["RFBA-2024:0002"].severity == "unknown"  # "Severity: None"
    assert details["RFBA-2024:0002"].cve_ids == []


def test_parse_transaction_table_dry_run():
    packages = parse_transaction_table(recorded("upgrade_assumeno").stdout)
    repository = {"arch": "noarch", "repository": "redflag-test"}
    assert packages == [
        {"name": LONG_NAME, "version": "1.1-1", **repository, "action": "upgrade"},
        {"name": "redflag-test-pkg", "version": "1.1-1", **repository, "action": "upgrade"},
        {"name": "redflag-test-dep", "version": "1.0-1", **repository, "action": "install"},
    ]


def test_parse_transaction_table_install_ignores_post_transaction_lists():
    packages = parse_transaction_table(recorded("upgrade_install").stdout)
    assert [(p["name"], p["version"], p["action"]) for p in packages] == [
        ("redflag-test-epoch", "3:2.1-1", "upgrade"),
        ("redflag-test-pkg", "1.1-1", "upgrade"),
        ("redflag-test-dep", "1.0-1", "install"),
    ]
    assert parse_transaction_table(recorded("upgrade_nothing_to_do").stdout) == []


def test_unmatched_names():
    assert unmatched_names(recorded("upgrade_partial_match").stdout) == ["redflag-test-no-such-package"]
    assert unmatched_names(recorded("upgrade_assumeno").stdout) == []


def test_parse_advisory_json_dnf5_documented_shape():
    # Not recorded (no dnf 5 on Debian 12): built from the JSON fields that
    # dnf5's doc/commands/advisory.8.rst documents.
    listed = (
        '[{"name": "FEDORA-2024-1", "type": "security", "severity": "Important",'
        ' "nevra": "curl-0:8.6.0-8.fc40.x86_64", "buildtime": 1700000000},'
        ' {"name": "FEDORA-2024-2", "type": "bugfix", "severity": "None",'
        ' "nevra": "vim-2:9.1-1.fc40.x86_64", "buildtime": 1700000000}]'
    )
    with_cve = (
        '[{"advisory_name": "FEDORA-2024-1", "advisory_type": "security",'
        ' "advisory_severity": "Important", "advisory_buildtime": 1700000000,'
        ' "nevra": "curl-0:8.6.0-8.fc40.x86_64", "references": ['
        '{"reference_id": "CVE-2024-2398", "reference_type": "cve"},'
        '{"reference_id": "2270000", "reference_type": "bugzilla"}]}]'
    )
    refs, details = parse_advisory_json(listed, with_cve)
    assert [(r.package_name, r.package_version, r.advisory_type, r.severity) for r in refs] == [
        ("curl", "8.6.0-8.fc40", "security", "important"),
        ("vim", "2:9.1-1.fc40", "bugfix", "unknown"),
    ]
    assert details["FEDORA-2024-1"].cve_ids == ["CVE-2024-2398"]
    assert parse_advisory_json("[]", "") == ([], {})


# ---------------------------------------------------------------------------
# Scanner logic on recorded outputs (dnf itself replaced)


class RecordedDnf:
    """Answers the scanner's dnf calls with recorded outputs and counts them."""

    def __init__(self, answers: dict[str, CommandOutput]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, *args: str) -> CommandOutput:
        self.calls.append(list(args))
        key = " ".join(a for a in args[:2] if not a.startswith("-"))
        return self.answers[key]


def scanner_on_recordings(
    monkeypatch, overrides: Optional[dict[str, CommandOutput]] = None
) -> tuple[DnfScanner, RecordedDnf]:
    answers = {
        "check-update": recorded("check_update"),
        "repoquery": recorded("repoquery_installed"),
        "updateinfo list": recorded("updateinfo_list"),
        "updateinfo info": recorded("updateinfo_info"),
        "upgrade": recorded("upgrade_assumeno"),
    }
    answers.update(overrides or {})
    fake = RecordedDnf(answers)
    scanner = DnfScanner(binary="dnf")
    monkeypatch.setattr(scanner, "_dnf", fake)
    monkeypatch.setattr(scanner, "is_dnf5", lambda: False)
    return scanner, fake


def test_scan_on_recordings_builds_records_in_four_calls(monkeypatch):
    scanner, fake = scanner_on_recordings(monkeypatch)
    records = {r.name: r for r in scanner.scan()}
    assert len(fake.calls) == 4
    assert fake.calls[1][:2] == ["repoquery", "--installed"]
    assert sorted(fake.calls[1][-4:]) == sorted(records)  # one query for every name

    long = records[LONG_NAME]
    assert (long.current_version, long.available_version) == ("1.0-1", "1.1-1")
    assert long.is_security and long.severity == "critical"
    assert long.cve_ids == ["CVE-2024-0001", "CVE-2024-0002"]

    epoch = records["redflag-test-epoch"]
    assert (epoch.current_version, epoch.available_version) == ("3:2.0-1", "3:2.1-1")
    assert not epoch.is_security and epoch.severity == "moderate"
    assert epoch.metadata["advisory_types"] == ["enhancement"]

    pkg = records["redflag-test-pkg"]
    assert not pkg.is_security and pkg.severity == "unknown" and pkg.cve_ids == []
    assert pkg.metadata["advisory_ids"] == ["RFBA-2024:0002"]
    assert pkg.repository == "redflag-test"


def test_scan_no_updates_is_one_call(monkeypatch):
    scanner, fake = scanner_on_recordings(monkeypatch, {"check-update": recorded("check_update_none")})
    assert scanner.scan() == []
    assert len(fake.calls) == 1


@pytest.mark.parametrize("exit_code", [1, 2, 200])
def test_scan_unexpected_exit_is_scan_error_with_output(monkeypatch, exit_code):
    broken = CommandOutput(["dnf"], exit_code, "", "Error: Failed to download metadata for repo 'x'", 0.1)
    scanner, _ = scanner_on_recordings(monkeypatch, {"check-update": broken})
    with pytest.raises(ScanError, match="Failed to download metadata"):
        scanner.scan()


def test_dry_run_interpretation_on_recordings(monkeypatch):
    scanner, _ = scanner_on_recordings(monkeypatch)
    result = scanner.dry_run(["redflag-test-pkg", LONG_NAME])
    assert result.succeeded and result.exit_code == 1
    assert result.dependencies == ["redflag-test-dep"]
    assert "Operation aborted" in result.output_tail

    for recording in ("upgrade_nonexistent", "upgrade_partial_match"):
        scanner, _ = scanner_on_recordings(monkeypatch, {"upgrade": recorded(recording)})
        failed = scanner.dry_run(["redflag-test-no-such-package", "redflag-test-sec"])
        assert not failed.succeeded and failed.exit_code == 1
        assert "No match for argument" in failed.output_tail

    scanner, _ = scanner_on_recordings(monkeypatch, {"upgrade": recorded("upgrade_nothing_to_do")})
    nothing = scanner.dry_run(["redflag-test-pkg"])
    assert nothing.succeeded and nothing.packages == [] and nothing.dependencies == []


def test_unavailable_binary():
    scanner = DnfScanner(binary="redflag-no-such-dnf")
    assert not scanner.is_available()
    with pytest.raises(ScanError):
        scanner.scan()
    result = scanner.install(["x"])
    assert not result.succeeded and result.exit_code == -1


# ---------------------------------------------------------------------------
# The real dnf against a private repository and install root

OLD = [RpmSpec("redflag-test-pkg", "1.0"), RpmSpec("redflag-test-sec", "1.0")]
NEW = [
    RpmSpec("redflag-test-pkg", "1.1", requires=("redflag-test-dep",)),
    RpmSpec("redflag-test-dep", "1.0"),
    RpmSpec("redflag-test-sec", "1.1"),
]
ADVISORIES = [
    Advisory(
        "RFSA-2024:0001", "security", "Important", "Important: redflag-test-sec security update",
        (NEW[2],), cves=("CVE-2024-12345",), bugs=(("1001", "the flaw"),),
    ),
    Advisory("RFBA-2024:0002", "bugfix", "None", "redflag-test-pkg bug fix update", (NEW[0],)),
]
# Host paths dnf or rpm would write to if they escaped the sandbox: the package state. Not /var/log/dnf.log,
# which any dnf on this machine writes (the agent's own capability probe in the end-to-end tests, which CI
# may run at the same time as this test: the SQLite and PostgreSQL passes run side by side).
HOST_STATE = ("~/.rpmdb", "/var/lib/rpm", "/var/lib/dnf", "/var/cache/dnf")


# Written by every dnf run on the machine whatever it does (its locks, its note of expired repositories, the
# rpmdb's SQLite shared memory, which a reader touches too): a directory holding one changes its mtime, so a
# folder is compared by what else it holds.
HOST_BOOKKEEPING = ("metadata_lock.pid", "download_lock.pid", "rpmdb_lock.pid", "expired_repos.json", ".rpm.lock",
                    "rpmdb.sqlite-shm")


def host_state() -> dict[str, object]:
    snapshot: dict[str, object] = {}
    for raw in HOST_STATE:
        path = os.path.expanduser(raw)
        try:
            if os.path.isdir(path):
                snapshot[path] = {entry.name: entry.stat(follow_symlinks=False).st_mtime_ns
                                  for entry in os.scandir(path) if entry.name not in HOST_BOOKKEEPING}
            else:
                snapshot[path] = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            snapshot[path] = None
    return snapshot


# Unsigned, and newer than anything in the signed repository: what an attacker would like installed.
EVIL = RpmSpec("redflag-test-pkg", "9.9")
UNSIGNED_SEC = RpmSpec("redflag-test-sec", "2.0")


@dataclasses.dataclass
class BuiltWorld:
    base: Path
    rpms: dict[str, Path]
    key: SigningKey
    evil_dir: Path  # holds evil.rpm, an unsigned redflag-test-pkg 9.9
    unsigned_repo: Path  # a repository of one unsigned redflag-test-sec 2.0

    @property
    def evil_rpm(self) -> Path:
        return self.evil_dir / "evil.rpm"


@pytest.fixture(scope="module")
def built_repository(tmp_path_factory) -> BuiltWorld:
    """Signed RPMs and the repository are built once; each test gets a fresh install root."""
    require_tools(*SYSTEM_TOOLS)
    require_root()
    base = tmp_path_factory.mktemp("dnf-world")
    key = SigningKey(base)
    try:
        rpms = build_rpms(base, OLD + NEW, signing_key=key)
    finally:
        key.close()
    make_repository(base / "repo", [rpms[spec.filename] for spec in NEW], ADVISORIES)
    unsigned = build_rpms(base / "unsigned", [EVIL, UNSIGNED_SEC])
    evil_dir = base / "evil"
    evil_dir.mkdir()
    shutil.copy2(unsigned[EVIL.filename], evil_dir / "evil.rpm")
    make_repository(base / "unsigned-repo", [unsigned[UNSIGNED_SEC.filename]], [])
    return BuiltWorld(base, rpms, key, evil_dir, base / "unsigned-repo")


@pytest.fixture
def sandbox(built_repository, tmp_path):
    built = built_repository
    world = DnfSandbox(tmp_path, signing_key=built.key)
    world.repo_dir.symlink_to(built.base / "repo")
    world.rpm_install([built.rpms[spec.filename] for spec in OLD])
    before = host_state()
    yield world
    assert host_state() == before, "dnf/rpm touched the host's own package state"


def system_test() -> None:
    require_tools(*SYSTEM_TOOLS)
    require_root()


def test_real_scan_finds_both_updates_with_advisories(sandbox, monkeypatch):
    system_test()
    calls: list[list[str]] = []
    real_run = dnf_module.run_command

    def counting_run(argv, **kwargs):
        calls.append(list(argv))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(dnf_module, "run_command", counting_run)
    scanner = DnfScanner(sandbox.dnf_options())
    assert scanner.is_available()
    calls.clear()  # is_available's own probe is not part of the scan

    records = {record.name: record for record in scanner.scan()}

    assert sorted(records) == ["redflag-test-pkg", "redflag-test-sec"]
    assert len(calls) <= 4  # bounded, not one per package
    # The resolver's answer (the native listing) names the same: the new dependency is no update.
    assert scanner.native_listing() == {"redflag-test-pkg": "1.1-1", "redflag-test-sec": "1.1-1"}

    sec = records["redflag-test-sec"]
    assert (sec.current_version, sec.available_version) == ("1.0-1", "1.1-1")
    assert sec.is_security is True
    assert sec.severity == "important"
    assert sec.cve_ids == ["CVE-2024-12345"]
    assert sec.repository == "redflag-test"
    assert sec.metadata["advisory_ids"] == ["RFSA-2024:0001"]
    assert sec.metadata["advisory_types"] == ["security"]

    pkg = records["redflag-test-pkg"]
    assert (pkg.current_version, pkg.available_version) == ("1.0-1", "1.1-1")
    assert pkg.is_security is False
    assert pkg.severity == "unknown"
    assert pkg.cve_ids == []
    assert pkg.repository == "redflag-test"
    assert pkg.metadata["advisory_ids"] == ["RFBA-2024:0002"]
    assert pkg.metadata["advisory_types"] == ["bugfix"]
    for record in records.values():
        assert record.to_dict()["package_type"] == "dnf"


def test_real_dry_run_reports_dependency_and_changes_nothing(sandbox):
    system_test()
    scanner = DnfScanner(sandbox.dnf_options())

    result = scanner.dry_run(["redflag-test-pkg"])

    assert result.succeeded, result.output_tail
    assert result.exit_code == 1  # dnf's own exit for a declined transaction
    assert "Operation aborted" in result.output_tail
    assert result.dependencies == ["redflag-test-dep"]
    by_name = {p["name"]: p for p in result.packages}
    assert by_name["redflag-test-pkg"]["version"] == "1.1-1"
    assert by_name["redflag-test-pkg"]["action"] == "upgrade"
    assert by_name["redflag-test-dep"]["action"] == "install"
    assert result.duration_seconds > 0
    assert sandbox.installed("redflag-test-pkg", "redflag-test-sec", "redflag-test-dep") == {
        "redflag-test-pkg": "1.0-1",
        "redflag-test-sec": "1.0-1",
    }


def test_real_install_upgrades(sandbox):
    system_test()
    scanner = DnfScanner(sandbox.dnf_options())

    result = scanner.install(["redflag-test-pkg", "redflag-test-sec"])

    assert result.succeeded, result.output_tail
    assert result.exit_code == 0
    assert "Complete!" in result.output_tail
    assert result.dependencies == ["redflag-test-dep"]
    assert sandbox.installed("redflag-test-pkg", "redflag-test-sec", "redflag-test-dep") == {
        "redflag-test-pkg": "1.1-1",
        "redflag-test-sec": "1.1-1",
        "redflag-test-dep": "1.0-1",
    }
    assert (sandbox.root / "usr/share/redflag-test-pkg/version").read_text().strip() == "1.1-1"
    # Nothing left to update, and the scan says so.
    assert scanner.scan() == []


def test_real_install_of_nonexistent_package_fails(sandbox):
    system_test()
    scanner = DnfScanner(sandbox.dnf_options())

    result = scanner.install(["redflag-test-no-such-package"])

    assert result.succeeded is False
    assert result.exit_code != 0
    assert "No match for argument: redflag-test-no-such-package" in result.output_tail
    assert result.packages == []
    assert sandbox.installed("redflag-test-pkg")["redflag-test-pkg"] == "1.0-1"


def test_real_dry_run_with_one_unknown_name_is_not_a_success(sandbox):
    system_test()
    scanner = DnfScanner(sandbox.dnf_options())

    result = scanner.dry_run(["redflag-test-no-such-package", "redflag-test-sec"])

    assert result.succeeded is False
    assert "No match for argument" in result.output_tail


def test_real_scan_with_unreachable_repository_raises(sandbox):
    system_test()
    (sandbox.reposdir / "broken.repo").write_text(
        f"[broken]\nname=broken\nbaseurl=file://{sandbox.base / 'no-such-repo'}\nenabled=1\ngpgcheck=0\n"
    )
    with pytest.raises(ScanError, match="exited 1"):
        DnfScanner(sandbox.dnf_options()).scan()


# ---------------------------------------------------------------------------
# Hostile names against the real dnf: refused before any process, nothing fetched or installed


def result_payloads(outbox: Outbox) -> list[dict]:
    return [item.payload for item in outbox.pending() if item.kind == KIND_COMMAND_RESULT]


def test_real_dnf_never_sees_a_hostile_name(sandbox, built_repository, tmp_path, monkeypatch):
    """Through the executor (a signed command, as the server sends it) and the scanner itself."""
    system_test()
    shims = ToolShims(tmp_path / "shims", ["dnf"], monkeypatch)
    marker = tmp_path / "pwned"
    # "evil.rpm" alone would be this file: dnf reads a name ending in .rpm as a file in its working directory.
    monkeypatch.chdir(built_repository.evil_dir)
    signer = Signer()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    scanner = DnfScanner(sandbox.dnf_options())
    executor = CommandExecutor(agent_id=AGENT_ID, signing_keys=[signer.public], outbox=outbox,
                               ledger=ExecutedLedger(tmp_path / "executed.sqlite3"), scanners={"dnf": scanner},
                               system_facts=dict, record=lambda event: None)
    with FileServer(built_repository.evil_dir) as files:
        names = hostile_names(marker=marker, url=f"{files.url}/evil.rpm", package_file=built_repository.evil_rpm)
        names += ["evil.rpm", "redflag-test-*", "redflag-test-pkg-9.9-1.noarch.rpm"]
        refuse_every_name(names=names, valid="redflag-test-sec", package_type="dnf", signer=signer,
                          executor=executor, scanner=scanner, outbox=outbox)
        assert shims.started() == []  # no dnf process at all
        assert files.requests == []  # nothing was fetched
        assert not marker.exists()
        assert sandbox.installed("redflag-test-pkg", "redflag-test-sec") == {
            "redflag-test-pkg": "1.0-1", "redflag-test-sec": "1.0-1"}

        # The same route with a valid name reaches the real dnf: after "--", with signature checks forced.
        install = signer.command("install_updates", {"package_type": "dnf", "packages": ["redflag-test-sec"]})
        assert executor.handle(install) == "succeeded", result_payloads(outbox)[-1]["output"]
    # The upgrade, then the scan the agent runs after a successful install (its own dnf processes).
    (started,) = [line for line in shims.started_by("dnf") if " upgrade " in line]
    assert started.endswith(" upgrade -y --setopt=gpgcheck=1 --setopt=*.gpgcheck=1 --setopt=localpkg_gpgcheck=1 "
                            "-- redflag-test-sec")
    assert sandbox.installed("redflag-test-pkg", "redflag-test-sec") == {
        "redflag-test-pkg": "1.0-1", "redflag-test-sec": "1.1-1"}


def test_dnf_refuses_an_unsigned_package_file_or_url_even_past_the_name_check(sandbox, built_repository):
    """The second line: were a path or URL ever to get past the grammar, dnf's signature check stops it.

    ``_install`` is called directly to skip Scanner.check_names on purpose. The last step shows what
    the forced options prevent: the same dnf, without localpkg_gpgcheck, installs the unsigned file.
    """
    system_test()
    scanner = DnfScanner(sandbox.dnf_options())
    with FileServer(built_repository.evil_dir) as files:
        for spec in (f"{files.url}/evil.rpm", str(built_repository.evil_rpm)):
            result = scanner._install([spec])
            assert not result.succeeded, result.output_tail
            assert "is not signed" in result.output_tail
        assert files.requests == ["/evil.rpm"]  # dnf did download it: the signature check alone stopped it
    assert sandbox.installed("redflag-test-pkg") == {"redflag-test-pkg": "1.0-1"}

    unchecked = run_command(["dnf", *sandbox.dnf_options(), "upgrade", "-y", "--", str(built_repository.evil_rpm)])
    assert unchecked.exit_code == 0, unchecked.stdout + unchecked.stderr
    assert sandbox.installed("redflag-test-pkg") == {"redflag-test-pkg": "9.9-1"}


def test_a_repository_that_says_gpgcheck_0_is_checked_anyway(sandbox, built_repository):
    """A .repo file with gpgcheck=0 serving an unsigned, newer package: the agent's install refuses it."""
    system_test()
    (sandbox.reposdir / "unsigned.repo").write_text(
        f"[unsigned]\nname=unsigned\nbaseurl=file://{built_repository.unsigned_repo}\nenabled=1\ngpgcheck=0\n"
        "metadata_expire=0\n")
    scanner = DnfScanner(sandbox.dnf_options())
    assert {record.name: record.available_version for record in scanner.scan()}["redflag-test-sec"] == "2.0-1"

    result = scanner.install(["redflag-test-sec"])

    assert not result.succeeded
    assert "is not signed" in result.output_tail
    assert sandbox.installed("redflag-test-sec") == {"redflag-test-sec": "1.0-1"}


# ---------------------------------------------------------------------------
# The hard cases against the real dnf: an obsoleting package with a security advisory, and one
# version offered as noarch and x86_64. The scan must say what `dnf upgrade` would do.


@pytest.fixture(scope="module")
def hard_repository(tmp_path_factory) -> BuiltWorld:
    require_tools(*SYSTEM_TOOLS)
    require_root()
    base = tmp_path_factory.mktemp("dnf-hard")
    key = SigningKey(base)
    try:
        rpms = build_rpms(base, HARD_OLD + HARD_NEW, signing_key=key)
    finally:
        key.close()
    make_repository(base / "repo", [rpms[spec.filename] for spec in HARD_NEW], HARD_ADVISORIES)
    return BuiltWorld(base, rpms, key, base, base / "repo")


@pytest.fixture
def hard_sandbox(hard_repository, tmp_path):
    world = DnfSandbox(tmp_path, signing_key=hard_repository.key)
    world.repo_dir.symlink_to(hard_repository.base / "repo")
    world.rpm_install([hard_repository.rpms[spec.filename] for spec in HARD_OLD])
    before = host_state()
    yield world
    assert host_state() == before, "dnf/rpm touched the host's own package state"


def real_dnf(sandbox: DnfSandbox, *args: str) -> CommandOutput:
    return run_command(["dnf", *sandbox.dnf_options(), *args])


def test_real_scan_reports_what_the_upgrade_transaction_would_do(hard_sandbox):
    system_test()
    scanner = DnfScanner(hard_sandbox.dnf_options())
    records = {record.name: record for record in scanner.scan()}

    # check-update lists five rows; dnf upgrade applies three: these.
    listed = real_dnf(hard_sandbox, "check-update")
    assert listed.exit_code == 100
    assert "redflag-test-multi.x86_64" in listed.stdout and "Obsoleting Packages" in listed.stdout
    transaction = real_dnf(hard_sandbox, "upgrade", "--assumeno")
    assert "Operation aborted" in transaction.stdout + transaction.stderr
    assert {(row["name"], row["arch"], row["version"]) for row in parse_transaction_table(transaction.stdout)} == {
        (name, record.metadata["arch"], record.available_version) for name, record in records.items()}
    assert sorted(records) == ["redflag-test-multi", "redflag-test-multix", "redflag-test-new"]

    multi, multix, new = records["redflag-test-multi"], records["redflag-test-multix"], records["redflag-test-new"]
    assert (multi.current_version, multi.available_version, multi.metadata["arch"]) == ("1.0-1", "1.1-1", "noarch")
    # Installed as x86_64, upgraded to the noarch build: dnf's choice, not ours.
    assert (multix.current_version, multix.available_version, multix.metadata["arch"]) == ("1.0-1", "1.1-1", "noarch")
    assert not multi.is_security and not multix.is_security

    assert (new.current_version, new.available_version) == ("", "2.0-1")
    assert new.metadata["replaces"] == ["redflag-test-old.noarch 1.0-1"]
    assert new.repository == "redflag-test"
    assert new.is_security and new.severity == "critical"
    # The security flag agrees with dnf's own security filter, which installs the new name.
    security_only = real_dnf(hard_sandbox, "upgrade", "--security", "--assumeno")
    assert [row["name"] for row in parse_transaction_table(security_only.stdout)] == ["redflag-test-new"]
    critical = real_dnf(hard_sandbox, "check-update", "--sec-severity=Critical")
    assert "redflag-test-new.noarch" in critical.stdout

    # The native listing (the resolver's answer) agrees with the scan.
    assert scanner.native_listing() == {name: record.available_version for name, record in records.items()}


def test_real_install_of_the_reported_names_does_what_the_scan_said(hard_sandbox):
    system_test()
    scanner = DnfScanner(hard_sandbox.dnf_options())
    names = sorted(record.name for record in scanner.scan())

    result = scanner.install(names)

    assert result.succeeded, result.output_tail
    installed = run_command(["rpm", "--root", str(hard_sandbox.root), "-qa", "--qf",
                             "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}\\n", "redflag-test-*"])
    assert sorted(installed.stdout.splitlines()) == [
        "redflag-test-multi 1.1-1 noarch", "redflag-test-multix 1.1-1 noarch", "redflag-test-new 2.0-1 noarch"]
    assert scanner.scan() == []
    assert scanner.native_listing() == {}
