"""The protocol client against a real HTTP server on 127.0.0.1 (tests/agent/stub_server.py).

Sleeps are recorded instead of slept, so backoff and Retry-After are asserted
exactly; every request really crosses a socket.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from typing import Any

import pytest
import requests

from agent_client import config as config_module
from agent_client.transport import (
    ApiError,
    Client,
    RetryPolicy,
    ServerUnavailable,
    TerminalError,
    TransportError,
    normalize_server_url,
    parse_retry_after,
    plain_http_problem,
    register,
)
from tests.agent.stub_server import TEST_MACHINE_ID, enrolled_config


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(stub, config_path, *, events: list[dict[str, Any]] = None, attempts: int = 4, **kwargs) -> Client:
    config = enrolled_config(stub, config_path)
    sleeps = Sleeps()
    client = Client(
        config, machine_id_hash=TEST_MACHINE_ID, config_path=config_path,
        retry=RetryPolicy(max_attempts=attempts), sleep=sleeps, rng=random.Random(7),
        on_event=(events.append if events is not None else None), **kwargs,
    )
    client.sleeps = sleeps  # type: ignore[attr-defined]
    return client


def test_every_request_carries_binding_nonce_timestamp_and_bearer(stub, config_path):
    client = make_client(stub, config_path)
    client.checkin({"metrics": {}})
    client.send_events([{"id": "e1"}])
    client.checkin({"metrics": {}})

    authenticated = stub.calls("checkin") + stub.calls("events")
    assert len(authenticated) == 3
    nonces = [call.headers["x-request-nonce"] for call in authenticated]
    assert len(set(nonces)) == 3
    for call in authenticated:
        assert call.headers["authorization"] == f"Bearer {stub.access_token}"
        assert call.headers["x-machine-id"] == TEST_MACHINE_ID
        assert re.match(r"^[A-Za-z0-9_-]{16,128}$", call.headers["x-request-nonce"])
        assert abs(int(call.headers["x-request-timestamp"]) - time.time()) < 5
        assert call.headers["user-agent"].startswith("redflag-agent/")


def test_expired_access_token_is_renewed_and_rotation_saved_before_use(stub, config_path):
    client = make_client(stub, config_path)
    old_refresh = client.config.refresh_token
    stub.access_expired = True
    on_disk_when_new_token_used = []

    def inspect(request):
        if request.endpoint == "checkin" and request.headers.get("authorization") != f"Bearer {stub.access_token}":
            return
        if request.endpoint == "checkin":
            on_disk_when_new_token_used.append(json.loads(config_path.read_text())["refresh_token"])

    stub.on_request = inspect
    answer = client.checkin({"metrics": {}})

    assert answer["poll_interval_seconds"] == 60
    assert [call.endpoint for call in stub.received] == ["checkin", "renew", "checkin"]
    assert stub.calls("renew")[0].body == {"refresh_token": old_refresh}
    assert "authorization" not in stub.calls("renew")[0].headers
    saved = config_module.load(config_path)
    assert saved.refresh_token == stub.refresh_token != old_refresh
    assert saved.access_token == stub.access_token
    # The retried check-in arrived only after the rotated refresh token was on disk.
    assert on_disk_when_new_token_used[-1] == stub.refresh_token

    # The next renewal presents the rotated token (the stub refuses the old one).
    stub.access_expired = True
    client.checkin({"metrics": {}})
    assert stub.calls("renew")[1].body == {"refresh_token": saved.refresh_token}


def test_access_token_past_its_expiry_is_renewed_before_the_request(stub, config_path):
    client = make_client(stub, config_path)
    client.config.access_token_expires_at = "2000-01-01T00:00:00Z"
    client.checkin({"metrics": {}})
    assert [call.endpoint for call in stub.received] == ["renew", "checkin"]


def test_refused_refresh_is_terminal_and_reported(stub, config_path):
    events: list[dict[str, Any]] = []
    client = make_client(stub, config_path, events=events)
    stub.access_expired = True
    stub.refresh_token = "rf_ref_someone-else-rotated-it"

    with pytest.raises(TerminalError) as raised:
        client.checkin({"metrics": {}})
    assert raised.value.code == "invalid_credentials"
    assert "register again" in str(raised.value)
    assert [call.endpoint for call in stub.received] == ["checkin", "renew"]
    assert [(event["event_type"], event["event_subtype"]) for event in events] == [("token_renewal", "failed")]


def test_renewed_credentials_that_cannot_be_saved_are_never_used(stub, config_path, monkeypatch):
    events: list[dict[str, Any]] = []
    client = make_client(stub, config_path, events=events)
    before = config_path.read_text()
    stub.access_expired = True

    def disk_full(config, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(config_module, "save", disk_full)
    with pytest.raises(TransportError, match="could not be saved"):
        client.checkin({"metrics": {}})
    assert [call.endpoint for call in stub.received] == ["checkin", "renew"]
    assert config_path.read_text() == before
    assert events[0]["event_type"] == "token_renewal" and "No space left" in events[0]["message"]

    # Still unsaved: the next request refuses to go out with the new token.
    with pytest.raises(TransportError, match="could not be saved"):
        client.checkin({"metrics": {}})
    assert len(stub.calls("checkin")) == 1

    monkeypatch.undo()
    client.checkin({"metrics": {}})
    assert config_module.load(config_path).refresh_token == stub.refresh_token


def test_429_waits_for_retry_after_then_succeeds(stub, config_path):
    client = make_client(stub, config_path)
    stub.script("checkin", 429, {"error": {"code": "rate_limited", "message": "slow down"}},
                headers={"Retry-After": "7"}, times=2)

    client.checkin({"metrics": {}})
    assert len(client.sleeps) == 2
    assert all(7 <= delay <= 7.7 for delay in client.sleeps)
    calls = stub.calls("checkin")
    assert len(calls) == 3
    assert len({call.headers["x-request-nonce"] for call in calls}) == 3


def test_5xx_backs_off_exponentially_with_jitter_then_gives_up(stub, config_path):
    client = make_client(stub, config_path, attempts=4)
    stub.script("checkin", 502, None, times=4)
    with pytest.raises(ServerUnavailable, match="502.*gave up after 4 attempts"):
        client.checkin({"metrics": {}})
    assert len(client.sleeps) == 3
    for attempt, delay in enumerate(client.sleeps, start=1):
        step = 2 ** (attempt - 1)
        assert step / 2 <= delay <= step


def test_503_with_a_long_retry_after_is_left_to_the_loop(stub, config_path):
    client = make_client(stub, config_path)
    stub.script("checkin", 503, {"error": {"code": "unavailable", "message": "db down"}},
                headers={"Retry-After": "3600"})
    with pytest.raises(ServerUnavailable) as raised:
        client.checkin({"metrics": {}})
    assert raised.value.retry_after == 3600
    assert client.sleeps == []


def test_network_errors_are_retried_then_reported(stub, config_path):
    client = make_client(stub, config_path, attempts=3)
    stub.stop()
    with pytest.raises(ServerUnavailable, match="cannot reach 127.0.0.1"):
        client.checkin({"metrics": {}})
    assert len(client.sleeps) == 2


@pytest.mark.parametrize("code", ["machine_mismatch", "agent_revoked", "wrong_agent"])
def test_terminal_403_is_not_retried(stub, config_path, code):
    client = make_client(stub, config_path)
    stub.script("checkin", 403, {"error": {"code": code, "message": "refused"}})
    with pytest.raises(TerminalError) as raised:
        client.checkin({"metrics": {}})
    assert raised.value.code == code
    assert len(stub.calls("checkin")) == 1 and client.sleeps == []


def test_wrong_machine_is_refused_by_the_stub_as_terminal(stub, config_path):
    client = make_client(stub, config_path)
    client.machine_id_hash = "cd" * 32
    with pytest.raises(TerminalError, match="machine_mismatch"):
        client.checkin({"metrics": {}})


def test_bad_input_is_not_retried(stub, config_path):
    client = make_client(stub, config_path)
    stub.script("events", 400, {"error": {"code": "invalid", "message": "events[0].message: too long"}})
    with pytest.raises(ApiError) as raised:
        client.send_events([{"id": "x"}])
    assert raised.value.status == 400 and raised.value.code == "invalid"
    assert len(stub.calls("events")) == 1


def test_stale_timestamp_is_corrected_from_the_servers_date(stub, config_path):
    client = make_client(stub, config_path)
    stub.date_override = time.time() + 1000
    stub.script("checkin", 401, {"error": {"code": "stale_request", "message": "skew"}})
    client.checkin({"metrics": {}})
    first, second = stub.calls("checkin")
    assert int(second.headers["x-request-timestamp"]) - int(first.headers["x-request-timestamp"]) >= 990
    assert 990 <= client.clock_offset <= 1010


def test_a_lost_answer_is_retried_with_a_new_nonce(stub, config_path):
    client = make_client(stub, config_path)
    stub.script("checkin", 200, drop_connection=True)
    client.checkin({"metrics": {}})
    calls = stub.calls("checkin")
    assert len(calls) == 2 and calls[0].headers["x-request-nonce"] != calls[1].headers["x-request-nonce"]


def test_no_token_is_ever_logged(stub, config_path, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(stub, config_path)
    secrets_seen = {client.config.access_token, client.config.refresh_token}
    stub.access_expired = True
    stub.script("checkin", 503, None, headers={"Retry-After": "1"})
    client.checkin({"metrics": {}})
    secrets_seen |= {stub.access_token, stub.refresh_token}
    stub.refresh_token = "rf_ref_gone"
    stub.access_expired = True
    with pytest.raises(TerminalError) as raised:
        client.checkin({"metrics": {}})
    text = caplog.text + str(raised.value)
    assert "renew" in caplog.text
    for secret in secrets_seen:
        assert secret not in text


def test_register_returns_credentials_and_refuses_a_bad_token(stub):
    facts = {"hostname": "web-01", "os_family": "linux", "os_name": "Debian", "os_version": "12",
             "kernel": "6.1", "arch": "x86_64"}
    answer = register(stub.url, registration_token="rf_reg_test-token", machine_id_hash=TEST_MACHINE_ID, facts=facts)
    assert answer["agent_id"] == stub.agent_id and answer["refresh_token"] == stub.refresh_token
    body = stub.calls("register")[0].body
    assert body["machine_id"] == TEST_MACHINE_ID and body["hostname"] == "web-01" and body["agent_version"]

    with pytest.raises(ApiError) as raised:
        register(stub.url, registration_token="rf_reg_wrong", machine_id_hash=TEST_MACHINE_ID, facts=facts)
    assert raised.value.code == "registration_refused"


def test_signing_keys_and_health_need_no_credentials(stub, config_path):
    client = make_client(stub, config_path)
    assert client.signing_keys()[0]["key_id"] == "k1"
    assert client.health() == {"status": "ok", "database": "ok"}
    assert "authorization" not in stub.calls("health")[0].headers


def test_retry_after_forms():
    assert parse_retry_after("30") == 30
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480) == 30


def test_server_url_normalization():
    assert normalize_server_url("https://redflag.example/") == "https://redflag.example"
    assert normalize_server_url(" http://10.0.0.5:8000/portal/ ") == "http://10.0.0.5:8000/portal"
    for bad in ("redflag.example", "ftp://x", "https://", "https://x/?a=1"):
        with pytest.raises(ValueError):
            normalize_server_url(bad)


# --- plain HTTP only to this machine, or where an admin chose it (register --insecure) ----------


@pytest.mark.parametrize("url, refused", [
    ("https://redflag.example", False),
    ("https://10.0.0.5:8443", False),
    ("http://localhost:8000", False),
    ("http://LOCALHOST", False),
    ("http://127.0.0.1:8000", False),
    ("http://127.9.9.9", False),
    ("http://[::1]:8000", False),
    ("http://redflag.example", True),
    ("http://10.0.0.5:8000", True),
    ("http://192.168.1.2", True),
    ("http://[fe80::1]:8000", True),
    ("http://localhost.example.com", True),
    ("http://127.0.0.1.nip.io", True),
])
def test_plain_http_problem(url, refused):
    assert (plain_http_problem(url) is not None) is refused


def test_the_client_sends_nothing_over_plain_http_to_another_machine_unless_the_config_chose_it(stub, config_path):
    config = enrolled_config(stub, config_path)
    config.server_url = "http://redflag.invalid:8000"
    proxied = requests.Session()
    proxied.proxies = {"http": stub.url}  # the stub answers for "redflag.invalid", on loopback
    proxied.trust_env = False
    client = Client(config, machine_id_hash=TEST_MACHINE_ID, session=proxied, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(TerminalError) as refused:
        client.checkin({"metrics": {}})
    assert refused.value.code == "insecure_transport"
    with pytest.raises(TerminalError):
        client.download("/api/v1/releases/1.0/artifact", config_path.parent / "x", max_bytes=10)
    with pytest.raises(TerminalError):
        register(config.server_url, registration_token=stub.registration_token, machine_id_hash=TEST_MACHINE_ID,
                 facts={}, retry=RetryPolicy(max_attempts=1))
    assert stub.received == []

    config.insecure_http = True
    chosen = Client(config, machine_id_hash=TEST_MACHINE_ID, session=proxied, retry=RetryPolicy(max_attempts=1))
    chosen.checkin({"metrics": {}})
    assert stub.proxied_hosts == ["redflag.invalid:8000"] and len(stub.calls("checkin")) == 1
