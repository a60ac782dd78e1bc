"""A command's report and result survive a server outage and an agent restart, and arrive once.

The real agent runs as a subprocess against the loopback stub server, which
hands out commands signed with its key k1 (pinned by the agent at enrollment).
"""

from __future__ import annotations

from agent_client.machine import machine_id_hash
from agent_client.outbox import KIND_COMMAND_RESULT, KIND_SYSTEM_REPORT, Outbox
from tests.agent.stub_server import enrolled_config
from tests.agent.test_cli import agent


def test_results_wait_out_an_outage_and_arrive_exactly_once(stub, config_path):
    config_path.parent.mkdir(parents=True)
    enrolled_config(stub, config_path, machine_id=machine_id_hash())
    command = stub.sign_command("scan_system")
    stub.commands.append(command)
    # The check-in works, then the server fails before the report and result are stored.
    stub.script("reports/system", 503, {"error": {"code": "unavailable", "message": "db down"}}, times=20,
                headers={"Retry-After": "0"})

    first = agent(config_path, "run", "--once")
    assert first.returncode == 1 and "outbox not flushed" in first.stderr
    kinds = [item.kind for item in Outbox.beside(config_path).pending()]
    assert KIND_SYSTEM_REPORT in kinds and KIND_COMMAND_RESULT in kinds
    assert stub.results == {}

    # The server goes away entirely; the agent restarts (a new process) and keeps everything.
    stub.scripts.clear()
    port = stub.port
    stub.stop()
    down = agent(config_path, "run", "--once")
    assert down.returncode == 1
    assert [i.kind for i in Outbox.beside(config_path).pending()][:2] == [KIND_SYSTEM_REPORT, KIND_COMMAND_RESULT]

    # Back up on the same address; it even hands the same command out again.
    stub.port = port
    stub.start()
    stub.commands.append(command)
    back = agent(config_path, "run", "--once")
    assert back.returncode == 0, back.stderr

    assert list(stub.results) == [command["id"]] and len(stub.results[command["id"]]) == 1
    assert stub.results[command["id"]][0]["status"] == "succeeded"
    system_reports = [body for bodies in stub.reports.values() for body in bodies]
    assert len(system_reports) == 1 and system_reports[0]["hostname"]
    # The repeated command was refused as a replay, not run again, and the refusal was reported.
    refusals = [event for event in stub.events.values() if event["event_type"] == "security_violation"]
    assert [event["metadata"]["reason"] for event in refusals] == ["replayed"]
    assert Outbox.beside(config_path).count() == 0
