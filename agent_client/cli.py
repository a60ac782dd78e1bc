"""Command line: ``python -m agent_client [--config PATH] [--verbose] COMMAND``.

Commands:
  register --server URL (--token-file PATH | --token-stdin)
                                        enroll this machine and write the config (0600, atomic);
                                        the token may also come from REDFLAG_REGISTRATION_TOKEN,
                                        never from the command line (--token still works, with a
                                        warning: other local users can read a process's argv)
  run [--once]                          the service loop; --once: one cycle, exit 0 only if all succeeded
  scan [--type T] [--json] [--verify]   scan for updates locally (no server needed); --verify also runs
                                        each tool's own listing and prints where the two disagree
  status [--json]                       registration, server, heartbeat, last check-in, outbox

Exit codes: 0 success; 1 failure (server unreachable, refused registration,
a failed scan, a scan that disagrees with its tool under --verify, an outbox
left unsent); 2 bad usage; 3 not registered or an
unusable config file; 4 the server refuses this agent (revoked, another
machine, refresh refused) — an admin must act.

Every failure is one line on stderr; ``--verbose`` adds detail and tracebacks.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from agent_client import __version__, migrate
from agent_client import config as config_module
from agent_client.config import AgentConfig, ConfigError, ConfigNotFound, format_time, utc_now
from agent_client.events import AGENT_REGISTRATION, AGENT_SCAN, AGENT_STARTUP, MIGRATION, make_event
from agent_client.executor import LEDGER_FILE_NAME, CommandExecutor, ExecutedLedger, executor_channels, schedule_reboot
from agent_client.machine import MachineIdError, host_facts, machine_id_hash, release_freed_memory, system_facts
from agent_client.outbox import KIND_COMMAND_RESULT, KIND_EVENT, Channel, Outbox, OutboxError, describe
from agent_client.protocol import Capability, PackageType
from agent_client.runner import EVENTS_PER_REQUEST, Runner, describe_heartbeat
from agent_client.scanners import build_scanners, capabilities
from agent_client.scanners.base import Scanner
from agent_client.scanners.verify import Verification, verify_scan
from agent_client.selfupdate import RESTART_EXIT_CODE, SelfUpdater
from agent_client.signatures import PublicKey
from agent_client.transport import (
    REGISTER_PATH,
    ApiError,
    Client,
    RetryPolicy,
    TerminalError,
    TransportError,
    normalize_server_url,
    plain_http_problem,
    register,
)
from agent_client.wakeup import WakeChannel

logger = logging.getLogger("redflag.agent")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_REGISTERED = 3
EXIT_REFUSED = 4

TOKEN_ENVIRONMENT_VARIABLE = "REDFLAG_REGISTRATION_TOKEN"
# A registration token is a few dozen characters; anything this long is the wrong file.
MAX_TOKEN_BYTES = 4096


class CliFailure(Exception):
    """A failure already explained in one line; carries the exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- plumbing --------------------------------------------------------------------


class _Formatter(logging.Formatter):
    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        level = record.levelname.lower()
        if self.verbose:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            line = f"{stamp} {level} {record.name}: {message}"
            if record.exc_info:
                line += "\n" + self.formatException(record.exc_info)
            return line
        prefix = "" if record.levelno == logging.INFO else f"{level}: "
        return f"redflag-agent: {prefix}{message}"


def _configure_logging(verbose: bool, default_level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(verbose))
    root = logging.getLogger("redflag")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else default_level)
    root.propagate = False
    if verbose:
        logging.getLogger("urllib3").addHandler(handler)
        logging.getLogger("urllib3").setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="redflag-agent", description="RedFlag update-management agent.")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"config file (default {config_module.default_config_path()})")
    parser.add_argument("--verbose", "-v", action="store_true", help="log details and tracebacks")
    parser.add_argument("--version", action="version", version=f"redflag-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    register_parser = commands.add_parser(
        "register", help="enroll this machine with a RedFlag server",
        description="The registration token comes from exactly one of --token-file, --token-stdin or the "
                    f"{TOKEN_ENVIRONMENT_VARIABLE} environment variable, so that it is in no process's argv.")
    register_parser.add_argument("--server", required=True, help="server URL, e.g. https://redflag.example")
    register_parser.add_argument("--token-file", default=None, metavar="PATH",
                                 help="read the registration token from this file (not readable by other users)")
    register_parser.add_argument("--token-stdin", action="store_true",
                                 help="read the registration token from standard input (prompted on a terminal)")
    register_parser.add_argument("--token", default=None, metavar="TOKEN",
                                 help="the registration token itself: deprecated, other local users can read it "
                                      "in the process list")
    register_parser.add_argument("--insecure", action="store_true",
                                 help="allow a plain http:// server that is not this machine (the token and the "
                                      "agent's credentials then cross the network unencrypted); recorded in the "
                                      "config so the agent keeps using it")
    register_parser.add_argument("--ca-bundle", default=None, help="CA bundle to verify the server's certificate")
    register_parser.add_argument(
        "--capabilities", default=None, type=_capability_list, metavar="LIST",
        help="the most the server may schedule here, comma-separated from "
             f"{','.join(Capability.ALL)}; a package manager is offered only while it works on this host, "
             "checked at every start (default: every working package manager, storage and system)",
    )

    run_parser = commands.add_parser("run", help="poll the server (the service loop)")
    run_parser.add_argument("--once", action="store_true", help="one cycle: check in, flush the outbox, exit")
    run_parser.add_argument("--poll-only", action="store_true",
                            help="do not hold the fast channel (GET /agents/{id}/wait); commands then arrive at the "
                            "next poll, as with an older server")

    scan_parser = commands.add_parser("scan", help="scan for updates locally (no server needed)")
    scan_parser.add_argument("--type", choices=PackageType.ALL, default=None, help="only this package manager")
    scan_parser.add_argument("--json", action="store_true", help="machine-readable output")
    scan_parser.add_argument("--verify", action="store_true",
                             help="also run each package tool's own listing and print where it disagrees with "
                                  "the scan (nothing when they agree)")

    migrate_parser = commands.add_parser("migrate", help="move an older install's config to the current layout")
    migrate_parser.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    migrate_parser.add_argument("--from", dest="source", default=None,
                                help="the old config (default: an old-schema file at --config, else "
                                     "/etc/aggregator/config.json)")

    status_parser = commands.add_parser("status", help="show registration and queue state")
    status_parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _outbox(config_path: Path) -> Outbox:
    return Outbox.beside(config_path)


def _record_offline(config_path: Path, event: dict[str, Any]) -> None:
    """Keep an event for later when the agent cannot talk to the server now; best effort."""
    try:
        _outbox(config_path).add_event(event)
    except (OutboxError, OSError) as exc:
        logger.debug("could not queue the event in the outbox: %s", exc)


def _load_registered(config_path: Path) -> AgentConfig:
    try:
        config = config_module.load(config_path)
    except ConfigNotFound:
        raise CliFailure(f"not registered: no config at {config_path}; run 'register' first",
                         EXIT_NOT_REGISTERED) from None
    except ConfigError as exc:
        raise CliFailure(str(exc), EXIT_NOT_REGISTERED) from None
    if not config.is_registered:
        raise CliFailure(f"not registered: {config_path} holds no agent id or credentials", EXIT_NOT_REGISTERED)
    insecure = None if config.insecure_http else plain_http_problem(config.server_url)
    if insecure is not None:  # the client would refuse it too; say so once, before anything starts
        raise CliFailure(f"{config_path}: {insecure}", EXIT_NOT_REGISTERED)
    return config


def _client(config: AgentConfig, config_path: Path, machine_hash: str, outbox: Outbox, **kwargs: Any) -> Client:
    def queue(event: dict[str, Any]) -> None:
        try:
            outbox.add_event(event)
        except (OutboxError, OSError) as exc:
            logger.error("could not queue an event: %s", exc)

    return Client(config, machine_id_hash=machine_hash, config_path=config_path, on_event=queue, **kwargs)


# --- register ---------------------------------------------------------------------


def _capability_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(Capability.ALL))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown capability {', '.join(unknown)}")
    return names


def _pinned_keys(keys: Any) -> list[dict[str, Any]]:
    """Keep the signing keys that are well-formed Ed25519 public keys."""
    pinned = []
    for key in keys if isinstance(keys, list) else []:
        try:
            raw = base64.b64decode(key["public_key"], validate=True)
            PublicKey.from_public_bytes(raw)
        except (KeyError, TypeError, ValueError, binascii.Error):
            logger.warning("ignoring a malformed signing key from the server (%r)", (key or {}).get("key_id"))
            continue
        pinned.append({name: key.get(name) for name in ("key_id", "algorithm", "public_key", "primary", "created_at",
                                                        "endorsed_by", "endorsement")})
    return pinned


def _current_refresh_token(config_path: Path, server: str, machine_hash: str) -> Optional[str]:
    """This machine's own refresh token for ``server``, from an existing config: the proof that lets a
    re-install re-enrol its agent (the machine id alone proves nothing, anyone can read it)."""
    try:
        existing = config_module.load(config_path)
    except (ConfigNotFound, ConfigError):
        return None
    same = existing.server_url.rstrip("/") == server.rstrip("/") and existing.machine_id_hash == machine_hash
    return existing.refresh_token if same and existing.refresh_token else None


def _set_aside_unusable_config(config_path: Path) -> None:
    try:
        config_module.load(config_path)
    except ConfigNotFound:
        return
    except ConfigError as exc:
        backup = config_path.with_name(f"{config_path.name}.unusable-{time.strftime('%Y%m%d%H%M%S')}")
        os.replace(config_path, backup)
        logger.warning("%s; moved it to %s", exc, backup)
        return
    logger.info("replacing the existing registration in %s", config_path)


def _registration_token(args: argparse.Namespace) -> str:
    """The token from its one source: --token-file, --token-stdin, the environment, or (warned) --token.

    The environment variable is removed from this process's environment once read, so that no
    package tool the agent starts inherits it.
    """
    from_environment = os.environ.pop(TOKEN_ENVIRONMENT_VARIABLE, "")
    given = [name for name, present in (("--token-file", args.token_file is not None),
                                        ("--token-stdin", args.token_stdin),
                                        (TOKEN_ENVIRONMENT_VARIABLE, bool(from_environment)),
                                        ("--token", args.token is not None)) if present]
    if not given:
        raise CliFailure("a registration token is required: --token-file PATH, --token-stdin or "
                         f"{TOKEN_ENVIRONMENT_VARIABLE}", EXIT_USAGE)
    if len(given) > 1:
        raise CliFailure(f"give the registration token one way, not {len(given)} ({', '.join(given)})", EXIT_USAGE)
    source = given[0]
    if source == "--token-file":
        token = _read_token_file(args.token_file)
    elif source == "--token-stdin":
        token = _read_token_stdin()
    elif source == TOKEN_ENVIRONMENT_VARIABLE:
        token = from_environment
    else:
        logger.warning("--token puts the registration token in the process list, where other local users can "
                       f"read it; use --token-file, --token-stdin or {TOKEN_ENVIRONMENT_VARIABLE}")
        token = args.token
    token = token.strip()
    if not token or any(char.isspace() or not char.isprintable() for char in token):
        raise CliFailure(f"the registration token from {source} is empty or not one word", EXIT_USAGE)
    return token


def _read_token_file(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if sys.platform != "win32" and mode & 0o004:
                raise CliFailure(f"{path} is readable by every user on this machine (mode {mode & 0o777:04o}): "
                                 "chmod 600 it first", EXIT_USAGE)
            if sys.platform != "win32" and mode & 0o040:
                logger.warning("%s is readable by its group (mode %04o); chmod 600 would keep the token private",
                               path, mode & 0o777)
            raw = handle.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise CliFailure(f"cannot read the token file {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise CliFailure(f"{path} is too large to be a registration token", EXIT_USAGE)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliFailure(f"{path} does not hold a registration token (not text)", EXIT_USAGE) from None


def _read_token_stdin() -> str:
    if sys.stdin is None:
        raise CliFailure("--token-stdin: there is no standard input", EXIT_USAGE)
    if sys.stdin.isatty():
        return getpass.getpass("registration token: ")  # not echoed
    return sys.stdin.read(MAX_TOKEN_BYTES)


def command_register(args: argparse.Namespace, config_path: Path) -> int:
    try:
        server = normalize_server_url(args.server)
    except ValueError as exc:
        raise CliFailure(str(exc), EXIT_USAGE) from None
    insecure = plain_http_problem(server)
    if insecure is not None and not args.insecure:
        raise CliFailure(f"refusing to register: {insecure}", EXIT_USAGE)
    if insecure is not None:
        logger.warning("--insecure: registering with %s over plain HTTP; the token and the agent's credentials "
                       "cross the network unencrypted", server)
    token = _registration_token(args)
    facts: dict[str, Any] = dict(host_facts())
    facts["capabilities"] = capabilities(build_scanners(config_module.state_directory(config_path)),
                                         args.capabilities)

    def failed(reason: str, message: str) -> CliFailure:
        # Kept for the server only where an agent is enrolled and can send it later; a first attempt that
        # failed leaves nothing behind (no outbox for a machine that may never be enrolled here).
        if config_path.exists():
            _record_offline(
                config_path,
                make_event(AGENT_REGISTRATION, "failed", f"Registration with {server} failed: {message}",
                           severity="error", metadata={"reason": reason, "server_url": server,
                                                       "hostname": facts["hostname"], "agent_version": __version__}),
            )
        return CliFailure(f"registration failed: {message}")

    try:
        machine_hash = machine_id_hash()
    except MachineIdError as exc:
        raise failed("machine_id_unavailable", str(exc)) from None
    try:
        answer = register(server, registration_token=token, machine_id_hash=machine_hash, facts=facts,
                          ca_bundle=args.ca_bundle, insecure_http=insecure is not None,
                          refresh_token=_current_refresh_token(config_path, server, machine_hash))
    except ApiError as exc:
        if exc.status in (404, 405):
            raise failed("not_a_redflag_server", f"{server} answered {exc.status} at {REGISTER_PATH}: is this the "
                                                 "RedFlag portal's address? Give its base URL, as the token page "
                                                 "shows it (https://host[:port], no path)") from None
        raise failed(exc.code, f"{exc.message} ({exc.status} {exc.code})") from None
    except TransportError as exc:
        raise failed("unreachable", str(exc)) from None

    initial = answer.get("config") or {}
    config = AgentConfig(
        server_url=server,
        agent_id=str(answer["agent_id"]),
        machine_id_hash=machine_hash,
        access_token=answer["access_token"],
        access_token_expires_at=answer.get("access_token_expires_at"),
        refresh_token=answer["refresh_token"],
        refresh_token_expires_at=answer.get("refresh_token_expires_at"),
        signing_keys=_pinned_keys(answer.get("signing_keys")),
        config_version=int(initial.get("config_version") or 0),
        poll_interval_seconds=int(initial.get("poll_interval_seconds") or config_module.DEFAULT_POLL_INTERVAL_SECONDS),
        registered_at=format_time(utc_now()),
        ca_bundle=args.ca_bundle,
        insecure_http=insecure is not None,
        capability_limit=args.capabilities,
    )
    try:
        _set_aside_unusable_config(config_path)
        config_module.save(config, config_path)
    except OSError as exc:
        raise CliFailure(
            f"registered as agent {config.agent_id}, but the config could not be written to {config_path}: "
            f"{exc.strerror or exc}; fix that and register again"
        ) from None
    if not config.signing_keys:
        logger.warning("the server sent no usable signing keys: signed commands cannot be verified")
    note = " (this machine's existing agent re-enrolled; its old credentials are revoked)" \
        if answer.get("reregistered") else ""
    print(f"registered as agent {config.agent_id} with {server}{note}")
    _flush_events(config, config_path, machine_hash)
    return EXIT_OK


def _flush_events(config: AgentConfig, config_path: Path, machine_hash: str) -> None:
    """Send what waited for registration (an earlier failure, …); the run loop retries otherwise."""
    outbox = _outbox(config_path)
    try:
        if not outbox.count():
            return
        client = _client(config, config_path, machine_hash, outbox, retry=RetryPolicy(max_attempts=2))
        result = outbox.flush({KIND_EVENT: Channel(send=client.send_events, batch_size=EVENTS_PER_REQUEST)})
    except (OutboxError, OSError) as exc:
        logger.warning("queued events not sent now (%s); 'run' will send them", exc)
        return
    if result.error is not None:
        logger.warning("queued events not sent now (%s); 'run' will send them", result.error)


# --- run -----------------------------------------------------------------------------


def command_run(args: argparse.Namespace, config_path: Path) -> int:
    migration = _migration_plan(config_path, None)
    if migration is not None:  # an upgraded legacy install: move its config over first, backed up
        logger.info("older install found at %s; migrating it", migration.source)
        _apply_migration(migration, config_path)
    try:
        config = _load_registered(config_path)
    except CliFailure as failure:
        if failure.exit_code == EXIT_NOT_REGISTERED and config_path.exists():
            _record_offline(config_path, make_event(AGENT_STARTUP, "failed", f"Agent could not start: {failure}",
                                                    severity="error", metadata={"reason": "config_unusable"}))
        raise
    outbox = _outbox(config_path)
    try:
        machine_hash = machine_id_hash()
    except MachineIdError as exc:
        _record_offline(config_path, make_event(AGENT_STARTUP, "failed", f"Agent could not start: {exc}",
                                                severity="error", metadata={"reason": "machine_id_unavailable"}))
        raise CliFailure(f"cannot start: {exc}") from None

    def client_for(current: AgentConfig) -> Client:
        retry = RetryPolicy(max_attempts=3) if args.once else RetryPolicy()
        return _client(current, config_path, machine_hash, outbox, retry=retry)

    stop = threading.Event()
    scanners = build_scanners(config_module.state_directory(config_path))
    runner = Runner(config=config, config_path=config_path, client=client_for(config), outbox=outbox,
                    stop=stop, reload_client=client_for,
                    probe_capabilities=lambda: capabilities(scanners, runner.config.capability_limit))
    restart = _attach_executor(runner, config_path, outbox, scanners)
    if args.once:
        try:
            outcome = runner.run_once()
        except TerminalError as exc:
            raise CliFailure(f"stopped: {exc}", EXIT_REFUSED) from None
        if restart.is_set():
            logger.info("restarting into the new agent version")
            return RESTART_EXIT_CODE
        if outcome.error is not None:
            raise CliFailure(f"check-in failed: {outcome.error}" if not outcome.checked_in
                             else f"outbox not flushed: {outcome.error}")
        if outcome.flush is not None and outcome.flush.remaining:
            raise CliFailure(f"outbox not flushed: {outcome.flush.remaining} item(s) have no way to the server yet")
        logger.info("checked in with %s; sent %d queued item(s)", config.server_url,
                    outcome.flush.sent if outcome.flush else 0)
        return EXIT_OK

    channel = None if args.poll_only else WakeChannel(client=lambda: runner.client, stop=stop)

    def request_stop(signum: int, frame: Any) -> None:
        logger.info("received signal %d; stopping", signum)
        stop.set()
        if channel is not None:
            # The runner's wait returns now, not at its next look at ``stop``. From another thread: the
            # handler interrupts the main thread, which may hold the lock of the event it waits on.
            threading.Thread(target=channel.nudge, name="redflag-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    runner.cycle_listeners.append(lambda _outcome: release_freed_memory())
    if channel is not None:
        runner.wait = channel.wait
        runner.cycle_listeners.append(channel.cycle_finished)
        channel.start()
    runner.run_forever()
    if restart.is_set():
        logger.info("restarting into the new agent version")
        return RESTART_EXIT_CODE
    return EXIT_OK


def _attach_executor(runner: Runner, config_path: Path, outbox: Outbox,
                     scanners: dict[str, Scanner]) -> threading.Event:
    """Commands are verified and run by the executor; its results and reports get their channels.

    Returns the event a self-update sets to ask for a restart into the new file.
    """
    state_dir = config_module.state_directory(config_path)
    restart = threading.Event()

    def request_restart() -> None:
        restart.set()
        runner.stop.set()

    def queue_result(report: Optional[dict[str, Any]]) -> None:
        if report:
            outbox.add(KIND_COMMAND_RESULT, report, item_id=f"result-{report['command_id']}-{report['status']}")

    def set_heartbeat(until: Any) -> None:
        runner.config.heartbeat_until = format_time(until) if until else None
        try:
            config_module.save(runner.config, config_path)
        except OSError as exc:
            logger.warning("could not save heartbeat state: %s", exc.strerror or exc)

    def save_keys(keys: list[dict[str, Any]]) -> None:
        runner.config.signing_keys = keys
        try:
            config_module.save(runner.config, config_path)
        except OSError as exc:
            logger.warning("could not save pinned signing keys: %s", exc.strerror or exc)

    executor = CommandExecutor(
        agent_id=runner.config.agent_id,
        signing_keys=runner.config.signing_keys,
        outbox=outbox,
        ledger=ExecutedLedger(state_dir / LEDGER_FILE_NAME),
        scanners=scanners,
        system_facts=system_facts,
        record=runner.record,
        set_heartbeat=set_heartbeat,
        reboot=schedule_reboot,
        fetch_keys=lambda: runner.client.signing_keys(),
        save_keys=save_keys,
        tags=lambda: runner.config.tags,
    )
    executor.self_updater = SelfUpdater(
        state_dir=state_dir, agent_id=runner.config.agent_id, current_version=__version__,
        keys=lambda: executor.keys,
        download=lambda version, destination, size: runner.client.download(
            f"/api/v1/releases/{version}/artifact", destination, max_bytes=size),
        request_restart=request_restart,
    )
    runner.command_handler = executor
    runner.extra_channels.update(executor_channels(lambda: runner.client, runner.record))
    queue_result(executor.self_updater.on_start())
    runner.after_checkin = lambda checked_in: queue_result(executor.self_updater.after_cycle(checked_in))
    return restart


# --- scan ------------------------------------------------------------------------------


def command_scan(args: argparse.Namespace, config_path: Path) -> int:
    scanners = build_scanners(config_module.state_directory(config_path))
    kinds = [args.type] if args.type else list(scanners)
    results: dict[str, list[dict[str, Any]]] = {}
    failures: dict[str, str] = {}
    unavailable: list[str] = []
    verifications: dict[str, Verification] = {}
    for kind in kinds:
        scanner = scanners.get(kind)
        if scanner is None or not scanner.is_available():
            unavailable.append(kind)
            continue
        started = time.monotonic()
        try:
            records = scanner.scan()
        except Exception as exc:  # a scanner bug is reported like a scan failure, never a traceback
            logger.debug("%s scan failed", kind, exc_info=True)
            failures[kind] = str(exc) or type(exc).__name__
            if config_path.parent.is_dir():
                _record_offline(
                    config_path,
                    make_event(AGENT_SCAN, "failed", f"{kind} scan failed: {failures[kind]}", severity="error",
                               metadata={"package_type": kind,
                                         "duration_seconds": round(time.monotonic() - started, 2)}),
                )
            continue
        results[kind] = [record.to_dict() for record in records]
        if args.verify:
            verifications[kind] = verify_scan(scanner, records)

    if args.type and args.type in unavailable:
        raise CliFailure(f"{args.type} is not available on this host")
    if args.json:
        body: dict[str, Any] = {"updates": results, "failed": failures, "unavailable": unavailable}
        if args.verify:
            body["verify"] = {kind: verification.to_dict() for kind, verification in verifications.items()}
        print(json.dumps(body, indent=2, sort_keys=True))
    else:
        _print_scan(results, failures, unavailable)
        _print_verifications(verifications)
    if failures:
        raise CliFailure("scan failed for " + ", ".join(f"{kind} ({message})" for kind, message in failures.items()))
    disagreeing = [kind for kind, verification in verifications.items() if verification.disagreements]
    if disagreeing:
        raise CliFailure("the scan disagrees with the tool's own listing for " + ", ".join(disagreeing))
    return EXIT_OK


def _print_verifications(verifications: dict[str, Verification]) -> None:
    """Only what needs a look: each disagreement, and each manager that could not be verified."""
    for kind, verification in verifications.items():
        if verification.unverified:
            print(f"{kind}: {verification.summary()}")
        elif verification.disagreements:
            print(f"{kind}: the scan {verification.summary()}:")
            for item in verification.disagreements:
                print(f"  {item.describe()}")


def _print_scan(results: dict[str, list[dict[str, Any]]], failures: dict[str, str], unavailable: list[str]) -> None:
    for kind, records in results.items():
        print(f"{kind}: {len(records)} update{'s' if len(records) != 1 else ''}")
        for record in records:
            flags = []
            if record.get("is_security"):
                flags.append("security")
            if record.get("severity") not in (None, "unknown"):
                flags.append(record["severity"])
            if (record.get("metadata") or {}).get("held_back"):
                flags.append("held back")
            suffix = f"  [{', '.join(flags)}]" if flags else ""
            print(f"  {record['name']}  {record['current_version'] or '?'} -> {record['available_version']}{suffix}")
    for kind, message in failures.items():
        print(f"{kind}: FAILED ({message})")
    if unavailable and not results and not failures:
        print("no supported package manager found on this host")
    elif unavailable:
        print("not available here: " + ", ".join(unavailable))


# --- status ------------------------------------------------------------------------------


def command_status(args: argparse.Namespace, config_path: Path) -> int:
    state: dict[str, Any] = {"config_path": str(config_path), "agent_version": __version__, "registered": False}
    try:
        config: Optional[AgentConfig] = config_module.load(config_path)
    except ConfigNotFound:
        config = None
    except ConfigError as exc:
        raise CliFailure(str(exc), EXIT_NOT_REGISTERED) from None
    try:
        outbox = _outbox(config_path)
        state["outbox_items"] = outbox.count() if outbox.path.exists() else 0
        state["outbox"] = describe(outbox) if outbox.path.exists() else "empty"
    except (OutboxError, OSError) as exc:
        state["outbox_items"] = None
        state["outbox"] = f"unreadable ({exc})"
    if config is not None and config.is_registered:
        state.update(
            registered=True,
            server_url=config.server_url,
            agent_id=config.agent_id,
            poll_interval_seconds=config.poll_interval_seconds,
            heartbeat=describe_heartbeat(config),
            heartbeat_until=config.heartbeat_until if config.heartbeat_active() else None,
            last_checkin_at=config.last_checkin_at,
            registered_at=config.registered_at,
            config_version=config.config_version,
            signing_keys=[key.get("key_id") for key in config.signing_keys],
        )
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
    else:
        rows = [("registered", "yes" if state["registered"] else "no"), ("config", state["config_path"]),
                ("agent version", __version__)]
        if state["registered"]:
            rows += [
                ("server", state["server_url"]),
                ("agent id", state["agent_id"]),
                ("poll interval", f"{state['poll_interval_seconds']} s"),
                ("heartbeat", state["heartbeat"]),
                ("last check-in", state["last_checkin_at"] or "never"),
                ("signing keys", ", ".join(str(key) for key in state["signing_keys"]) or "none"),
            ]
        rows.append(("outbox", state["outbox"]))
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            print(f"{label + ':':<{width + 1}} {value}")
    return EXIT_OK if state["registered"] else EXIT_NOT_REGISTERED


# --- migrate -----------------------------------------------------------------------------


def _migration_plan(config_path: Path, source: Optional[Path]) -> Optional[migrate.MigrationPlan]:
    source = source or migrate.find_source(config_path)
    if source is None:
        return None
    try:
        machine_hash = machine_id_hash()
    except MachineIdError as exc:
        raise CliFailure(f"cannot migrate: {exc}") from None
    try:
        return migrate.plan(source, config_path, machine_hash=machine_hash)
    except migrate.MigrationError as exc:
        raise CliFailure(f"cannot migrate: {exc}") from None


def _apply_migration(migration: migrate.MigrationPlan, config_path: Path) -> AgentConfig:
    def fetch_keys(config: AgentConfig) -> list[dict[str, Any]]:
        client = Client(config, machine_id_hash=config.machine_id_hash, retry=RetryPolicy(max_attempts=3))
        return _pinned_keys(client.signing_keys())

    try:
        return migrate.apply(migration, fetch_signing_keys=fetch_keys,
                             record=lambda event: _record_offline(config_path, event))
    except migrate.MigrationError as exc:
        _record_offline(config_path, make_event(
            MIGRATION, "failed", f"Migration of {migration.source} failed: {exc}", severity="error",
            component="migration", metadata={"source": str(migration.source), "layout": migration.layout}))
        raise CliFailure(f"migration failed: {exc}") from None


def command_migrate(args: argparse.Namespace, config_path: Path) -> int:
    migration = _migration_plan(config_path, Path(args.source) if args.source else None)
    if migration is None:
        print(f"nothing to migrate: {config_path} is current or absent, and no legacy install was found")
        return EXIT_OK
    print(migration.describe())
    if args.dry_run:
        print("dry run: nothing was changed")
        return EXIT_OK
    _apply_migration(migration, config_path)
    print(f"migrated; the old config is backed up at {migration.backup}")
    return EXIT_OK


# --- main ----------------------------------------------------------------------------------


COMMANDS = {"register": command_register, "run": command_run, "scan": command_scan, "status": command_status,
            "migrate": command_migrate}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)  # the parser is not kept: ``run`` lives for months
    _configure_logging(args.verbose, logging.INFO if args.command in ("run", "register") else logging.WARNING)
    config_path = Path(args.config) if args.config else config_module.default_config_path()
    try:
        return COMMANDS[args.command](args, config_path)
    except CliFailure as failure:
        logger.error("%s", failure)
        return failure.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one line, detail only with --verbose
        logger.error("unexpected %s: %s%s", type(exc).__name__, exc,
                     "" if args.verbose else " (run with --verbose for details)", exc_info=args.verbose)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
