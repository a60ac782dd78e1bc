"""``scan --verify`` and the agent's verified scans (scanners/verify.py).

The comparison itself on plain values; then the real dnf in a private install root with a
createrepo_c repository (tests/agent/dnf_fixtures/sandbox.py): its scan and its own listing
agree, and a scanner that drops a row - a parser bug, made here by a subclass of the real
scanner - is caught by the CLI (printed, exit 1) and by the agent after a signed scan command
that asks for ``verify`` (a warning event). No Django here: this file also runs under Python 3.9.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_client import cli
from agent_client.executor import CommandExecutor, ExecutedLedger
from agent_client.outbox import Outbox
from agent_client.protocol import event_metadata_problem
from agent_client.scanners.base import Scanner, UpdateRecord
from agent_client.scanners.dnf import DnfScanner
from agent_client.scanners.verify import Disagreement, compare, disagreement_event, verify_scan
from tests.agent.conftest import require_root, require_tools
from tests.agent.dnf_fixtures.sandbox import DnfSandbox, RpmSpec, build_rpms, make_repository
from tests.agent.test_executor import AGENT_ID, Signer

OLD = [RpmSpec("redflag-verify-a", "1.0"), RpmSpec("redflag-verify-b", "2.0")]
NEW = [RpmSpec("redflag-verify-a", "1.1"), RpmSpec("redflag-verify-b", "2.1")]


def record(name: str, available: str) -> UpdateRecord:
    return UpdateRecord("dnf", name, "0", available)


# --- the comparison --------------------------------------------------------------------------------------


def test_compare_names_every_difference_and_nothing_else():
    records = [record("same", "1.1"), record("only-scanned", "2.0"), record("other-version", "3.1")]
    listing = {"same": "1.1", "only-listed": "4.0", "other-version": "3.2"}
    assert compare(records, listing) == [
        Disagreement("only-listed", None, "4.0"),
        Disagreement("only-scanned", "2.0", None),
        Disagreement("other-version", "3.1", "3.2"),
    ]
    assert compare(records[:1], {"same": "1.1"}) == []


class NoListing(Scanner):
    package_type = "winget"


def test_a_scanner_without_a_native_listing_is_not_verified_rather_than_agreeing():
    verification = verify_scan(NoListing(), [])
    assert verification.unverified == "winget has no native listing" and verification.disagreements == []
    assert verification.summary() == "not verified: winget has no native listing"


def test_the_warning_event_fits_the_servers_metadata_caps():
    verification = verify_scan(NoListing(), [])
    verification.unverified = ""
    verification.disagreements = [Disagreement("p" * 255, "1" * 255, None) for _ in range(500)]
    event = disagreement_event(verification)
    assert (event["event_type"], event["event_subtype"], event["severity"]) == ("agent_scan", "warning", "warning")
    assert event["metadata"]["disagreements"] == 500 and len(event["metadata"]["packages"]) == 20
    assert event_metadata_problem(event["metadata"]) is None


# --- against the real dnf ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rpms(tmp_path_factory) -> dict[str, Path]:
    require_tools("dnf", "rpm", "rpmbuild", "createrepo_c")
    require_root()
    return build_rpms(tmp_path_factory.mktemp("verify-rpms"), OLD + NEW)


@pytest.fixture
def dnf_options(rpms, tmp_path) -> list[str]:
    """An install root with the old versions and a repository with the new ones (unsigned: only scanned)."""
    sandbox = DnfSandbox(tmp_path)
    make_repository(sandbox.repo_dir, [rpms[spec.filename] for spec in NEW], [])
    sandbox.rpm_install([rpms[spec.filename] for spec in OLD])
    return sandbox.dnf_options()


class RowDroppingDnf(DnfScanner):
    """The real scanner with a parser bug: it loses the last row of every scan."""

    def scan(self) -> list[UpdateRecord]:
        return super().scan()[:-1]


def test_real_dnf_scan_agrees_with_dnfs_own_listing(dnf_options):
    scanner = DnfScanner(dnf_options)
    records = scanner.scan()
    assert sorted(r.name for r in records) == ["redflag-verify-a", "redflag-verify-b"]
    verification = verify_scan(scanner, records)
    assert verification.summary() == "agrees with the tool's own listing"


def test_scan_verify_prints_nothing_more_when_they_agree(dnf_options, config_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_scanners", lambda state_dir: {"dnf": DnfScanner(dnf_options)})
    assert cli.main(["--config", str(config_path), "scan", "--type", "dnf", "--verify"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "dnf: 2 updates", "  redflag-verify-a  1.0-1 -> 1.1-1", "  redflag-verify-b  2.0-1 -> 2.1-1"]


def test_scan_verify_prints_the_row_a_scanner_lost_and_fails(dnf_options, config_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_scanners", lambda state_dir: {"dnf": RowDroppingDnf(dnf_options)})
    assert cli.main(["--config", str(config_path), "scan", "--type", "dnf", "--verify"]) == 1
    output = capsys.readouterr()
    assert output.out.splitlines()[-2:] == [
        "dnf: the scan disagrees with the tool's own listing on 1 package(s):",
        "  redflag-verify-b: the tool lists 2.1-1, the scan missed it",
    ]
    assert "the scan disagrees with the tool's own listing for dnf" in output.err

    assert cli.main(["--config", str(config_path), "scan", "--type", "dnf", "--verify", "--json"]) == 1
    verified = json.loads(capsys.readouterr().out)["verify"]["dnf"]
    assert verified["disagreements"] == [{"name": "redflag-verify-b", "scanned": None, "native": "2.1-1"}]


def test_a_verified_scan_that_disagrees_becomes_a_warning_event(dnf_options, tmp_path):
    signer = Signer()
    events: list[dict] = []
    executor = CommandExecutor(agent_id=AGENT_ID, signing_keys=[signer.public], outbox=Outbox(tmp_path / "o.sqlite3"),
                               ledger=ExecutedLedger(tmp_path / "executed.sqlite3"),
                               scanners={"dnf": RowDroppingDnf(dnf_options)}, system_facts=dict,
                               record=events.append)

    status, _, details, reports = executor.run(signer.command("scan_updates", {"package_type": "dnf"}))
    assert status == "succeeded" and "verify" not in details["details"] and events == []  # not asked

    status, _, details, reports = executor.run(signer.command("scan_updates", {"package_type": "dnf",
                                                                               "verify": True}))
    assert status == "succeeded"  # the scan's report still goes out: the warning sits beside it
    assert [update["name"] for update in reports[0][2]["updates"]] == ["redflag-verify-a"]
    assert details["details"]["verify"] == "disagrees with the tool's own listing on 1 package(s)"
    (event,) = events
    assert (event["event_type"], event["severity"]) == ("agent_scan", "warning")
    assert event["metadata"]["packages"] == [{"name": "redflag-verify-b", "scanned": None, "native": "2.1-1"}]
    assert "redflag-verify-b: the tool lists 2.1-1, the scan missed it" in event["message"]
