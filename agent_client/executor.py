"""Verify and run the server's commands, at most once each, and queue what they produce.

For every command from a check-in:

1. Verify it: the Ed25519 signature (over agent_client.protocol's canonical
   bytes) with a key pinned at registration, this agent's id, not expired,
   and an id never executed before (the ledger survives restarts).
   A refused command never runs; it becomes a ``security_violation`` event.
2. Claim it in the ledger *before* running it: after a crash mid-way the
   command is not run again (the server times it out instead).
3. Run it through the scanner or installer for its package type.
4. Queue its reports, then its result, in the outbox; the runner's flush
   sends them in that order and keeps them until the server acknowledges.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import sqlite3
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from agent_client.events import AGENT_CHECKIN, CONFIG_CHANGED, SECURITY_VIOLATION, make_event
from agent_client.outbox import KIND_COMMAND_RESULT, KIND_SYSTEM_REPORT, KIND_UPDATES_REPORT, Channel, Outbox
from agent_client.protocol import (
    DEFAULT_REBOOT_DELAY_MINUTES,
    DEFAULT_REBOOT_MESSAGE,
    CommandType,
    ResultStatus,
    command_signing_bytes_from_wire,
    key_endorsement_bytes,
    reboot_params_problem,
    tags_problem,
)
from agent_client.scanners.base import (
    MAX_NOT_CHECKED,
    OperationResult,
    PackageNamesRefused,
    ScanError,
    Scanner,
    not_checked_line,
    run_command,
    tail,
)
from agent_client.scanners.verify import disagreement_event, verify_scan
from agent_client.selfupdate import UpdateRefused
from agent_client.signatures import InvalidSignature, PublicKey
from agent_client.transport import ApiError

logger = logging.getLogger("redflag.agent.executor")

LEDGER_FILE_NAME = "executed-commands.sqlite3"
# Ledger rows outlive their command's expiry by this much; an expired command is refused anyway.
LEDGER_GRACE_SECONDS = 7 * 24 * 3600
REQUIRED_FIELDS = {"id": str, "agent_id": str, "type": str, "params": dict, "issued_at": int,
                   "expires_at": int, "nonce": str, "key_id": str, "signature": str}
SCAN_COMMANDS = (CommandType.SCAN_UPDATES, CommandType.SCAN_DOCKER)
SYSTEM_COMMANDS = (CommandType.SCAN_SYSTEM, CommandType.SCAN_STORAGE)
PACKAGE_COMMANDS = (CommandType.DRY_RUN_UPDATE, CommandType.INSTALL_UPDATES, CommandType.CONFIRM_DEPENDENCIES)


class CommandRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ExecutedLedger:
    """Command ids this agent has started, in a small SQLite file (0600) beside the config."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS executed (command_id TEXT PRIMARY KEY, expires_at REAL NOT NULL,"
                " started_at REAL NOT NULL)"
            )
        try:
            self.path.chmod(0o600)
        except OSError:
            pass

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    def claim(self, command_id: str, expires_at: float, now: float) -> bool:
        """Record the id durably; False when it was claimed before (a replay or a repeat)."""
        connection = self._connect()
        try:
            connection.execute("DELETE FROM executed WHERE expires_at < ?", (now - LEDGER_GRACE_SECONDS,))
            connection.execute("INSERT INTO executed VALUES (?, ?, ?)", (command_id, expires_at, now))
            return True
        except sqlite3.IntegrityError:
            return False
        finally:
            connection.close()

    def __contains__(self, command_id: str) -> bool:
        connection = self._connect()
        try:
            row = connection.execute("SELECT 1 FROM executed WHERE command_id = ?", (command_id,)).fetchone()
            return row is not None
        finally:
            connection.close()


def pinned_keys(signing_keys: list[Mapping[str, Any]]) -> dict[str, PublicKey]:
    keys = {}
    for key in signing_keys:
        try:
            keys[str(key["key_id"])] = PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
        except (KeyError, ValueError, TypeError):
            logger.warning("ignoring a malformed pinned signing key")
    return keys


def verify_command(command: Mapping[str, Any], *, agent_id: str, keys: Mapping[str, PublicKey],
                   now: float) -> None:
    """Raise CommandRefused unless the command is well-formed, signed by a pinned key, ours and current."""
    for field, kind in REQUIRED_FIELDS.items():
        if not isinstance(command.get(field), kind) or isinstance(command.get(field), bool):
            raise CommandRefused("malformed", f"command field {field!r} is missing or not a {kind.__name__}")
    key = keys.get(command["key_id"])
    if key is None:
        raise CommandRefused("unknown_key", f"command {command['id']} is signed by unknown key {command['key_id']}")
    try:
        key.verify(base64.b64decode(command["signature"]), command_signing_bytes_from_wire(command))
    except (InvalidSignature, ValueError):
        raise CommandRefused("bad_signature", f"command {command['id']} has an invalid signature") from None
    if command["agent_id"] != agent_id:
        raise CommandRefused("wrong_agent", f"command {command['id']} is for agent {command['agent_id']}")
    if command["expires_at"] <= now:
        raise CommandRefused("expired", f"command {command['id']} expired")


def reboot_argv(delay_minutes: int, message: str, platform: str = sys.platform) -> list[str]:
    """shutdown's argv for a reboot announced ``delay_minutes`` ahead with ``message`` (checked by
    protocol.reboot_params_problem first: the message is one argument and never an option)."""
    if platform == "win32":
        return ["shutdown", "/r", "/t", str(delay_minutes * 60), "/c", message]
    return ["shutdown", "-r", f"+{delay_minutes}", message]


def schedule_reboot(delay_minutes: int = DEFAULT_REBOOT_DELAY_MINUTES,
                    message: str = DEFAULT_REBOOT_MESSAGE) -> OperationResult:
    """Ask the OS to reboot after the announced delay (by default a minute, so the result can still
    reach the server first; the outbox keeps it across the reboot otherwise)."""
    argv = reboot_argv(delay_minutes, message)
    try:
        outcome = run_command(argv, timeout=60)
    except ScanError as exc:
        return OperationResult(False, -1, str(exc), 0.0)
    return OperationResult(outcome.exit_code == 0, outcome.exit_code, tail(outcome.stdout + outcome.stderr),
                           outcome.duration_seconds)


def endorsed_keys(pinned: list[Mapping[str, Any]], offered: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The offered keys reachable by an endorsement chain from a pinned key (key rotation)."""
    trusted = pinned_keys(list(pinned))
    learned: list[dict[str, Any]] = []
    progress = True
    while progress:
        progress = False
        for key in offered:
            key_id = str(key.get("key_id", ""))
            endorser = trusted.get(str(key.get("endorsed_by", "")))
            if not key_id or key_id in trusted or endorser is None:
                continue
            try:
                signed = key_endorsement_bytes(key_id=key_id, public_key=str(key["public_key"]))
                endorser.verify(base64.b64decode(str(key.get("endorsement", ""))), signed)
                public = PublicKey.from_public_bytes(base64.b64decode(str(key["public_key"])))
            except (InvalidSignature, ValueError, TypeError, KeyError):
                continue
            trusted[key_id] = public
            learned.append({name: key.get(name) for name in ("key_id", "algorithm", "public_key", "primary",
                                                               "created_at", "endorsed_by", "endorsement")})
            progress = True
    return learned


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat()


def system_report_body(facts: Mapping[str, Any]) -> dict[str, Any]:
    """machine.system_facts() in the shape of POST /reports/system."""
    os_facts, cpu, memory = facts.get("os", {}), facts.get("cpu", {}), facts.get("memory", {})
    reboot = facts.get("reboot", {})
    total = int(memory.get("total_bytes") or 0)
    body = {
        "hostname": facts.get("hostname", ""),
        "os_name": os_facts.get("name", ""),
        "os_version": os_facts.get("version", ""),
        "kernel": os_facts.get("kernel", ""),
        "arch": os_facts.get("arch", ""),
        "cpu_model": cpu.get("model", "")[:255],
        "cpu_count": int(cpu.get("logical_cores") or 0),
        "memory_total_bytes": total,
        "memory_used_bytes": max(0, total - int(memory.get("available_bytes") or 0)),
        "disks": [{key: disk[key] for key in ("mountpoint", "device", "fstype", "total_bytes", "used_bytes", "percent")}
                  for disk in facts.get("disks", [])],
        "uptime_seconds": int(facts.get("uptime_seconds") or 0),
        "ip_addresses": [address["address"] for address in facts.get("ip_addresses", [])],
        "reboot_required": bool(reboot.get("required")),
        "reboot_reason": reboot.get("reason", ""),
    }
    if facts.get("boot_time"):
        body["boot_time"] = _iso(float(facts["boot_time"]))
    return body


class CommandExecutor:
    """The runner's command handler."""

    def __init__(
        self,
        *,
        agent_id: str,
        signing_keys: list[Mapping[str, Any]],
        outbox: Outbox,
        ledger: ExecutedLedger,
        scanners: Mapping[str, Scanner],
        system_facts: Callable[[], dict[str, Any]],
        record: Callable[[dict[str, Any]], None],
        set_heartbeat: Callable[[Optional[dt.datetime]], None] = lambda until: None,
        reboot: Optional[Callable[[int, str], OperationResult]] = None,
        fetch_keys: Optional[Callable[[], list[dict[str, Any]]]] = None,
        self_updater: Optional[Any] = None,
        save_keys: Callable[[list[dict[str, Any]]], None] = lambda keys: None,
        clock: Callable[[], float] = time.time,
        tags: Callable[[], Any] = lambda: None,
    ) -> None:
        self.agent_id = agent_id
        self.pinned = [dict(key) for key in signing_keys]
        self.keys = pinned_keys(self.pinned)
        self.fetch_keys = fetch_keys
        self.self_updater = self_updater
        self.save_keys = save_keys
        self.outbox = outbox
        self.ledger = ledger
        self.scanners = dict(scanners)
        self.system_facts = system_facts
        self.record = record
        self.set_heartbeat = set_heartbeat
        self.reboot = reboot
        self.clock = clock
        self.tags = tags
        # Set by an install that succeeded: handle() then rescans that package type.
        self.installed_package_type: Optional[str] = None

    def __call__(self, commands: list[dict[str, Any]]) -> None:
        for command in commands:
            self.handle(command)

    def handle(self, command: dict[str, Any]) -> Optional[str]:
        """Verify, claim, run, queue. Returns the result status, or None when refused."""
        now = self.clock()
        try:
            try:
                verify_command(command, agent_id=self.agent_id, keys=self.keys, now=now)
            except CommandRefused as refusal:
                if refusal.reason != "unknown_key" or not self.learn_keys():
                    raise
                verify_command(command, agent_id=self.agent_id, keys=self.keys, now=now)
            if not self.ledger.claim(command["id"], float(command["expires_at"]), now):
                raise CommandRefused("replayed", f"command {command['id']} was already executed")
        except CommandRefused as refusal:
            logger.error("refused command: %s", refusal)
            self.record(make_event(
                SECURITY_VIOLATION, "critical", f"Refused a command: {refusal}", severity="critical",
                component="security",
                metadata={"reason": refusal.reason, "command_id": str(command.get("id", ""))[:64],
                          "command_type": str(command.get("type", ""))[:64]},
            ))
            return None
        self.installed_package_type = None
        status, output, details, reports = self.run(command)
        for kind, item_id, payload in reports:
            self.outbox.add(kind, payload, item_id=item_id)
        self.outbox.add(KIND_COMMAND_RESULT, {"command_id": command["id"], "status": status, "output": output,
                                              **details}, item_id=f"result-{command['id']}")
        if self.installed_package_type is not None:
            self.rescan_after_install(self.installed_package_type)
        return status

    def rescan_after_install(self, package_type: str) -> None:
        """Scan the installed package type at once and queue the report after the install's result, so
        the server sees what the install changed (a dependency it upgraded no longer pending) now rather
        than at the next scheduled scan. A failed rescan is logged; the schedule catches up."""
        try:
            _status, output, _details, reports = self._scan({"package_type": package_type})
        except Exception as exc:  # the install's result is queued already: nothing else may fail with it
            logger.warning("rescan after install failed: %s", exc)
            return
        for kind, item_id, payload in reports:
            self.outbox.add(kind, payload, item_id=item_id)
        logger.info("rescan after install: %s", output)

    def learn_keys(self) -> bool:
        """Fetch the server's keys and pin those endorsed by a key already pinned."""
        if self.fetch_keys is None:
            return False
        try:
            offered = self.fetch_keys()
        except Exception as exc:  # the server is unreachable: refuse now, learn on a later command
            logger.warning("could not fetch signing keys: %s", exc)
            return False
        learned = endorsed_keys(self.pinned, offered)
        if not learned:
            return False
        self.pinned.extend(learned)
        self.keys = pinned_keys(self.pinned)
        self.save_keys(list(self.pinned))
        for key in learned:
            logger.info("pinned signing key %s, endorsed by %s", key["key_id"], key["endorsed_by"])
            self.record(make_event(
                CONFIG_CHANGED, "success", f"Pinned rotated signing key {key['key_id']}", component="security",
                metadata={"key_id": key["key_id"], "endorsed_by": key["endorsed_by"]},
            ))
        return True

    # -- running ---------------------------------------------------------------------

    def run(self, command: dict[str, Any]) -> tuple[str, str, dict[str, Any], list[tuple[str, str, dict[str, Any]]]]:
        """(status, output, result details, reports) — never raises for a failed operation."""
        kind, params = command["type"], command["params"]
        try:
            if kind in SCAN_COMMANDS:
                return self._scan(params)
            if kind in SYSTEM_COMMANDS:
                report = system_report_body(self.system_facts())
                report.update(self.reported_tags())
                return ResultStatus.SUCCEEDED, "system facts collected", {}, [
                    (KIND_SYSTEM_REPORT, f"system-{uuid.uuid4().hex}", report)]
            if kind in PACKAGE_COMMANDS:
                return self._package_operation(kind, params)
            if kind == CommandType.ENABLE_HEARTBEAT:
                minutes = int(params.get("duration_minutes") or 10)
                self.set_heartbeat(dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes))
                return ResultStatus.SUCCEEDED, f"heartbeat on for {minutes} min", {}, []
            if kind == CommandType.DISABLE_HEARTBEAT:
                self.set_heartbeat(None)
                return ResultStatus.SUCCEEDED, "heartbeat off", {}, []
            if kind == CommandType.REBOOT:
                return self._reboot(params)
            if kind == CommandType.UPDATE_AGENT:
                return self._update(command)
        except PackageNamesRefused as refusal:
            logger.warning("command %s: %s", command["id"], refusal)
            return ResultStatus.FAILED, str(refusal), {}, []
        except ScanError as exc:
            return ResultStatus.FAILED, str(exc), {}, []
        except Exception as exc:  # a bug in one handler must still produce a failed result
            logger.exception("command %s failed", command["id"])
            return ResultStatus.FAILED, f"{type(exc).__name__}: {exc}", {}, []
        return ResultStatus.FAILED, f"this agent does not support {kind!r} commands", {}, []

    def reported_tags(self) -> dict[str, Any]:
        """``{"tags": [...]}`` from the config file for the system report; nothing (the server keeps what it
        has) when the config holds none or bad ones, which a warning event names."""
        tags = self.tags()
        if tags is None:
            return {}
        problem = tags_problem(tags)
        if problem:
            logger.warning("not reporting the tags in the config file: %s", problem)
            self.record(make_event(CONFIG_CHANGED, "warning", f"Tags in the config file not reported: {problem}",
                                   severity="warning", metadata={"reason": "bad_tags"}))
            return {}
        return {"tags": list(tags)}

    def _scanner(self, package_type: Any, *, probe: bool = True) -> Scanner:
        scanner = self.scanners.get(package_type)
        if scanner is None:
            raise ScanError(f"no scanner for package type {package_type!r} on this agent")
        if probe and not scanner.is_available():
            raise ScanError(f"{package_type} is not available on this host")
        return scanner

    def _scan(self, params: Mapping[str, Any]):
        """One scan report: the scanner's records, minus any the server would refuse (see
        Scanner.sort_for_report), which go to ``not_checked`` with what the scanner could not check.
        With ``verify: true`` the scan is compared with the tool's own listing (scanners/verify.py);
        a disagreement becomes a warning event."""
        package_type = params.get("package_type")
        scanner = self._scanner(package_type)
        scanned = scanner.scan()
        records, refused = scanner.sort_for_report(scanned)
        not_checked = [_not_checked_line(item) for item in getattr(scanner, "last_not_checked", []) or []] + refused
        updates = []
        for record in records:
            row = record.to_dict()
            row.pop("package_type", None)
            updates.append(row)
        report_id = uuid.uuid4().hex
        report = {"report_id": report_id, "package_type": package_type, "updates": updates,
                  "not_checked": not_checked[:MAX_NOT_CHECKED]}
        output = f"{len(updates)} update(s) found"
        if not_checked:
            output += f", {len(not_checked)} not checked"
        details = {"report_id": report_id, "updates": len(updates)}
        if params.get("verify") is True:
            verification = verify_scan(scanner, scanned)
            details["verify"] = verification.summary()
            if verification.disagreements:
                self.record(disagreement_event(verification))
        return ResultStatus.SUCCEEDED, output, {"details": details}, [
            (KIND_UPDATES_REPORT, f"updates-{report_id}", report)]

    def _package_operation(self, kind: str, params: Mapping[str, Any]):
        # Not probed again: probing runs the tool (dnf repolist, a Docker ping), and a refused name must
        # start no process at all. An operation follows a scan that found the tool working; a tool gone
        # since then fails with its own error.
        scanner = self._scanner(params.get("package_type"), probe=False)
        packages = params.get("packages")
        # Anything but a list of names is no names at all (a string must not become its letters).
        names = [str(name) for name in packages] if isinstance(packages, list) else []
        if kind == CommandType.DRY_RUN_UPDATE:
            outcome = scanner.dry_run(names)
        else:
            outcome = scanner.install(names)
            if outcome.succeeded:  # a failed install leaves the rescan to the schedule
                self.installed_package_type = scanner.package_type
        details = {"exit_code": outcome.exit_code, "duration_seconds": round(outcome.duration_seconds, 3),
                   "dependencies": list(outcome.dependencies), "packages": list(outcome.packages)}
        return ResultStatus.of(outcome.succeeded), tail(outcome.output_tail), details, []

    def _update(self, command: dict[str, Any]):
        """Self-update: the new version reports success after its first check-in (see selfupdate.py)."""
        if self.self_updater is None:
            return ResultStatus.FAILED, "self-update is not set up on this agent", {}, []
        try:
            progress = self.self_updater.apply(command["id"], command["params"])
        except UpdateRefused as refusal:
            if refusal.reason != "not_a_pyz":
                self.record(make_event(
                    SECURITY_VIOLATION, "critical", f"Refused an agent update: {refusal}", severity="critical",
                    component="security",
                    metadata={"reason": refusal.reason, "command_id": command["id"],
                              "version": str(command["params"].get("version", ""))[:32]},
                ))
            return ResultStatus.FAILED, f"update refused ({refusal.reason}): {refusal}", {}, []
        return ResultStatus.RUNNING, progress, {}, []

    def _reboot(self, params: Mapping[str, Any]):
        if self.reboot is None:
            return ResultStatus.FAILED, "rebooting is not set up on this agent", {}, []
        problem = reboot_params_problem(params)
        if problem:  # the server refuses these before signing: a signed bad value is refused here too
            return ResultStatus.FAILED, f"refused: {problem}", {}, []
        delay = params.get("delay_minutes", DEFAULT_REBOOT_DELAY_MINUTES)
        outcome = self.reboot(delay, params.get("message", DEFAULT_REBOOT_MESSAGE))
        return ResultStatus.of(outcome.succeeded), tail(outcome.output_tail), {
            "exit_code": outcome.exit_code, "details": {"delay_minutes": delay}}, []


def _not_checked_line(item: Any) -> str:
    """A scanner's ``last_not_checked`` entry ({"name", "reason"} or text) as one report line."""
    if isinstance(item, Mapping):
        return not_checked_line(item.get("name", ""), str(item.get("reason", "")))
    return not_checked_line(str(item), "not checked")


# -- sending what commands produced (outbox channels) ----------------------------------

# A server answer that retrying can never change: the item is dropped (and said so), so
# one poisoned item cannot block the outbox behind it forever.
PERMANENT_REFUSALS = (400, 404, 413)


Payload = dict[str, Any]


def _send_each(get_client: Callable[[], Any], record: Callable[[Payload], None], path_for: Callable[[Payload], str],
               body_for: Callable[[Payload], Payload], what: str) -> Callable[[list[Payload]], None]:
    def send(payloads: list[Payload]) -> None:
        for payload in payloads:
            try:
                get_client().request("POST", path_for(payload), body_for(payload))
            except ApiError as exc:
                if exc.status not in PERMANENT_REFUSALS:
                    raise
                logger.error("server refused a %s for good, dropping it: %s", what, exc)
                record(make_event(AGENT_CHECKIN, "failed", f"Server refused a {what}: {exc.message}",
                                  severity="error", metadata={"status": exc.status, "code": exc.code}))
    return send


def executor_channels(get_client: Callable[[], Any], record: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Outbox channels for command results and reports (the runner's ``extra_channels``).

    ``get_client`` returns the runner's current client (it is replaced when the config reloads).
    """
    def agent_path(suffix: str) -> str:
        return get_client().agent_path(suffix)

    return {
        KIND_COMMAND_RESULT: Channel(send=_send_each(
            get_client, record, lambda p: agent_path(f"commands/{p['command_id']}/result"),
            lambda p: {key: value for key, value in p.items() if key != "command_id"}, "command result")),
        KIND_UPDATES_REPORT: Channel(send=_send_each(
            get_client, record, lambda p: agent_path("reports/updates"), lambda p: p, "scan report")),
        KIND_SYSTEM_REPORT: Channel(send=_send_each(
            get_client, record, lambda p: agent_path("reports/system"), lambda p: p, "system report")),
    }
