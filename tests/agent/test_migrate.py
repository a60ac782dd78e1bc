"""Migration of older installs: each known layout, the dry run, and failures that change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_client.machine import machine_id_hash
from agent_client.outbox import Outbox
from tests.agent.stub_server import StubServer, enrolled_config
from tests.agent.test_cli import REMOTE, agent, one_error_line, through_proxy


def aggregator_config(stub: StubServer, *, refresh: bool = True) -> dict:
    """The Go aggregator agent's config.json, as it wrote it (fields from its config.go)."""
    answer = stub.enroll(machine_id_hash())
    layout = {
        "server_url": stub.url, "registration_token": "", "agent_id": answer["agent_id"],
        "token": answer["access_token"], "check_in_interval": 120,
        "rapid_polling_enabled": False, "rapid_polling_until": "0001-01-01T00:00:00Z",
        "network": {"timeout": 30000000000, "retry_count": 3, "retry_delay": 5000000000, "max_idle_conn": 10},
        "proxy": {"enabled": False}, "tls": {"insecure_skip_verify": False},
        "logging": {"level": "info", "max_size": 100, "max_backups": 3, "max_age": 28},
        "tags": ["rack-2"], "display_name": "Web 01",
    }
    if refresh:
        layout["refresh_token"] = answer["refresh_token"]
    return layout


def write(path: Path, data) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = (json.dumps(data, indent=2) if not isinstance(data, str) else data).encode()
    path.write_bytes(raw)
    return raw


def test_dry_run_shows_the_plan_and_changes_nothing(stub, tmp_path, config_path):
    legacy = tmp_path / "aggregator" / "config.json"
    original = write(legacy, aggregator_config(stub))
    result = agent(config_path, "migrate", "--dry-run", "--from", str(legacy))
    assert result.returncode == 0, result.stderr
    assert f"source:  {legacy} (aggregator layout)" in result.stdout
    assert "backup:  " + str(config_path.parent / "backups" / "config-") in result.stdout
    assert "machine binding" in result.stdout and "dry run: nothing was changed" in result.stdout
    assert legacy.read_bytes() == original and not config_path.exists()
    assert not (config_path.parent / "backups").exists()


def test_migration_keeps_identity_and_tokens_and_pins_the_servers_keys(stub, tmp_path, config_path):
    legacy = tmp_path / "aggregator" / "config.json"
    old = aggregator_config(stub)
    original = write(legacy, old)
    result = agent(config_path, "migrate", "--from", str(legacy))
    assert result.returncode == 0, result.stderr

    new = json.loads(config_path.read_text())
    assert new["schema_version"] == 1 and oct(config_path.stat().st_mode & 0o777) == "0o600"
    assert (new["agent_id"], new["server_url"]) == (old["agent_id"], stub.url)
    assert (new["access_token"], new["refresh_token"]) == (old["token"], old["refresh_token"])
    assert new["machine_id_hash"] == machine_id_hash() and new["poll_interval_seconds"] == 120
    assert [key["key_id"] for key in new["signing_keys"]] == ["k1"]
    assert new["legacy"]["tags"] == ["rack-2"] and new["migrated_from"] == "aggregator"
    (backup,) = (config_path.parent / "backups").iterdir()
    assert backup.read_bytes() == original and oct(backup.stat().st_mode & 0o777) == "0o600"
    assert not legacy.exists() and legacy.with_name("config.json.migrated").exists()
    (event,) = [item.payload for item in Outbox.beside(config_path).pending()]
    assert (event["event_type"], event["event_subtype"]) == ("migration", "success")

    # The migrated agent works with its old credentials: check-in, then the event is delivered.
    ran = agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert stub.calls("checkin") and any(
        e["event_type"] == "migration" for call in stub.calls("events") for e in call.body["events"])


def test_run_migrates_an_old_layout_found_at_the_config_path(stub, config_path):
    write(config_path, aggregator_config(stub))
    ran = agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(config_path.read_text())["schema_version"] == 1
    assert len(list((config_path.parent / "backups").iterdir())) == 1
    assert stub.calls("checkin")


def test_an_unreachable_server_leaves_the_old_config_untouched(stub, tmp_path, config_path):
    legacy = tmp_path / "aggregator" / "config.json"
    original = write(legacy, aggregator_config(stub))
    stub.stop()
    result = agent(config_path, "migrate", "--from", str(legacy))
    assert result.returncode == 1
    *retries, error = result.stderr.strip().splitlines()
    assert all("retrying" in line for line in retries)
    assert error.startswith("redflag-agent: error: migration failed: cannot fetch signing keys")
    assert legacy.read_bytes() == original and not config_path.exists()
    assert not (config_path.parent / "backups").exists()


def test_an_early_build_without_refresh_token_is_migrated_with_a_warning(stub, tmp_path, config_path):
    legacy = tmp_path / "aggregator" / "config.json"
    write(legacy, aggregator_config(stub, refresh=False))
    result = agent(config_path, "migrate", "--from", str(legacy))
    assert result.returncode == 0, result.stderr
    assert "no refresh token" in result.stdout
    assert json.loads(config_path.read_text())["refresh_token"] == ""


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ({"schema_version": 0, "server_url": "x"}, "schema version 0, which is not a layout this agent knows"),
    ({"hello": "world"}, "is not a RedFlag config this agent knows"),
    ({"server_url": "http://127.0.0.1:9", "agent_id": "00000000-0000-0000-0000-000000000000", "token": "t"},
     "never registered"),
    ({"server_url": "http://127.0.0.1:9", "agent_id": "web-01", "token": "t"}, "is not a UUID"),
])
def test_unusable_old_configs_are_refused_with_a_reason(tmp_path, config_path, content, message):
    legacy = tmp_path / "aggregator" / "config.json"
    original = write(legacy, content)
    result = agent(config_path, "migrate", "--from", str(legacy))
    assert result.returncode == 1 and message in one_error_line(result)
    assert legacy.read_bytes() == original and not config_path.exists()


def test_nothing_to_migrate(stub, config_path):
    config_path.parent.mkdir(parents=True)
    enrolled_config(stub, config_path)
    result = agent(config_path, "migrate")
    assert result.returncode == 0 and "nothing to migrate" in result.stdout


def test_a_legacy_install_on_plain_http_to_another_machine_keeps_working_and_says_so(stub, tmp_path, config_path):
    """The old agent already used this server over plain HTTP: the migrated config records insecure_http."""
    legacy = tmp_path / "aggregator" / "config.json"
    write(legacy, dict(aggregator_config(stub), server_url=REMOTE))
    proxy = through_proxy(stub)  # REMOTE is answered by the stub, on loopback

    result = agent(config_path, "migrate", "--from", str(legacy), env=proxy)

    assert result.returncode == 0, result.stderr
    assert f"{REMOTE} is plain HTTP to another machine: kept working (insecure_http in the config)" in result.stdout
    migrated = json.loads(config_path.read_text())
    assert migrated["server_url"] == REMOTE and migrated["insecure_http"] is True
    assert agent(config_path, "run", "--once", env=proxy).returncode == 0
    assert set(stub.proxied_hosts) == {"redflag.invalid:8000"}
