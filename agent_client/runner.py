"""The agent's service loop: check in, hand commands to their handler, flush the outbox.

One cycle:

1. check in with metrics, agent version, config version and heartbeat state
   (and, until one check-in has carried them, the capabilities probed at start-up);
2. adopt what the server answered (poll interval, heartbeat window, config
   version — fetched through ``config_fetcher`` when one is plugged in);
3. give the commands to ``command_handler`` (the executor, which verifies and
   runs them; a runner built without one runs nothing and says so);
4. flush the outbox, oldest first, through its channels (events always;
   command results and reports once their senders are plugged in).

Between cycles: the server's poll interval plus up to 10 % jitter, 5 s while
the server says heartbeat is active, exponential backoff with jitter after a
failure (at least the server's ``Retry-After``), reset by the next success.
A terminal refusal (revoked, other machine, refresh refused) is logged once;
the loop then only re-checks hourly, or at once when the config file changes
(the admin ran ``register`` again).

Capabilities (what this host can really scan, ``scanners.capabilities``) are
probed at every start, because a package manager can appear, lose its last
repository or its daemon between two runs. They travel with the first
check-in that succeeds after the start; the server compares them with what it
knows and changes the agent's subsystems only when the set differs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from agent_client import __version__
from agent_client import config as config_module
from agent_client.config import AgentConfig, format_time, parse_time, utc_now
from agent_client.events import AGENT_CHECKIN, AGENT_STARTUP, SECURITY_VIOLATION, make_event
from agent_client.machine import collect_metrics
from agent_client.outbox import KIND_EVENT, Channel, FlushResult, Outbox, OutboxError
from agent_client.transport import Client, TerminalError, TransportError

logger = logging.getLogger("redflag.agent.runner")

HEARTBEAT_POLL_SECONDS = 5.0
MIN_POLL_SECONDS = 5.0
MAX_JITTER_SECONDS = 60.0
FAILURE_BACKOFF_BASE_SECONDS = 5.0
FAILURE_BACKOFF_MAX_SECONDS = 900.0
TERMINAL_RECHECK_SECONDS = 3600.0
CONFIG_WATCH_SECONDS = 30.0
EVENTS_PER_REQUEST = 500
# The config file is rewritten (temp file, fsync, rename) after a check-in that changed something in
# it; when only ``last_checkin_at`` moved, at most this often: an agent in heartbeat mode would
# otherwise write it every 5 s, a fifth of its idle CPU. ``status`` may show a check-in up to this old.
CHECKIN_STAMP_SAVE_SECONDS = 60.0

CommandHandler = Callable[[list[dict[str, Any]]], None]
ConfigFetcher = Callable[[int], bool]
CapabilityProbe = Callable[[], list[str]]


def poll_delay(interval: float, heartbeat: bool, rng: random.Random) -> float:
    """Seconds until the next check-in after a good one: 5 s in heartbeat mode, else
    the server's interval plus up to 10 % jitter (at most a minute), so a fleet
    started together drifts apart."""
    if heartbeat:
        return HEARTBEAT_POLL_SECONDS
    interval = max(MIN_POLL_SECONDS, interval)
    return interval + rng.uniform(0, min(MAX_JITTER_SECONDS, interval * 0.1))


def failure_delay(consecutive_failures: int, retry_after: Optional[float], rng: random.Random) -> float:
    """Seconds until the next try after a failed check-in: exponential backoff with
    equal jitter, never sooner than the server's Retry-After."""
    step = min(FAILURE_BACKOFF_MAX_SECONDS, FAILURE_BACKOFF_BASE_SECONDS * (2 ** (consecutive_failures - 1)))
    delay = step / 2 + rng.uniform(0, step / 2)
    return max(delay, retry_after or 0.0)


@dataclasses.dataclass
class CycleOutcome:
    checked_in: bool = False
    flush: Optional[FlushResult] = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.checked_in and self.error is None and self.flush is not None and self.flush.complete


class DeferredCommands:
    """The handler of a runner built without an executor (the CLI always plugs one in).

    It refuses to run anything and says so once per command id, so a command
    never silently vanishes and never runs unverified.
    """

    def __init__(self, record: Callable[[dict[str, Any]], None]) -> None:
        self.record = record
        self.seen: set = set()

    def __call__(self, commands: list[dict[str, Any]]) -> None:
        fresh = [command for command in commands if str(command.get("id")) not in self.seen]
        for command in fresh:
            self.seen.add(str(command.get("id")))
        if not fresh:
            return
        logger.warning("received %d command(s); this agent build cannot execute commands", len(fresh))
        self.record(
            make_event(
                AGENT_CHECKIN, "warning",
                f"Received {len(fresh)} command(s) this agent build cannot execute; none was run",
                severity="warning",
                metadata={"reason": "commands_unsupported",
                          "command_ids": [str(command.get("id")) for command in fresh][:50]},
            )
        )


class Runner:
    def __init__(
        self,
        *,
        config: AgentConfig,
        config_path: Path,
        client: Client,
        outbox: Outbox,
        rng: Optional[random.Random] = None,
        stop: Optional[threading.Event] = None,
        wait: Optional[Callable[[float], bool]] = None,
        command_handler: Optional[CommandHandler] = None,
        config_fetcher: Optional[ConfigFetcher] = None,
        extra_channels: Optional[dict[str, Channel]] = None,
        metrics: Callable[[], dict[str, Any]] = collect_metrics,
        reload_client: Optional[Callable[[AgentConfig], Client]] = None,
        probe_capabilities: Optional[CapabilityProbe] = None,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path)
        self.client = client
        self.outbox = outbox
        self.rng = rng or random.Random()
        self.stop = stop or threading.Event()
        self.wait = wait if wait is not None else self.stop.wait
        self.command_handler = command_handler or DeferredCommands(self.record)
        self.config_fetcher = config_fetcher
        self.extra_channels = dict(extra_channels or {})
        self.metrics = metrics
        self.reload_client = reload_client
        self.probe_capabilities = probe_capabilities
        # Probed at start-up; sent with check-ins until one succeeds, then None.
        self.unreported_capabilities: Optional[list[str]] = None
        self.consecutive_failures = 0
        self._checkin_saved_at: Optional[float] = None  # monotonic time of the last save after a check-in
        # Called with whether the check-in worked, before the flush (self-update confirms or rolls back here).
        self.after_checkin: Optional[Callable[[bool], None]] = None
        # Called after every cycle of run_forever (the fast channel waits for the check-in it asked for).
        self.cycle_listeners: list[Callable[[Optional[CycleOutcome]], None]] = []

    # -- events ------------------------------------------------------------------

    def record(self, event: dict[str, Any]) -> None:
        """Queue an event durably; an unwritable outbox is logged, never fatal."""
        try:
            self.outbox.add_event(event)
        except (OutboxError, OSError) as exc:
            logger.error("could not queue event %r: %s", event.get("message", "")[:80], exc)

    def record_startup(self, mode: str) -> None:
        self.record(
            make_event(
                AGENT_STARTUP, "success",
                f"Agent {__version__} started ({mode}) on Python {platform.python_version()}",
                metadata={"agent_version": __version__, "python": platform.python_version(),
                          "platform": sys.platform, "pid": os.getpid(), "mode": mode},
            )
        )

    def probe(self) -> None:
        """Find out, at start-up, what this host can scan now; the next check-in reports it."""
        if self.probe_capabilities is None:
            return
        self.unreported_capabilities = sorted(self.probe_capabilities())
        logger.debug("capabilities: %s", ", ".join(self.unreported_capabilities))

    def check_machine_binding(self) -> None:
        """Warn when this host's machine id is not the one the agent registered with."""
        registered = self.config.machine_id_hash
        if registered and registered != self.client.machine_id_hash:
            logger.warning("this host's machine id differs from the one the agent registered with; "
                           "the server will refuse it until an admin allows a rebind")
            self.record(
                make_event(
                    SECURITY_VIOLATION, "warning",
                    "Host machine id differs from the one this agent registered with (config copied or host rebuilt)",
                    severity="warning", component="security",
                    metadata={"reason": "machine_id_changed", "registered_machine_id": registered[:12],
                              "current_machine_id": self.client.machine_id_hash[:12]},
                )
            )

    # -- one cycle -----------------------------------------------------------------

    def channels(self) -> dict[str, Channel]:
        channels = {KIND_EVENT: Channel(send=self.client.send_events, batch_size=EVENTS_PER_REQUEST)}
        channels.update(self.extra_channels)
        return channels

    def checkin_payload(self) -> dict[str, Any]:
        payload = {
            "agent_version": __version__,
            "config_version": self.config.config_version,
            "heartbeat_active": self.config.heartbeat_active(),
            "metrics": self.metrics(),
        }
        if self.unreported_capabilities is not None:
            payload["capabilities"] = self.unreported_capabilities
        return payload

    def cycle(self) -> CycleOutcome:
        """Check in, hand over commands, flush. Raises TerminalError; other failures are in the outcome."""
        outcome = CycleOutcome()
        try:
            answer = self.client.checkin(self.checkin_payload())
            outcome.checked_in = True
            self.unreported_capabilities = None
            self._adopt(answer)
            commands = answer.get("commands") or []
            if commands:
                self.command_handler(commands)
        except TerminalError:
            raise
        except (TransportError, OutboxError) as exc:
            outcome.error = exc
            if self.after_checkin is not None:
                self.after_checkin(outcome.checked_in)
            return outcome
        if self.after_checkin is not None:
            self.after_checkin(True)
        outcome.flush = self.outbox.flush(self.channels())
        if isinstance(outcome.flush.error, TerminalError):
            raise outcome.flush.error
        if outcome.flush.error is not None:
            outcome.error = outcome.flush.error
        return outcome

    def _adopt(self, answer: dict[str, Any]) -> None:
        if not isinstance(answer, dict):
            raise TransportError("the server's check-in answer is not an object")
        before = self._adopted_state()
        interval = answer.get("poll_interval_seconds")
        if isinstance(interval, int) and interval > 0:
            self.config.poll_interval_seconds = interval
        heartbeat = answer.get("heartbeat") or {}
        self.config.heartbeat_until = heartbeat.get("until") if heartbeat.get("active") else None
        server_version = answer.get("config_version")
        if isinstance(server_version, int) and server_version != self.config.config_version:
            if self.config_fetcher is None or self.config_fetcher(server_version):
                logger.info("config version %s -> %s", self.config.config_version, server_version)
                self.config.config_version = server_version
        self.config.last_checkin_at = format_time(utc_now())
        now = time.monotonic()
        stamp_due = self._checkin_saved_at is None or now - self._checkin_saved_at >= CHECKIN_STAMP_SAVE_SECONDS
        if self._adopted_state() == before and not stamp_due:
            return  # nothing but the time of this check-in changed: kept in memory until the next save
        try:
            config_module.save(self.config, self.config_path)
            self._checkin_saved_at = now
        except OSError as exc:
            logger.warning("could not save check-in state to %s: %s", self.config_path, exc.strerror or exc)

    def _adopted_state(self) -> tuple[Any, ...]:
        """What a check-in answer changes in the config, besides the time of the check-in."""
        return self.config.poll_interval_seconds, self.config.heartbeat_until, self.config.config_version

    # -- timing --------------------------------------------------------------------

    def next_delay(self, outcome: Optional[CycleOutcome]) -> float:
        if outcome is not None and not outcome.checked_in:
            self.consecutive_failures += 1
            return failure_delay(self.consecutive_failures, getattr(outcome.error, "retry_after", None), self.rng)
        self.consecutive_failures = 0
        return poll_delay(float(self.config.poll_interval_seconds), self.config.heartbeat_active(), self.rng)

    # -- the loops -------------------------------------------------------------------

    def run_once(self) -> CycleOutcome:
        """One cycle, as ``run --once`` asks: no start-up event (a service start records one, not every run)."""
        self.check_machine_binding()
        self.probe()
        return self.cycle()

    def run_forever(self) -> None:
        """Until ``stop`` is set. Never returns on errors; terminal refusals park the loop."""
        self.record_startup("service")
        self.check_machine_binding()
        self.probe()
        logger.info("agent %s polling %s", self.config.agent_id, self.config.server_url)
        while not self.stop.is_set():
            try:
                outcome = self.cycle()
            except TerminalError as exc:
                self._park(exc)
                continue
            finally:
                for listener in self.cycle_listeners:
                    listener(None)
            if outcome.error is not None:
                logger.warning("cycle failed: %s", outcome.error)
            if self.wait(self.next_delay(outcome)):
                return

    def _park(self, exc: TerminalError) -> None:
        """Stop the tight retry: one log line, one event, then hourly checks or a config change."""
        logger.error("stopped: %s", exc)
        if exc.code in ("machine_mismatch", "agent_revoked", "wrong_agent"):
            self.record(
                make_event(
                    AGENT_CHECKIN, "failed", f"Server refused this agent: {exc}",
                    severity="critical", component="security", metadata={"reason": exc.code},
                )
            )
        waited = 0.0
        stamp = self._config_stamp()
        while waited < TERMINAL_RECHECK_SECONDS:
            if self.wait(CONFIG_WATCH_SECONDS):
                return
            waited += CONFIG_WATCH_SECONDS
            if self._config_stamp() != stamp:
                logger.info("config file changed; resuming")
                self._reload()
                return
        logger.info("re-checking with the server after a terminal refusal")

    def _config_stamp(self) -> Any:
        try:
            status = os.stat(self.config_path)
        except OSError:
            return None
        return (status.st_mtime_ns, status.st_size, status.st_ino)

    def _reload(self) -> None:
        try:
            self.config = config_module.load(self.config_path)
        except config_module.ConfigError as exc:
            logger.error("%s", exc)
            return
        if self.reload_client is not None:
            self.client = self.reload_client(self.config)
        else:
            self.client.config = self.config


def describe_heartbeat(config: AgentConfig) -> str:
    until = parse_time(config.heartbeat_until) if config.heartbeat_until else None
    if until and until > utc_now():
        return f"active until {format_time(until)}"
    return "inactive"

