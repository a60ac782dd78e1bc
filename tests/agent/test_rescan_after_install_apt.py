"""After an install the agent rescans at once: the real executor, the real AptScanner and the real apt and
dpkg of this machine, on the private repository of tests/agent/test_apt.py (same fixtures, same clean-up).
"""

from __future__ import annotations

from agent_client.executor import CommandExecutor, ExecutedLedger
from agent_client.outbox import KIND_COMMAND_RESULT, KIND_UPDATES_REPORT, Outbox
from tests.agent.conftest import require_root, require_tools
from tests.agent.test_apt import DEP, HELD, PKG, SEC, installed_version, machine, repo  # noqa: F401  (fixtures)
from tests.agent.test_executor import AGENT_ID, Signer


def test_the_install_result_is_followed_by_a_scan_of_the_new_state(machine, tmp_path):  # noqa: F811
    require_tools("apt-get", "dpkg-query", "dpkg-scanpackages")
    require_root()
    signer = Signer()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    executor = CommandExecutor(agent_id=AGENT_ID, signing_keys=[signer.public], outbox=outbox,
                               ledger=ExecutedLedger(tmp_path / "executed.sqlite3"),
                               scanners={"apt": machine.scanner()}, system_facts=dict, record=lambda event: None)
    install = signer.command("install_updates", {"package_type": "apt", "packages": [PKG], "dependencies": []})

    assert executor.handle(install) == "succeeded"

    assert installed_version(PKG) == "1.1" and installed_version(DEP) == "1.0"
    (result_kind, result), (report_kind, report) = [(item.kind, item.payload) for item in outbox.pending()]
    assert result_kind == KIND_COMMAND_RESULT and result["command_id"] == install["id"]
    assert result["dependencies"] == [DEP]
    # The report that follows is the machine after the install: PKG is no longer pending, the rest is.
    assert report_kind == KIND_UPDATES_REPORT and report["package_type"] == "apt"
    assert sorted(row["name"] for row in report["updates"]) == [HELD, SEC]
