"""The protocol the server and the agent share: its vocabulary and the signed bytes.

The server imports this module to sign; the agent imports it to verify. One
definition of the canonical bytes means the two can never disagree. Standard
library only (the agent runs on Python 3.9 without Django).

The vocabulary (command types, result statuses, package types, capabilities)
is the agent's one copy of the server's choices; tests/server/
test_protocol_agreement.py fails the day the two drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Optional

ENVELOPE_VERSION = 1


# --- vocabulary -------------------------------------------------------------------


class CommandType:
    """What the server may ask an agent to do (the server's agents_app.choices.CommandType)."""

    SCAN_UPDATES = "scan_updates"
    SCAN_STORAGE = "scan_storage"
    SCAN_SYSTEM = "scan_system"
    SCAN_DOCKER = "scan_docker"
    DRY_RUN_UPDATE = "dry_run_update"
    INSTALL_UPDATES = "install_updates"
    CONFIRM_DEPENDENCIES = "confirm_dependencies"
    ENABLE_HEARTBEAT = "enable_heartbeat"
    DISABLE_HEARTBEAT = "disable_heartbeat"
    REBOOT = "reboot"
    UPDATE_AGENT = "update_agent"
    ALL = (SCAN_UPDATES, SCAN_STORAGE, SCAN_SYSTEM, SCAN_DOCKER, DRY_RUN_UPDATE, INSTALL_UPDATES,
           CONFIRM_DEPENDENCIES, ENABLE_HEARTBEAT, DISABLE_HEARTBEAT, REBOOT, UPDATE_AGENT)


class ResultStatus:
    """How an agent reports a command it ran: exactly what the server's command-result endpoint accepts."""

    RUNNING = "running"  # started, finishes later (a self-update confirms after its restart)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ALL = (RUNNING, SUCCEEDED, FAILED)

    @classmethod
    def of(cls, succeeded: bool) -> str:
        return cls.SUCCEEDED if succeeded else cls.FAILED


class PackageType:
    """The package managers an agent scans and installs with (the server's agents_app.choices.PackageType)."""

    APT = "apt"
    DNF = "dnf"
    DOCKER = "docker"
    WINDOWS_UPDATE = "windows_update"
    WINGET = "winget"
    PACMAN = "pacman"
    ZYPPER = "zypper"
    FLATPAK = "flatpak"
    ALL = (APT, DNF, DOCKER, WINDOWS_UPDATE, WINGET, PACMAN, ZYPPER, FLATPAK)


class Capability:
    """What an agent can report: every package type plus storage and system facts (the server's SubsystemName)."""

    STORAGE = "storage"
    SYSTEM = "system"
    ALWAYS_AVAILABLE = (STORAGE, SYSTEM)
    ALL = PackageType.ALL + ALWAYS_AVAILABLE


# --- agent-side events ------------------------------------------------------------
# The server refuses (400, naming the event) an event whose metadata is larger than this: as
# compact JSON in bytes, in nesting depth (an object or list inside the top-level object is depth 2),
# or in keys counted at every level. The agent trims its own metadata to fit.

EVENT_METADATA_MAX_BYTES = 8 * 1024
EVENT_METADATA_MAX_DEPTH = 4
EVENT_METADATA_MAX_KEYS = 100


def event_metadata_problem(metadata: Any) -> Optional[str]:
    """Why ``metadata`` is over the caps above; None when it fits."""
    if not isinstance(metadata, dict):
        return "metadata must be an object"
    keys, deepest, stack = 0, 0, [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > EVENT_METADATA_MAX_DEPTH:
            return f"metadata nests deeper than {EVENT_METADATA_MAX_DEPTH} levels"
        children = value.values() if isinstance(value, dict) else value
        keys += len(value) if isinstance(value, dict) else 0
        if keys > EVENT_METADATA_MAX_KEYS:
            return f"metadata has more than {EVENT_METADATA_MAX_KEYS} keys"
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    size = len(canonical_json(metadata))
    if size > EVENT_METADATA_MAX_BYTES:
        return f"metadata is {size} bytes as JSON, over {EVENT_METADATA_MAX_BYTES}"
    return None


# --- the fast channel -------------------------------------------------------------
# GET /api/v1/agents/{id}/wait holds the request open and answers newline-delimited JSON: a first
# line {"waiting": true}, then a blank line at least every WAKE_KEEPALIVE_SECONDS (so neither a
# proxy nor the agent takes the silence for a dead connection), then one last line
# {"wake": true|false, "reason": ...} when something is waiting for the agent or the hold ends.
# A wake-up carries nothing: the agent then checks in as usual.

WAKE_KEEPALIVE_SECONDS = 20
WAKE_REASONS = ("pending", "notified", "queued", "reconnected", "hold_ended", "superseded")

# --- package names ----------------------------------------------------------------
# One grammar per package manager, checked by the server when a scan reports a name and again before it
# signs a command, and by the agent before it starts any process. Each is deliberately narrower than
# what the tool would accept: a name is only ever a package name, never an option, a URL, a path, a
# glob, a group (@...), a module (name:stream) or an environment, and it holds no whitespace or shell
# metacharacter. Two shapes the characters alone would let through are refused as well, because the
# tool reads them as something else than a name (checked on Debian 12's apt 2.6.1 and dnf 4.14):
# an APT name ending in "-" (apt-get install reads "openssh-server-" as "remove openssh-server", even
# with --only-upgrade) and an RPM name ending in ".rpm" (dnf reads "x.rpm" as a package file in its
# working directory, even after "--").

PACKAGE_NAME_MAX_CHARS = 255

_DOCKER_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOCKER_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOCKER_DOMAIN = rf"{_DOCKER_LABEL}(?:\.{_DOCKER_LABEL})*(?::[0-9]{{1,5}})?"
_WINGET_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_+-]{0,31}"
_RPM_NAME = r"(?!.*\.[rR][pP][mM]$)[A-Za-z0-9_+][A-Za-z0-9._+-]*"
_FLATPAK_SEGMENT = r"[A-Za-z_][A-Za-z0-9_-]*"

PACKAGE_NAME_GRAMMAR: dict[str, tuple[re.Pattern, str]] = {
    PackageType.APT: (
        re.compile(r"[a-z0-9][a-z0-9+.-]*[a-z0-9+.](?::[a-z0-9]+(?:-[a-z0-9]+)*)?"),
        "a Debian package name: lowercase letters, digits, '+', '.', '-' (not last), an optional ':arch'",
    ),
    PackageType.DNF: (
        re.compile(_RPM_NAME),
        "an RPM package name: letters, digits, '_', '+', '.', '-' (an optional '.arch'), no path, URL, glob, "
        "@group or .rpm file",
    ),
    PackageType.DOCKER: (
        re.compile(rf"(?:{_DOCKER_DOMAIN}/)?{_DOCKER_COMPONENT}(?:/{_DOCKER_COMPONENT})*"
                   r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?"),
        "a Docker image reference: [registry/]name[:tag][@digest]",
    ),
    PackageType.WINDOWS_UPDATE: (
        re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
        "a Windows Update id (a GUID)",
    ),
    PackageType.WINGET: (
        re.compile(rf"{_WINGET_SEGMENT}(?:\.{_WINGET_SEGMENT}){{1,7}}|[A-Z0-9]{{12}}"),
        "a winget package id: Publisher.Package (letters, digits, '_', '+', '-') or a 12-character Store id",
    ),
    PackageType.PACMAN: (
        re.compile(r"[a-z0-9@_+][a-z0-9@._+-]*"),
        "an Arch package name: lowercase letters, digits, '@', '.', '_', '+', '-' (not first)",
    ),
    PackageType.ZYPPER: (
        re.compile(_RPM_NAME),
        "an RPM package name: letters, digits, '_', '+', '.', '-', no path, URL, glob, pattern: or .rpm file",
    ),
    PackageType.FLATPAK: (
        re.compile(rf"{_FLATPAK_SEGMENT}(?:\.{_FLATPAK_SEGMENT}){{2,}}(?:/[A-Za-z0-9_]+/[A-Za-z0-9_.-]+)?"),
        "a Flatpak ref: a reverse-DNS application or runtime id of at least three parts, optionally /arch/branch",
    ),
}


def package_name_problem(package_type: str, name: Any) -> Optional[str]:
    """Why ``name`` is not a package name of ``package_type``; None when it is one."""
    if package_type not in PACKAGE_NAME_GRAMMAR:
        return f"unknown package type {str(package_type)[:40]!r}"
    if not isinstance(name, str):
        return "a package name must be a string"
    if not 0 < len(name) <= PACKAGE_NAME_MAX_CHARS:
        return f"a package name has 1 to {PACKAGE_NAME_MAX_CHARS} characters"
    pattern, description = PACKAGE_NAME_GRAMMAR[package_type]
    if name.startswith("-") or not pattern.fullmatch(name):
        return f"not {description}"
    return None


# --- agent tags --------------------------------------------------------------------
# Tags an agent reports from its config file (``tags`` in config.json), checked by the agent when it
# reads them and again by the server when it stores them (Agent.reported_tags); the admin's own tags
# follow the same rules (agents_app.admin.common.TagsField). A comma separates tags in the admin's
# one-line field, so no tag holds one.

TAGS_MAX_COUNT = 50
TAG_MAX_CHARS = 64


def tags_problem(tags: Any) -> Optional[str]:
    """Why ``tags`` is not a list of tags; None when it is one."""
    if not isinstance(tags, list):
        return "tags must be a list of strings"
    if len(tags) > TAGS_MAX_COUNT:
        return f"at most {TAGS_MAX_COUNT} tags"
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            return "each tag must be a non-empty string"
        shown = repr(tag[:20])
        if len(tag) > TAG_MAX_CHARS:
            return f"tag {shown} is longer than {TAG_MAX_CHARS} characters"
        if not tag.isprintable() or tag != tag.strip() or "," in tag:
            return f"tag {shown} holds a control character, a comma or surrounding spaces"
    if len(set(tags)) != len(tags):
        return "a tag is listed twice"
    return None


# --- reboot -------------------------------------------------------------------------
# A reboot command may announce itself: ``delay_minutes`` before the machine goes down (``shutdown -r
# +N``; Windows ``/t`` in seconds) and a ``message`` shown to logged-in users. The server refuses bad
# values before it signs the command; the agent checks again before it starts shutdown. The message is
# one argv element (no shell), but shutdown still parses options from every argument (GNU getopt
# permutes them; Windows reads "/x"), so a message may not start with "-" or "/".

REBOOT_DELAY_MAX_MINUTES = 1440
REBOOT_MESSAGE_MAX_CHARS = 200
# Without a delay: one minute, so the command's result can still reach the server before the reboot.
DEFAULT_REBOOT_DELAY_MINUTES = 1
DEFAULT_REBOOT_MESSAGE = "RedFlag: reboot requested by an administrator"
REBOOT_PARAMS = ("delay_minutes", "message")


def reboot_params_problem(params: Any) -> Optional[str]:
    """Why a reboot command's ``params`` are refused; None when they are fine (both keys are optional)."""
    if not isinstance(params, Mapping):
        return "reboot params must be an object"
    unknown = sorted(str(key)[:40] for key in params if key not in REBOOT_PARAMS)
    if unknown:
        return f"reboot takes only delay_minutes and message, not {', '.join(unknown)}"
    delay = params.get("delay_minutes", DEFAULT_REBOOT_DELAY_MINUTES)
    if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= REBOOT_DELAY_MAX_MINUTES:
        return f"delay_minutes must be a whole number of minutes from 0 to {REBOOT_DELAY_MAX_MINUTES}"
    message = params.get("message", DEFAULT_REBOOT_MESSAGE)
    if not isinstance(message, str) or not message.strip():
        return "message must be a non-empty string"
    if len(message) > REBOOT_MESSAGE_MAX_CHARS:
        return f"message must be at most {REBOOT_MESSAGE_MAX_CHARS} characters"
    if not message.isprintable():
        return "message must hold printable characters only (no newline or control character)"
    if message.startswith(("-", "/")):
        return "message must not start with '-' or '/' (shutdown would read it as an option)"
    return None


# --- signed bytes -----------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def params_digest(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(params)).hexdigest()


def command_signing_bytes(
    *,
    agent_id: str,
    command_id: str,
    command_type: str,
    params: Mapping[str, Any],
    issued_at: int,
    expires_at: int,
    nonce: str,
) -> bytes:
    """The exact bytes an Ed25519 command signature covers.

    Times are whole Unix seconds; ids are canonical lowercase UUID strings.
    """
    envelope: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "agent_id": agent_id,
        "command_id": command_id,
        "type": command_type,
        "params_sha256": params_digest(params),
        "issued_at": int(issued_at),
        "expires_at": int(expires_at),
        "nonce": nonce,
    }
    return canonical_json(envelope)


def command_signing_bytes_from_wire(command: Mapping[str, Any]) -> bytes:
    """Signing bytes from a command as the check-in reply carries it."""
    return command_signing_bytes(
        agent_id=command["agent_id"],
        command_id=command["id"],
        command_type=command["type"],
        params=command["params"],
        issued_at=command["issued_at"],
        expires_at=command["expires_at"],
        nonce=command["nonce"],
    )


def b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def key_endorsement_bytes(*, key_id: str, public_key: str) -> bytes:
    """What a signing key's predecessor signs to vouch for it (key rotation).

    An agent pins the keys it got at registration and accepts a later key only
    with an endorsement chain back to a pinned key.
    """
    return canonical_json({"v": ENVELOPE_VERSION, "purpose": "redflag-signing-key", "key_id": key_id,
                           "public_key": public_key})


def release_manifest_bytes(*, version: str, platform: str, size: int, sha256: str, created: int) -> bytes:
    """The exact bytes an agent release's Ed25519 signature covers.

    ``created`` is whole Unix seconds; ``sha256`` the lowercase hex digest of
    the artifact. The server signs these bytes when it stores a release; the
    agent (and the installers, which rebuild the same canonical JSON) verify them.
    """
    return canonical_json({"v": ENVELOPE_VERSION, "purpose": "redflag-agent-release", "version": version,
                           "platform": platform, "size": int(size), "sha256": sha256, "created": int(created)})


def update_nonce_bytes(*, agent_id: str, version: str, issued_at: int, expires_at: int, downgrade: bool,
                       nonce: str) -> bytes:
    """What the server signs to allow one agent to move to one version (self-update), briefly.

    ``downgrade`` is true only when an admin explicitly allowed going to an older version.
    """
    return canonical_json({"v": ENVELOPE_VERSION, "purpose": "redflag-agent-update", "agent_id": agent_id,
                           "version": version, "issued_at": int(issued_at), "expires_at": int(expires_at),
                           "downgrade": bool(downgrade), "nonce": nonce})


def version_key(version: str) -> tuple[int, ...]:
    """Numeric order of agent versions, shared by server and agent: 0.1.23 < 0.1.23.5 < 0.1.24 < 0.10.

    Trailing ``.0`` parts do not count (1.0 == 1). ValueError for anything but dot-separated numbers.
    """
    text = str(version)
    if not text or not all(part.isdigit() for part in text.split(".")):
        raise ValueError(f"invalid version {version!r}: use dot-separated numbers, e.g. 0.1.23.5")
    parts = [int(part) for part in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)
