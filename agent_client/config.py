"""The agent's configuration file: one JSON document, 0600, written atomically.

It holds everything the agent needs to talk to its server after enrollment:
server URL, agent id, credentials, the signing keys pinned at registration,
the machine id hash it registered with, intervals and the last check-in.
Tokens are secrets: they never appear in a repr, a log line or an error.

Layout (``schema_version`` 1)::

    {
      "schema_version": 1,
      "server_url": "https://redflag.example",
      "agent_id": "…uuid…",
      "machine_id_hash": "…64 hex…",
      "access_token": "rf_acc_…", "access_token_expires_at": "…iso…",
      "refresh_token": "…", "refresh_token_expires_at": "…iso…",
      "signing_keys": [{"key_id", "algorithm", "public_key", "primary", "created_at"}],
      "config_version": 3,
      "poll_interval_seconds": 300,
      "heartbeat_until": null,
      "registered_at": "…iso…",
      "last_checkin_at": "…iso…",
      "ca_bundle": null,
      "insecure_http": false,
      "tags": ["production", "eu-west"]
    }

``insecure_http`` is true only when the agent was registered with
``register --insecure`` to a plain ``http://`` server that is not this machine
(or migrated from a legacy install that already talked to one). It records
that an admin chose this, so the agent keeps working with that server; without
it the agent refuses such a URL (transport.plain_http_problem), whoever wrote
it into the file. Registering again over https:// clears it.

Keys this version does not know are kept as they are, so an older agent
rewriting the file never drops a newer agent's fields.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

SCHEMA_VERSION = 1
CONFIG_FILE_NAME = "config.json"
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
DEFAULT_POLL_INTERVAL_SECONDS = 300


class ConfigError(Exception):
    """The config file exists but cannot be used; the message says why and where."""


class ConfigNotFound(ConfigError):
    """No config file: the agent is not registered on this machine."""


def default_config_path() -> Path:
    """``/etc/redflag/agent/config.json``; Windows ``%ProgramData%\\RedFlag\\agent\\config.json``."""
    if sys.platform == "win32":
        program_data = os.environ.get("ProgramData") or r"C:\ProgramData"
        return Path(program_data) / "RedFlag" / "agent" / CONFIG_FILE_NAME
    return Path("/etc/redflag/agent") / CONFIG_FILE_NAME


# --- time helpers (every timestamp in the file is ISO 8601 UTC) ---------------


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def format_time(value: Optional[dt.datetime]) -> Optional[str]:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat()


def parse_time(value: Optional[str]) -> Optional[dt.datetime]:
    """Parse the server's ISO timestamps; Python 3.9's fromisoformat has no ``Z``."""
    if not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed


# --- the document -------------------------------------------------------------


@dataclasses.dataclass
class AgentConfig:
    server_url: str = ""
    agent_id: str = ""
    machine_id_hash: str = ""
    access_token: str = dataclasses.field(default="", repr=False)
    access_token_expires_at: Optional[str] = None
    refresh_token: str = dataclasses.field(default="", repr=False)
    refresh_token_expires_at: Optional[str] = None
    signing_keys: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    config_version: int = 0
    poll_interval_seconds: int = DEFAULT_POLL_INTERVAL_SECONDS
    heartbeat_until: Optional[str] = None
    registered_at: Optional[str] = None
    last_checkin_at: Optional[str] = None
    ca_bundle: Optional[str] = None
    insecure_http: bool = False
    # register --capabilities: the most this agent may offer (None: whatever works on this host).
    capability_limit: Optional[list[str]] = None
    # Tags an admin writes here for the server's groups ("tags": ["production", "eu-west"]), sent with
    # each system report when they pass protocol.tags_problem. Read at start: restart the agent after
    # editing them (the running agent rewrites this file with what it holds).
    tags: list[str] = dataclasses.field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    # Unknown keys read from the file, written back untouched.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def is_registered(self) -> bool:
        return bool(self.server_url and self.agent_id and self.refresh_token)

    def heartbeat_active(self, now: Optional[dt.datetime] = None) -> bool:
        until = parse_time(self.heartbeat_until)
        return bool(until and until > (now or utc_now()))

    def to_dict(self) -> dict[str, Any]:
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "extra"}
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentConfig:
        known = {field.name for field in dataclasses.fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        extra = {key: value for key, value in data.items() if key not in known}
        return cls(**values, extra=extra)


_TYPES = {
    "server_url": str,
    "agent_id": str,
    "machine_id_hash": str,
    "access_token": str,
    "refresh_token": str,
    "signing_keys": list,
    "config_version": int,
    "poll_interval_seconds": int,
    "schema_version": int,
}


def _validate(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} is corrupt: expected a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"config file {path} has no valid schema_version")
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"config file {path} has schema version {version}, newer than this agent understands ({SCHEMA_VERSION})"
        )
    if version < SCHEMA_VERSION:
        raise ConfigError(f"config file {path} has the old schema version {version}; it needs migrating")
    for key, expected in _TYPES.items():
        if key in data and (not isinstance(data[key], expected) or isinstance(data[key], bool)):
            kind = {str: "string", int: "integer", list: "list"}[expected]
            raise ConfigError(f"config file {path} is corrupt: {key} must be a {kind}")
    if "insecure_http" in data and not isinstance(data["insecure_http"], bool):
        raise ConfigError(f"config file {path} is corrupt: insecure_http must be true or false")
    return data


def load(path: Path) -> AgentConfig:
    """Read the config; ConfigNotFound when absent, ConfigError naming the problem otherwise."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigNotFound(f"no config file at {path}: this agent is not registered") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"config file {path} is corrupt (not valid JSON: {exc})") from None
    return AgentConfig.from_dict(_validate(data, path))


def save(config: AgentConfig, path: Path) -> None:
    """Write the config atomically: temp file (0600) in the same directory, fsync, rename.

    A crash leaves either the old file or the new one, never half of one; the
    rotated refresh token depends on this.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    payload = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    # mkstemp creates the file 0600 from the start: the tokens are never world-readable.
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(directory))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if sys.platform != "win32":
            os.chmod(temp_name, FILE_MODE)
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX only; Windows has no directory fsync)."""
    if sys.platform == "win32":
        return
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def state_directory(config_path: Path) -> Path:
    """Where the agent keeps its other state (outbox, …): beside the config file."""
    return Path(config_path).parent
