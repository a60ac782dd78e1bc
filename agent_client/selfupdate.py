"""Self-update: verify, download, swap, restart, confirm — or roll back.

1. Verify the command's update nonce (signed by a pinned key, for this agent,
   for this version, not expired) and the release manifest's signature; refuse a
   downgrade below the highest version ever accepted unless the nonce allows it.
2. Download the artifact, refusing more bytes than the manifest promised; its
   size and SHA-256 must match the signed manifest.
3. Swap it into place atomically, keeping the old file as ``<file>.previous``,
   record the pending update, and ask the runner to exit so the service manager
   starts the new file (exit code 75).
4. The new version confirms the command once it has checked in. If it cannot
   check in ``MAX_START_ATTEMPTS`` times, it restores ``.previous`` and exits; the
   old version then reports the failure.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from agent_client.protocol import ResultStatus, release_manifest_bytes, update_nonce_bytes, version_key
from agent_client.signatures import InvalidSignature, PublicKey

logger = logging.getLogger("redflag.agent.selfupdate")

STATE_FILE = "self-update.json"
MAX_START_ATTEMPTS = 3
RESTART_EXIT_CODE = 75  # EX_TEMPFAIL: the service manager starts the agent again


class UpdateRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def running_agent_file() -> Optional[Path]:
    """The redflag-agent.pyz this process runs from, or None (run from source: no self-update)."""
    candidate = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if candidate and candidate.is_file() and zipfile.is_zipfile(str(candidate)):
        return candidate
    return None


class UpdateState:
    """``self-update.json`` beside the config: the highest accepted version and any update in flight."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".self-update.", dir=str(self.path.parent))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


def _verify(key: Optional[PublicKey], signature: str, signed: bytes, reason: str, what: str) -> None:
    if key is None:
        raise UpdateRefused(reason, f"the {what} is signed by a key this agent has not pinned")
    try:
        key.verify(base64.b64decode(signature), signed)
    except (InvalidSignature, ValueError):
        raise UpdateRefused(reason, f"the {what} signature does not verify") from None


def verify_update(params: Mapping[str, Any], *, agent_id: str, keys: Mapping[str, PublicKey],
                  current_version: str, highest_accepted: str, now: float) -> dict[str, Any]:
    """Check nonce and manifest; returns the manifest. Raises UpdateRefused naming the reason."""
    try:
        nonce, manifest = dict(params["update_nonce"]), dict(params["manifest"])
        version = str(params["version"])
        signed_nonce = update_nonce_bytes(agent_id=nonce["agent_id"], version=nonce["version"],
                                          issued_at=nonce["issued_at"], expires_at=nonce["expires_at"],
                                          downgrade=nonce["downgrade"], nonce=nonce["nonce"])
        signed_manifest = release_manifest_bytes(version=manifest["version"], platform=manifest["platform"],
                                                 size=manifest["size"], sha256=manifest["sha256"],
                                                 created=manifest["created"])
        target = version_key(version)
    except (KeyError, TypeError, ValueError):
        raise UpdateRefused("malformed", "the update command is missing or garbles its nonce or manifest") from None
    _verify(keys.get(str(nonce.get("key_id"))), str(nonce.get("signature", "")), signed_nonce, "bad_update_nonce",
            "update nonce")
    if nonce["agent_id"] != agent_id:
        raise UpdateRefused("wrong_agent", f"the update nonce is for agent {nonce['agent_id']}")
    if nonce["expires_at"] <= now:
        raise UpdateRefused("expired", "the update nonce has expired")
    if not nonce["version"] == manifest["version"] == version:
        raise UpdateRefused("version_mismatch", "the nonce, manifest and command name different versions")
    _verify(keys.get(str(manifest.get("key_id"))), str(manifest.get("signature", "")), signed_manifest,
            "bad_manifest", "release manifest")
    floor = max(version_key(current_version), version_key(highest_accepted or "0"))
    if target < floor and not nonce["downgrade"]:
        raise UpdateRefused("downgrade", f"{version} is older than {current_version} and the server did not "
                                         "explicitly allow a downgrade")
    return manifest


class SelfUpdater:
    def __init__(self, *, state_dir: Path, agent_id: str, current_version: str,
                 keys: Callable[[], Mapping[str, PublicKey]], download: Callable[[str, Path, int], str],
                 request_restart: Callable[[], None], agent_file: Callable[[], Optional[Path]] = running_agent_file,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = UpdateState(state_dir)
        self.agent_id = agent_id
        self.current_version = current_version
        self.keys = keys
        self.download = download
        self.request_restart = request_restart
        self.agent_file = agent_file
        self.clock = clock

    def apply(self, command_id: str, params: Mapping[str, Any]) -> str:
        """Verify, download, swap and ask for a restart; returns a progress line. Raises UpdateRefused."""
        state = self.state.load()
        manifest = verify_update(params, agent_id=self.agent_id, keys=self.keys(),
                                 current_version=self.current_version,
                                 highest_accepted=state.get("highest_accepted", "0"), now=self.clock())
        target = self.agent_file()
        if target is None:
            raise UpdateRefused("not_a_pyz", "this agent does not run from redflag-agent.pyz; update it by hand")
        incoming = target.with_name(f".{target.name}.incoming")
        try:
            digest = self.download(manifest["version"], incoming, int(manifest["size"]))
            if incoming.stat().st_size != int(manifest["size"]) or digest != manifest["sha256"]:
                raise UpdateRefused("bad_artifact", "the downloaded file does not match the signed size and SHA-256")
            if not zipfile.is_zipfile(str(incoming)):
                raise UpdateRefused("bad_artifact", "the downloaded file is not a zipapp")
            previous = target.with_name(target.name + ".previous")
            os.replace(target, previous)  # keep the old file; an instant later the new one is in place
            os.chmod(incoming, 0o755)
            os.replace(incoming, target)
        finally:
            if incoming.exists():
                incoming.unlink()
        self.state.save({**state, "pending": {"command_id": command_id, "from": self.current_version,
                                              "to": manifest["version"], "file": str(target), "attempts": 0}})
        self.request_restart()
        return f"installed {manifest['version']} at {target}; restarting"

    def on_start(self) -> Optional[dict[str, Any]]:
        """At start-up: what to report about an update in flight (None: nothing)."""
        state = self.state.load()
        if "rolled_back" in state:
            report = state.pop("rolled_back")
            self.state.save(state)
            return {"command_id": report["command_id"], "status": ResultStatus.FAILED, "output": report["reason"]}
        pending = state.get("pending")
        if pending and pending["to"] != self.current_version:
            state.pop("pending")
            self.state.save(state)
            return {"command_id": pending["command_id"], "status": ResultStatus.FAILED,
                    "output": f"after the restart this agent runs {self.current_version}, not {pending['to']}"}
        return None

    def after_cycle(self, checked_in: bool) -> Optional[dict[str, Any]]:
        """The new version confirms after a check-in, or rolls back after repeated failures."""
        state = self.state.load()
        pending = state.get("pending")
        if not pending or pending["to"] != self.current_version:
            return None
        if checked_in:
            state.pop("pending")
            state["highest_accepted"] = max(self.current_version, state.get("highest_accepted", "0"), key=version_key)
            self.state.save(state)
            return {"command_id": pending["command_id"], "status": ResultStatus.SUCCEEDED,
                    "output": f"now running {self.current_version} (was {pending['from']})"}
        pending["attempts"] += 1
        if pending["attempts"] < MAX_START_ATTEMPTS:
            self.state.save(state)
            return None
        target = Path(pending["file"])
        previous = target.with_name(target.name + ".previous")
        if previous.exists():
            os.replace(previous, target)
        state.pop("pending")
        state["rolled_back"] = {"command_id": pending["command_id"],
                                "reason": f"{pending['to']} could not check in {MAX_START_ATTEMPTS} times; "
                                          f"restored {pending['from']}"}
        self.state.save(state)
        logger.error("new version could not check in; restored %s and restarting", pending["from"])
        self.request_restart()
        return None
