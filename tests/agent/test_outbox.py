"""The durable outbox: written before sending, removed on acknowledgement, capped, in order.

The durability tests run the real run-loop cycle against the loopback stub
server, stopping and restarting it on the same port.
"""

from __future__ import annotations

import random
import stat
import threading
from typing import Any

import pytest

from agent_client import config as config_module
from agent_client.events import AGENT_SCAN, make_event
from agent_client.outbox import (
    KIND_COMMAND_RESULT,
    KIND_EVENT,
    Channel,
    Outbox,
    OutboxError,
    describe,
)
from agent_client.runner import Runner
from agent_client.transport import Client, RetryPolicy
from tests.agent.stub_server import TEST_MACHINE_ID, StubServer, enrolled_config


def event(number: int) -> dict[str, Any]:
    return make_event(AGENT_SCAN, "failed", f"scan {number} failed", severity="error", metadata={"n": number})


@pytest.fixture
def outbox(tmp_path):
    return Outbox(tmp_path / "state" / "outbox.sqlite3")


def test_items_persist_in_order_across_instances(outbox, tmp_path):
    events = [event(number) for number in range(5)]
    for item in events:
        assert outbox.add_event(item)
    assert stat.S_IMODE(outbox.path.stat().st_mode) == 0o600

    reopened = Outbox(outbox.path)
    assert [item.payload for item in reopened.pending()] == events
    assert reopened.count() == 5
    assert describe(reopened).startswith("5 items (5 event)")


def test_the_same_item_is_queued_once(outbox):
    item = event(1)
    assert outbox.add_event(item) is True
    assert outbox.add_event(item) is False
    assert outbox.count() == 1


def test_acknowledged_items_are_removed_and_failures_counted(outbox):
    for number in range(3):
        outbox.add_event(event(number))
    first, second, third = outbox.pending()
    outbox.note_failure([second.seq], "timeout")
    outbox.ack([first.seq])
    left = outbox.pending()
    assert [item.seq for item in left] == [second.seq, third.seq]
    assert left[0].attempts == 1 and left[1].attempts == 0


def test_cap_on_items_drops_the_oldest_with_one_warning_event(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_items=5)
    events = [event(number) for number in range(12)]
    for item in events:
        outbox.add_event(item)

    left = [item.payload for item in outbox.pending()]
    assert len(left) == 5
    kept = [payload for payload in left if payload["event_type"] == AGENT_SCAN]
    assert kept == events[-4:]  # the newest survive, in order
    warnings = [payload for payload in left if payload["metadata"].get("reason") == "outbox_overflow"]
    assert len(warnings) == 1, "one warning, merged, never a pile of them"
    warning = warnings[0]
    assert warning["metadata"]["dropped"] == {"event": 8}
    assert "dropped the 8 oldest unsent items" in warning["message"]
    assert (warning["event_type"], warning["event_subtype"], warning["severity"]) == (
        "agent_checkin", "warning", "warning")


def test_cap_on_bytes(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_items=1000, max_bytes=8000)
    for number in range(20):
        outbox.add(KIND_COMMAND_RESULT, {"output": "x" * 1000, "n": number}, item_id=f"result-{number}")
    assert outbox.size_bytes() <= 8000
    results = [item.payload["n"] for item in outbox.pending() if item.kind == KIND_COMMAND_RESULT]
    assert results[-1] == 19 and results == sorted(results)
    with pytest.raises(OutboxError, match="more than the outbox accepts"):
        outbox.add(KIND_COMMAND_RESULT, {"output": "x" * 5000}, item_id="huge")


class Recorder:
    def __init__(self, fail_on_call: int = 0) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, payloads: list[dict[str, Any]]) -> None:
        if self.fail_on_call and len(self.batches) + 1 == self.fail_on_call:
            self.fail_on_call = 0
            raise ConnectionError("server went away")
        self.batches.append(payloads)


def test_flush_sends_in_order_in_batches_and_stops_at_a_failure(outbox):
    events = [event(number) for number in range(7)]
    for item in events[:3]:
        outbox.add_event(item)
    outbox.add(KIND_COMMAND_RESULT, {"command_id": "c1"}, item_id="c1")
    for item in events[3:]:
        outbox.add_event(item)

    send_events = Recorder(fail_on_call=3)
    send_results = Recorder()
    channels = {KIND_EVENT: Channel(send_events, batch_size=2), KIND_COMMAND_RESULT: Channel(send_results)}
    first = outbox.flush(channels)
    assert first.error is not None and not first.complete
    assert send_events.batches == [events[0:2], events[2:3]]
    assert send_results.batches == [[{"command_id": "c1"}]]
    assert first.sent == 4 and first.remaining == 4

    second = outbox.flush(channels)
    assert second.complete and second.sent == 4
    assert send_events.batches[2:] == [events[3:5], events[5:7]]
    assert outbox.count() == 0


def test_items_without_a_channel_wait(outbox):
    outbox.add(KIND_COMMAND_RESULT, {"command_id": "c1"}, item_id="c1")
    outbox.add_event(event(1))
    send = Recorder()
    result = outbox.flush({KIND_EVENT: Channel(send, batch_size=500)})
    assert result.sent == 1 and result.remaining == 1 and not result.complete
    assert [item.kind for item in outbox.pending()] == [KIND_COMMAND_RESULT]


def test_concurrent_writers_lose_nothing(outbox):
    def write(offset: int) -> None:
        for number in range(25):
            outbox.add_event(event(offset + number))

    threads = [threading.Thread(target=write, args=(offset,)) for offset in (0, 100, 200, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outbox.count() == 100


def test_a_corrupt_outbox_is_a_clear_error(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="unusable"):
        Outbox(path).add_event(event(1))


# --- durability against a server that goes away ---------------------------------------


def make_runner(stub: StubServer, config_path, config=None) -> Runner:
    config = config or config_module.load(config_path)
    outbox = Outbox.beside(config_path)
    client = Client(config, machine_id_hash=TEST_MACHINE_ID, config_path=config_path,
                    retry=RetryPolicy(max_attempts=2), sleep=lambda seconds: None, on_event=outbox.add_event)
    return Runner(config=config, config_path=config_path, client=client, outbox=outbox, rng=random.Random(3),
                  metrics=lambda: {"cpu_percent": 1.0})


def test_server_down_keeps_everything_and_each_event_arrives_exactly_once(tmp_path):
    config_path = tmp_path / "agent" / "config.json"
    with StubServer() as stub:
        enrolled_config(stub, config_path)
        port = stub.port
    # The server is down: two agent runs (a restart between them), each with its own events.
    queued: list[dict[str, Any]] = []
    for run in range(2):
        runner = make_runner(stub, config_path)
        runner.record_startup("once")
        for number in range(3):
            item = event(run * 10 + number)
            queued.append(item)
            runner.record(item)
        outcome = runner.cycle()
        assert not outcome.checked_in and not outcome.ok
    assert Outbox.beside(config_path).count() == 8

    stub.port = port
    stub.start()
    try:
        # The first acknowledgement is lost after the server stored the batch: the agent resends.
        stub.drop_events_ack_once = True
        runner = make_runner(stub, config_path)
        assert runner.cycle().ok
    finally:
        stub.stop()

    assert Outbox.beside(config_path).count() == 0
    delivered = set(stub.events)
    assert {item["id"] for item in queued} <= delivered
    assert len(delivered) == 8  # 6 scan failures + 2 start-ups
    assert len(stub.event_posts) == 16  # everything was sent twice (lost ack) but stored once
    startups = [item for item in stub.events.values() if item["event_type"] == "agent_startup"]
    assert len(startups) == 2
