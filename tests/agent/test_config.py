"""The agent's config file: default location, atomic 0600 writes, clear errors on a bad file."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from agent_client import config as config_module
from agent_client.config import SCHEMA_VERSION, AgentConfig, ConfigError, ConfigNotFound

NOW = dt.datetime(2030, 5, 17, 12, 0, 0, tzinfo=dt.timezone.utc)


def sample() -> AgentConfig:
    return AgentConfig(
        server_url="https://redflag.example",
        agent_id="7f1c2b4e-0000-4000-8000-000000000001",
        machine_id_hash="ab" * 32,
        access_token="rf_acc_secret-access",
        access_token_expires_at=config_module.format_time(NOW + dt.timedelta(minutes=15)),
        refresh_token="rf_ref_secret-refresh",
        refresh_token_expires_at=config_module.format_time(NOW + dt.timedelta(days=90)),
        signing_keys=[{"key_id": "k1", "algorithm": "ed25519", "public_key": "AAAA", "primary": True}],
        config_version=3,
        poll_interval_seconds=120,
    )


def test_default_path_per_platform(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert config_module.default_config_path() == Path("/etc/redflag/agent/config.json")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("ProgramData", r"D:\ProgramData")
    assert config_module.default_config_path() == Path(r"D:\ProgramData") / "RedFlag" / "agent" / "config.json"


def test_save_then_load_round_trips_with_schema_version(tmp_path):
    path = tmp_path / "etc" / "agent" / "config.json"
    config_module.save(sample(), path)

    loaded = config_module.load(path)
    assert loaded == sample()
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert loaded.is_registered


def test_file_is_0600_and_new_directory_0700(tmp_path):
    path = tmp_path / "state" / "config.json"
    old_umask = os.umask(0o022)
    try:
        config_module.save(sample(), path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Rewriting keeps it private and leaves no temporary files behind.
    config_module.save(sample(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in path.parent.iterdir()] == ["config.json"]


def test_a_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    config_module.save(sample(), path)
    before = path.read_bytes()
    changed = sample()
    changed.refresh_token = "rf_ref_the-new-one"

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(config_module.os, "replace", crash)
    with pytest.raises(OSError):
        config_module.save(changed, path)
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["config.json"]


def test_missing_file_is_not_registered(tmp_path):
    with pytest.raises(ConfigNotFound, match="not registered"):
        config_module.load(tmp_path / "config.json")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "corrupt \\(not valid JSON"),
        ("", "corrupt \\(not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"server_url": "x"}', "no valid schema_version"),
        ('{"schema_version": 99}', "schema version 99, newer than this agent understands"),
        ('{"schema_version": 0}', "old schema version 0"),
        ('{"schema_version": 1, "poll_interval_seconds": "often"}', "poll_interval_seconds must be an? integer"),
        ('{"schema_version": 1, "signing_keys": {}}', "signing_keys must be a list"),
        ('{"schema_version": 1, "insecure_http": "yes"}', "insecure_http must be true or false"),
    ],
)
def test_an_unusable_file_is_a_clear_error_naming_it(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as raised:
        config_module.load(path)
    assert str(path) in str(raised.value)
    assert not isinstance(raised.value, ConfigNotFound)


def test_unknown_keys_survive_a_rewrite(tmp_path):
    path = tmp_path / "config.json"
    data = sample().to_dict()
    data["added_by_a_newer_agent"] = {"x": 1}
    path.write_text(json.dumps(data))

    config = config_module.load(path)
    config.poll_interval_seconds = 30
    config_module.save(config, path)
    rewritten = json.loads(path.read_text())
    assert rewritten["added_by_a_newer_agent"] == {"x": 1}
    assert rewritten["poll_interval_seconds"] == 30


def test_tokens_never_appear_in_repr():
    text = repr(sample())
    assert "secret-access" not in text and "secret-refresh" not in text
    assert "redflag.example" in text


def test_server_timestamps_parse_on_python_39():
    assert config_module.parse_time("2030-05-17T12:00:00Z") == NOW
    assert config_module.parse_time("2030-05-17T12:00:00.250000Z") == NOW + dt.timedelta(milliseconds=250)
    assert config_module.parse_time("2030-05-17T14:00:00+02:00") == NOW
    assert config_module.parse_time(None) is None
    assert config_module.format_time(NOW) == "2030-05-17T12:00:00+00:00"


def test_heartbeat_is_active_only_until_its_end():
    config = sample()
    assert not config.heartbeat_active(NOW)
    config.heartbeat_until = config_module.format_time(NOW + dt.timedelta(minutes=10))
    assert config.heartbeat_active(NOW)
    assert not config.heartbeat_active(NOW + dt.timedelta(minutes=11))


def test_state_lives_beside_the_config(tmp_path):
    assert config_module.state_directory(tmp_path / "config.json") == tmp_path
