"""Migration of older installs to the current config (schema_version 1).

Known old layouts:

- ``aggregator``: the Go agent's ``/etc/aggregator/config.json`` (RedFlag before
  the Python agent): ``server_url``, ``agent_id``, ``token`` (the access token),
  ``refresh_token`` (absent in the earliest builds), ``check_in_interval``, and
  proxy/TLS/logging sections. No schema version, no machine binding, no keys.

The steps, none of which touches the old file until the new one is safely written:

1. read and identify the old config (a corrupt or unknown one stops here);
2. build the new config, keeping agent id, tokens and server URL; turn on
   machine binding (the machine id hash) and key pinning (the server's signing
   keys, fetched now: an unreachable server stops here, nothing changed);
3. back the old file up to ``backups/config-<timestamp>.json`` beside the new config;
4. write the new config atomically; rename the legacy file to ``*.migrated``;
5. queue a ``migration`` event for the server.

Nonce validation needs nothing in the file: this agent signs every request.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from agent_client import config as config_module
from agent_client.config import AgentConfig, format_time, utc_now
from agent_client.events import MIGRATION, make_event
from agent_client.transport import normalize_server_url, plain_http_problem

LEGACY_CONFIG_PATHS = (Path("/etc/aggregator/config.json"),)
BACKUP_DIRECTORY = "backups"
# Legacy fields with no place in the new schema that are worth keeping (kept under "legacy").
KEPT_LEGACY_FIELDS = ("tags", "metadata", "display_name", "organization", "proxy", "logging")


class MigrationError(Exception):
    """The migration cannot proceed; nothing was changed."""


@dataclasses.dataclass
class MigrationPlan:
    source: Path
    layout: str
    target: Path
    backup: Path
    config: AgentConfig
    notes: list[str]

    def describe(self) -> str:
        lines = [
            f"source:  {self.source} ({self.layout} layout)",
            f"backup:  {self.backup}",
            f"target:  {self.target} (schema_version {config_module.SCHEMA_VERSION})",
            f"keeps:   agent id {self.config.agent_id}, server {self.config.server_url}, "
            f"access token {'yes' if self.config.access_token else 'none'}, "
            f"refresh token {'yes' if self.config.refresh_token else 'none'}",
            f"adds:    machine binding ({self.config.machine_id_hash[:12]}…), request nonces, "
            f"key pinning ({len(self.config.signing_keys)} key(s) from the server)"
            if self.config.signing_keys else
            f"adds:    machine binding ({self.config.machine_id_hash[:12]}…), request nonces, "
            f"key pinning (keys fetched from {self.config.server_url} when applied)",
        ]
        lines += [f"note:    {note}" for note in self.notes]
        return "\n".join(lines)


def find_source(target: Path, legacy_paths=LEGACY_CONFIG_PATHS) -> Optional[Path]:
    """The config to migrate: an old-schema file at the target, else a legacy install."""
    if target.exists():
        try:
            data = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a corrupt current file is not a migration case; `run` reports it
        if isinstance(data, dict) and data.get("schema_version") == config_module.SCHEMA_VERSION:
            return None
        return target
    for path in legacy_paths:
        if Path(path).exists():
            return Path(path)
    return None


def _read(source: Path) -> dict[str, Any]:
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MigrationError(f"cannot read {source}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise MigrationError(f"{source} is not valid JSON ({exc}); nothing was changed") from None
    if not isinstance(data, dict):
        raise MigrationError(f"{source} does not hold a JSON object; nothing was changed")
    return data


def _identify(data: dict[str, Any], source: Path) -> str:
    if "schema_version" in data:
        raise MigrationError(
            f"{source} has schema version {data['schema_version']!r}, which is not a layout this agent knows"
        )
    if "server_url" in data and "agent_id" in data and ("token" in data or "refresh_token" in data):
        return "aggregator"
    raise MigrationError(f"{source} is not a RedFlag config this agent knows; nothing was changed")


def _from_aggregator(data: dict[str, Any], machine_hash: str, notes: list[str]) -> AgentConfig:
    try:
        agent_id = str(uuid.UUID(str(data["agent_id"])))
    except ValueError:
        raise MigrationError(f"agent_id {data['agent_id']!r} is not a UUID; register this machine again") from None
    if agent_id == str(uuid.UUID(int=0)):
        raise MigrationError("the legacy config was never registered (empty agent id); register this machine again")
    refresh = str(data.get("refresh_token") or "")
    if not refresh:
        notes.append("no refresh token (an early aggregator build): when the access token expires, "
                     "run 'register' again; the agent record is kept")
    tls = data.get("tls") or {}
    if tls.get("insecure_skip_verify"):
        notes.append("insecure_skip_verify is not carried over: this agent always verifies the server's certificate")
    interval = data.get("check_in_interval")
    legacy = {field: data[field] for field in KEPT_LEGACY_FIELDS if data.get(field)}
    server_url = normalize_server_url(str(data["server_url"]))
    # The old agent already talked to this server this way: keep it working, and say so.
    insecure_http = plain_http_problem(server_url) is not None
    if insecure_http:
        notes.append(f"{server_url} is plain HTTP to another machine: kept working (insecure_http in the config); "
                     "register again over https:// to end that")
    return AgentConfig(
        server_url=server_url,
        agent_id=agent_id,
        machine_id_hash=machine_hash,
        access_token=str(data.get("token") or ""),
        refresh_token=refresh,
        poll_interval_seconds=int(interval) if isinstance(interval, int) and interval > 0
        else config_module.DEFAULT_POLL_INTERVAL_SECONDS,
        ca_bundle=tls.get("ca_file") or None,
        insecure_http=insecure_http,
        registered_at=format_time(utc_now()),
        extra={"legacy": legacy, "migrated_from": "aggregator"} if legacy else {"migrated_from": "aggregator"},
    )


def plan(source: Path, target: Path, *, machine_hash: str) -> MigrationPlan:
    data = _read(source)
    layout = _identify(data, source)
    notes: list[str] = []
    config = _from_aggregator(data, machine_hash, notes)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = config_module.state_directory(target) / BACKUP_DIRECTORY / f"config-{stamp}.json"
    return MigrationPlan(source=source, layout=layout, target=target, backup=backup, config=config, notes=notes)


def apply(migration: MigrationPlan, *, fetch_signing_keys: Callable[[AgentConfig], list[dict[str, Any]]],
          record: Callable[[dict[str, Any]], None]) -> AgentConfig:
    """Carry the plan out; on any failure the old config is exactly as it was."""
    config = migration.config
    try:
        config.signing_keys = fetch_signing_keys(config)
    except Exception as exc:
        raise MigrationError(
            f"cannot fetch signing keys from {config.server_url}: {exc}; nothing was changed") from None
    if not config.signing_keys:
        raise MigrationError(f"{config.server_url} offered no usable signing keys; nothing was changed")
    migration.backup.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy2(migration.source, migration.backup)
    os.chmod(migration.backup, 0o600)
    config_module.save(config, migration.target)
    if migration.source != migration.target:
        migration.source.rename(migration.source.with_name(migration.source.name + ".migrated"))
    record(make_event(
        MIGRATION, "success", f"Migrated the {migration.layout} config to schema {config_module.SCHEMA_VERSION}",
        component="migration",
        metadata={"layout": migration.layout, "source": str(migration.source), "backup": str(migration.backup),
                  "refresh_token": bool(config.refresh_token), "signing_keys": len(config.signing_keys)},
    ))
    return config
