"""The agent's command executor: verification before anything runs, at most once, results queued."""

from __future__ import annotations

import base64
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent_client.executor import CommandExecutor, ExecutedLedger, system_report_body
from agent_client.outbox import KIND_COMMAND_RESULT, KIND_SYSTEM_REPORT, KIND_UPDATES_REPORT, Outbox
from agent_client.protocol import command_signing_bytes, key_endorsement_bytes, package_name_problem
from agent_client.scanners.base import OperationResult, ScanError, Scanner, UpdateRecord
from agent_client.selfupdate import UpdateRefused
from tests.agent.test_winget import recorded, scanner_with

AGENT_ID = str(uuid.uuid4())


class Signer:
    def __init__(self, key_id: str = "k1"):
        self.key_id = key_id
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = {"key_id": key_id, "public_key": base64.b64encode(raw).decode()}

    def command(self, command_type: str, params=None, *, agent_id: str = AGENT_ID, lifetime: int = 3600) -> dict:
        now = int(time.time())
        command = {"id": str(uuid.uuid4()), "agent_id": agent_id, "type": command_type, "params": params or {},
                   "issued_at": now, "expires_at": now + lifetime, "nonce": uuid.uuid4().hex, "key_id": self.key_id}
        signed = command_signing_bytes(agent_id=agent_id, command_id=command["id"], command_type=command_type,
                                       params=command["params"], issued_at=now, expires_at=now + lifetime,
                                       nonce=command["nonce"])
        command["signature"] = base64.b64encode(self.private.sign(signed)).decode()
        return command


class RecordingScanner(Scanner):
    """A scanner with canned answers that records what it was asked to do."""

    package_type = "apt"

    def __init__(self, *, fail_install: bool = False, scan_error: str = ""):
        self.calls: list[tuple] = []
        self.fail_install = fail_install
        self.scan_error = scan_error

    def is_available(self) -> bool:
        return True

    def scan(self):
        self.calls.append(("scan",))
        if self.scan_error:
            raise ScanError(self.scan_error)
        return [UpdateRecord("apt", "openssl", "3.0.11", "3.0.13", severity="important", is_security=True,
                             repository="Debian-Security/bookworm-security", cve_ids=["CVE-2024-0727"])]

    def _dry_run(self, names):
        self.calls.append(("dry_run", tuple(names)))
        return OperationResult(True, 0, "Inst openssl ...", 0.5, dependencies=["libssl3"],
                               packages=[{"name": "openssl", "version": "3.0.13"}])

    def _install(self, names):
        self.calls.append(("install", tuple(names)))
        if self.fail_install:
            return OperationResult(False, 100, "E: Unable to fetch some archives", 2.0)
        return OperationResult(True, 0, "Setting up openssl (3.0.13) ...", 9.0)


@pytest.fixture
def signer():
    return Signer()


@pytest.fixture
def setup(tmp_path, signer):
    def build(scanner=None, **overrides):
        events, heartbeat = [], []
        scanner = scanner or RecordingScanner()
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        options = dict(agent_id=AGENT_ID, signing_keys=[signer.public], outbox=outbox,
                       ledger=ExecutedLedger(tmp_path / "executed.sqlite3"), scanners={"apt": scanner},
                       system_facts=lambda: {"hostname": "h", "reboot": {"required": False, "reason": ""}},
                       record=events.append, set_heartbeat=heartbeat.append)
        options.update(overrides)
        return CommandExecutor(**options), scanner, outbox, events, heartbeat
    return build


def queued(outbox):
    return [(item.kind, item.payload) for item in outbox.pending()]


def test_a_scan_queues_its_report_before_its_result(setup, signer):
    executor, scanner, outbox, events, _ = setup()
    command = signer.command("scan_updates", {"package_type": "apt"})
    assert executor.handle(command) == "succeeded"
    (report_kind, report), (result_kind, result) = queued(outbox)
    assert (report_kind, result_kind) == (KIND_UPDATES_REPORT, KIND_COMMAND_RESULT)
    assert report["package_type"] == "apt" and len(report["report_id"]) == 32
    assert report["updates"] == [{"name": "openssl", "current_version": "3.0.11", "available_version": "3.0.13",
                                  "severity": "important", "is_security": True,
                                  "repository": "Debian-Security/bookworm-security", "size_bytes": None,
                                  "cve_ids": ["CVE-2024-0727"], "kb_ids": [], "metadata": {}}]
    assert result["command_id"] == command["id"] and result["status"] == "succeeded"
    assert result["details"]["report_id"] == report["report_id"]
    assert events == []


@pytest.mark.parametrize("tamper, reason", [
    (lambda c: c["params"].update(package_type="dnf"), "bad_signature"),
    (lambda c: c.update(type="reboot"), "bad_signature"),
    (lambda c: c.update(expires_at=c["expires_at"] + 1), "bad_signature"),
    (lambda c: c.update(signature=base64.b64encode(b"x" * 64).decode()), "bad_signature"),
    (lambda c: c.update(signature="not base64!"), "bad_signature"),
    (lambda c: c.update(key_id="k9"), "unknown_key"),
    (lambda c: c.pop("nonce"), "malformed"),
    (lambda c: c.update(issued_at="yesterday"), "malformed"),
])
def test_a_tampered_command_never_runs(setup, signer, tamper, reason):
    executor, scanner, outbox, events, _ = setup()
    command = signer.command("scan_updates", {"package_type": "apt"})
    tamper(command)
    assert executor.handle(command) is None
    assert scanner.calls == [] and queued(outbox) == []
    assert [(e["event_type"], e["metadata"]["reason"]) for e in events] == [("security_violation", reason)]


def test_a_command_for_another_agent_or_expired_never_runs(setup, signer):
    executor, scanner, outbox, events, _ = setup()
    assert executor.handle(signer.command("reboot", agent_id=str(uuid.uuid4()))) is None
    assert executor.handle(signer.command("scan_updates", {"package_type": "apt"}, lifetime=-1)) is None
    assert [e["metadata"]["reason"] for e in events] == ["wrong_agent", "expired"]
    assert scanner.calls == []


def test_a_key_from_another_signer_is_refused(setup):
    executor, scanner, _, events, _ = setup()
    impostor = Signer(key_id="k1")  # same key id, different key
    assert executor.handle(impostor.command("scan_updates", {"package_type": "apt"})) is None
    assert events[0]["metadata"]["reason"] == "bad_signature" and scanner.calls == []


def test_a_command_runs_at_most_once_even_across_restarts(setup, signer):
    executor, scanner, _, events, _ = setup()
    command = signer.command("install_updates", {"package_type": "apt", "packages": ["openssl"]})
    assert executor.handle(command) == "succeeded"
    assert executor.handle(command) is None
    restarted, _, _, restarted_events, _ = setup(scanner=scanner)  # new ledger object, same file
    assert restarted.handle(command) is None
    assert scanner.calls == [("install", ("openssl",)), ("scan",)]  # the install, then its rescan
    assert [e["metadata"]["reason"] for e in events + restarted_events] == ["replayed", "replayed"]


def test_dry_run_reports_dependencies_and_install_failure_is_a_failure(setup, signer):
    executor, scanner, outbox, _, _ = setup(scanner=RecordingScanner(fail_install=True))
    executor.handle(signer.command("dry_run_update", {"package_type": "apt", "packages": ["openssl"]}))
    executor.handle(signer.command("install_updates", {"package_type": "apt", "packages": ["openssl"]}))
    (_, dry_run), (_, install) = queued(outbox)  # no rescan after a failed install: the schedule's scan follows
    assert dry_run["status"] == "succeeded" and dry_run["dependencies"] == ["libssl3"] and dry_run["exit_code"] == 0
    assert install["status"] == "failed" and install["exit_code"] == 100
    assert "Unable to fetch" in install["output"]


@pytest.mark.parametrize("command_type", ["dry_run_update", "install_updates", "confirm_dependencies"])
def test_refused_package_names_are_a_failed_result_with_the_reason_and_nothing_runs(setup, signer, command_type):
    executor, scanner, outbox, events, _ = setup()
    assert executor.handle(signer.command(command_type, {"package_type": "apt",
                                                         "packages": ["openssl", "foo;rm -rf /"]})) == "failed"
    # Not a list of names (a string must not become its letters): no names.
    assert executor.handle(signer.command(command_type, {"package_type": "apt", "packages": "openssl"})) == "failed"
    (_, bad_name), (_, no_names) = queued(outbox)
    assert bad_name["output"] == ("refused: invalid apt package name(s): 'foo;rm -rf /' (not a Debian package name: "
                                  "lowercase letters, digits, '+', '.', '-' (not last), an optional ':arch'); "
                                  "nothing was run")
    assert no_names["output"] == "refused: no apt package names given; nothing was run"
    assert scanner.calls == [] and events == []


def test_scan_failure_and_unknown_types_are_failed_results(setup, signer):
    executor, _, outbox, _, _ = setup(scanner=RecordingScanner(scan_error="apt-get update failed: 404"))
    executor.handle(signer.command("scan_updates", {"package_type": "apt"}))
    executor.handle(signer.command("scan_updates", {"package_type": "winget"}))
    executor.handle(signer.command("format_disk", {"device": "/dev/sda"}))
    results = [payload for _, payload in queued(outbox)]
    assert [r["status"] for r in results] == ["failed", "failed", "failed"]
    assert "apt-get update failed" in results[0]["output"]
    assert "no scanner for package type 'winget'" in results[1]["output"]
    assert "does not support 'format_disk'" in results[2]["output"]


def test_heartbeat_commands_switch_the_local_state(setup, signer):
    executor, _, outbox, _, heartbeat = setup()
    executor.handle(signer.command("enable_heartbeat", {"duration_minutes": 30}))
    executor.handle(signer.command("disable_heartbeat"))
    assert heartbeat[0] is not None and 29 * 60 < heartbeat[0].timestamp() - time.time() <= 30 * 60
    assert heartbeat[1] is None


def test_system_scan_queues_a_system_report(setup, signer):
    facts = {"hostname": "web-01", "os": {"name": "Debian GNU/Linux", "version": "12", "kernel": "6.1.0",
                                          "arch": "x86_64"},
             "cpu": {"model": "Xeon", "logical_cores": 4}, "memory": {"total_bytes": 1000, "available_bytes": 400},
             "disks": [{"mountpoint": "/", "device": "/dev/vda1", "fstype": "ext4", "total_bytes": 10,
                        "used_bytes": 4, "free_bytes": 6, "percent": 40.0}],
             "boot_time": 1700000000.0, "uptime_seconds": 60,
             "ip_addresses": [{"interface": "eth0", "family": "ipv4", "address": "192.0.2.4"}],
             "reboot": {"required": True, "reason": "reboot-required flag set by linux-image", "packages": []}}
    executor, _, outbox, _, _ = setup(system_facts=lambda: facts)
    executor.handle(signer.command("scan_system"))
    (kind, report), _ = queued(outbox)
    assert kind == KIND_SYSTEM_REPORT and report == system_report_body(facts)
    assert report["memory_used_bytes"] == 600 and report["ip_addresses"] == ["192.0.2.4"]
    assert report["reboot_required"] is True and report["boot_time"].startswith("2023-11-14T22:13:20")


def endorse(old: Signer, new: Signer) -> dict:
    signed = key_endorsement_bytes(key_id=new.key_id, public_key=new.public["public_key"])
    return {**new.public, "endorsed_by": old.key_id, "endorsement": base64.b64encode(old.private.sign(signed)).decode()}


def test_a_rotated_key_is_pinned_through_its_endorsement(setup, signer):
    rotated, third, stranger = Signer("k2"), Signer("k3"), Signer("k4")
    offered = [signer.public, endorse(rotated, third), endorse(signer, rotated), stranger.public]
    saved = []
    executor, scanner, _, events, _ = setup(fetch_keys=lambda: offered, save_keys=saved.append)
    assert executor.handle(third.command("scan_updates", {"package_type": "apt"})) == "succeeded"
    assert [key["key_id"] for key in saved[-1]] == ["k1", "k2", "k3"]  # a chain k1 -> k2 -> k3
    assert [e["event_type"] for e in events] == ["config_changed", "config_changed"]
    # A key nobody pinned endorsed stays refused.
    assert executor.handle(stranger.command("reboot")) is None
    assert events[-1]["metadata"]["reason"] == "unknown_key"


def test_a_forged_endorsement_is_not_pinned(setup, signer):
    rotated, impostor = Signer("k2"), Signer("k1")
    forged = endorse(impostor, rotated)  # claims k1 endorsed it, signed by another key
    executor, scanner, _, events, _ = setup(fetch_keys=lambda: [signer.public, forged])
    assert executor.handle(rotated.command("reboot")) is None
    assert events[-1]["metadata"]["reason"] == "unknown_key" and scanner.calls == []


def test_a_refused_update_is_a_security_violation_and_a_failed_result(setup, signer):
    class RefusingUpdater:
        def apply(self, command_id, params):
            raise UpdateRefused("downgrade", "0.1.22 is older than 0.1.23")

    executor, _, outbox, events, _ = setup(self_updater=RefusingUpdater())
    assert executor.handle(signer.command("update_agent", {"version": "0.1.22"})) == "failed"
    (kind, result), = queued(outbox)
    assert kind == KIND_COMMAND_RESULT and "update refused (downgrade)" in result["output"]
    assert [(e["event_type"], e["metadata"]["reason"]) for e in events] == [("security_violation", "downgrade")]


# -- scan reports never carry a name the server would refuse -------------------------------


class CannedScanner(RecordingScanner):
    def __init__(self, records, not_checked=(), package_type="apt"):
        super().__init__()
        self.records, self.last_not_checked, self.package_type = records, list(not_checked), package_type

    def scan(self):
        return list(self.records)


def scan_report(setup, signer, scanner) -> dict:
    executor, _, outbox, _, _ = setup(scanners={scanner.package_type: scanner})
    assert executor.handle(signer.command("scan_updates", {"package_type": scanner.package_type})) == "succeeded"
    report, result = (payload for _, payload in queued(outbox))
    assert result["details"]["updates"] == len(report["updates"])
    return report


def test_a_scanned_name_the_server_would_refuse_is_not_checked_never_an_update(setup, signer):
    def record(name):
        return UpdateRecord("apt", name, "1.0", "1.1")

    scanner = CannedScanner([record("openssl"), record("-oAPT::Get::Trivial-Only=false"), record("openssl"),
                             record("bad\nname"), record("x" * 300), record("openssh-server-"), record("vim")],
                            not_checked=[{"name": "held-thing", "reason": "r" * 400}])

    report = scan_report(setup, signer, scanner)

    assert [update["name"] for update in report["updates"]] == ["openssl", "vim"]
    grammar = "not a Debian package name: lowercase letters, digits, '+', '.', '-' (not last), an optional ':arch'"
    assert report["not_checked"][0] == "held-thing: " + "r" * 243
    assert report["not_checked"][1:4] == [
        f"-oAPT::Get::Trivial-Only=false: not reported: {grammar}",
        "openssl: not reported: reported twice by one scan",
        f"'bad\\nname': not reported: {grammar}",
    ]
    assert report["not_checked"][5] == f"openssh-server-: not reported: {grammar}"
    assert report["not_checked"][4].startswith("'xxx") and report["not_checked"][4].endswith(
        "a package name has 1 to 255 characters")
    assert all(len(line) <= 255 and line.isprintable() for line in report["not_checked"])


def test_recorded_winget_output_with_an_id_the_grammar_refuses(setup, signer, monkeypatch):
    """Real winget output (recorded/) lists "IDMComputerSolutions,Inc.UltraEdit": a comma is not in the winget
    grammar, so the server would refuse the whole report; it is not checked instead."""
    scanner, _ = scanner_with(recorded("winget_upgrade_truncated_no_source.txt"))
    monkeypatch.setattr(scanner, "is_available", lambda: True)

    report = scan_report(setup, signer, scanner)

    names = [update["name"] for update in report["updates"]]
    assert names == ["Mozilla.Firefox", "ElectronicArts.EADesktop", "Microsoft.Teams"]
    assert all(package_name_problem("winget", name) is None for name in names)
    # Two SDKs each share an Id: four distinct not-checked lines (test_winget.py), then the refused name.
    shared = report["not_checked"][:4]
    assert [line.split(":")[0] for line in shared] == ["Microsoft.WindowsSDK"] * 2 + ["Microsoft.DotNet.SDK.3_1"] * 2
    assert all("2 installed packages share this Id; not reported" in line for line in shared)
    assert len(set(shared)) == 4
    assert report["not_checked"][4:] == [
        "IDMComputerSolutions,Inc.UltraEdit: not reported: not a winget package id: Publisher.Package (letters, "
        "digits, '_', '+', '-') or a 12-character Store id"]
