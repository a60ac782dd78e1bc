"""The fast channel, agent side: hold ``GET /agents/{id}/wait`` and check in as soon as the server says so.

A thread beside the poll loop keeps one long request open. The server's answer carries no command,
only "something is waiting": the runner then does its ordinary signed check-in, so everything the
check-in guarantees (signatures, nonces, at-least-once delivery, run once) holds for commands that
came fast too. The regular poll never stops: when the channel is down, refused or absent (an older
server, a proxy that cuts long requests), the agent simply works as it always did.

One hold:

1. wait until the access token is good for a while (if not, nudge the runner: its check-in renews
   it — only the runner ever renews, so two threads can never race a refresh-token rotation);
2. open the request with the same signed headers as every agent request;
3. read lines: ``{"waiting": true}`` (the channel works: the backoff resets), blank keep-alives,
   and a final ``{"wake": …}``; a wake-up nudges the runner, then the next hold waits for the
   check-in it caused, so the catch-up read does not send the agent a second time;
4. on a refusal or failure, wait before the next hold: the server's Retry-After, an hour for a
   server without the channel (404/405) or one that refuses the agent for good (403), otherwise an
   exponential backoff with jitter.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Callable, Optional

import requests

from agent_client import __version__
from agent_client.protocol import WAKE_KEEPALIVE_SECONDS
from agent_client.transport import Client, TerminalError, parse_retry_after

logger = logging.getLogger("redflag.agent.wakeup")

# Three keep-alives missed: the connection is dead (a NAT forgot it, the server vanished).
READ_TIMEOUT_SECONDS = 3 * WAKE_KEEPALIVE_SECONDS
CONNECT_TIMEOUT_SECONDS = 10.0
UNSUPPORTED_RETRY_SECONDS = 3600.0
REFUSED_RETRY_SECONDS = 3600.0
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 900.0
# How long a hold waits for the check-in its wake-up (or its token renewal) asked for.
CHECKIN_WAIT_SECONDS = 60.0
# A token that expires sooner than this is renewed (by the runner) before a hold uses it.
TOKEN_MARGIN_SECONDS = 60.0
# The runner's wait looks at its stop event this often; a nudge interrupts it at once (the CLI nudges
# on SIGTERM too). Each look wakes the process: once a second was 3,600 wake-ups an idle hour.
STOP_CHECK_SECONDS = 5.0
MAX_LINE_BYTES = 4096


class HoldResult:
    WOKEN = "woken"  # the server says: check in now
    ENDED = "ended"  # the hold ran its course; open the next one
    NEEDS_CHECKIN = "needs_checkin"  # the token needs the runner's renewal first
    UNSUPPORTED = "unsupported"  # this server has no fast channel
    REFUSED = "refused"  # the server refuses this agent (the runner parks itself)
    RETRY_AFTER = "retry_after"  # the server asked to come back later
    FAILED = "failed"  # network error, dead connection, unexpected answer


class WakeChannel:
    def __init__(
        self,
        *,
        client: Callable[[], Client],
        stop: threading.Event,
        rng: Optional[random.Random] = None,
        session_factory: Callable[[], requests.Session] = requests.Session,
    ) -> None:
        self.client = client
        self.stop = stop
        self.rng = rng or random.Random()
        self.session_factory = session_factory
        self.nudged = threading.Event()
        self.cycle_done = threading.Event()
        self.failures = 0
        self.retry_after: Optional[float] = None
        self.thread: Optional[threading.Thread] = None
        # Counters for tests and the bench: how the channel has fared since the start.
        self.wakeups = 0
        self.holds_opened = 0

    # -- what the runner sees --------------------------------------------------------------

    def wait(self, timeout: float) -> bool:
        """The runner's wait between cycles: returns early, False, on a nudge; True once stopped."""
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.nudged.wait(min(remaining, STOP_CHECK_SECONDS)):
                self.nudged.clear()
                return self.stop.is_set()
        return True

    def cycle_finished(self, _outcome: object = None) -> None:
        """The runner finished a cycle (a check-in, renewing the token if it had to)."""
        self.cycle_done.set()

    def nudge(self) -> None:
        self.cycle_done.clear()
        self.nudged.set()

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="redflag-wakeup", daemon=True)
        self.thread.start()

    def run(self) -> None:
        session = self.session_factory()
        session.headers["User-Agent"] = f"redflag-agent/{__version__}"
        while not self.stop.is_set():
            try:
                result = self.hold(session)
            except Exception:  # noqa: BLE001 - the channel must never take the agent down; polling goes on
                logger.exception("fast channel failed unexpectedly")
                result = HoldResult.FAILED
            if result in (HoldResult.WOKEN, HoldResult.NEEDS_CHECKIN):
                self.nudge()
                self.cycle_done.wait(CHECKIN_WAIT_SECONDS)
                continue
            delay = self.delay_after(result)
            if delay and self.stop.wait(delay):
                return

    def delay_after(self, result: str) -> float:
        if result == HoldResult.ENDED:
            self.failures = 0
            return 0.0
        if result == HoldResult.UNSUPPORTED:
            return UNSUPPORTED_RETRY_SECONDS
        if result == HoldResult.REFUSED:
            return REFUSED_RETRY_SECONDS
        self.failures += 1
        step = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * (2 ** (self.failures - 1)))
        delay = step / 2 + self.rng.uniform(0, step / 2)
        if result == HoldResult.RETRY_AFTER and self.retry_after:
            delay = max(delay, self.retry_after + self.rng.uniform(0, min(5.0, self.retry_after * 0.1)))
        return delay

    def hold(self, session: requests.Session) -> str:
        """One long request (steps 1 to 3 of the module docstring)."""
        client = self.client()
        if not client.config.agent_id:
            return HoldResult.REFUSED
        if client.access_token_expires_within(TOKEN_MARGIN_SECONDS):
            return HoldResult.NEEDS_CHECKIN
        try:
            headers = client.signed_headers()
        except TerminalError as exc:
            logger.info("fast channel off: %s", exc)
            return HoldResult.REFUSED
        if client.config.ca_bundle:
            session.verify = client.config.ca_bundle
        url = client.config.server_url.rstrip("/") + client.agent_path("wait")
        try:
            response = session.get(url, headers=headers, stream=True, allow_redirects=False,
                                   timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS))
        except requests.RequestException as exc:
            logger.debug("fast channel: cannot connect (%s)", type(exc).__name__)
            return HoldResult.FAILED
        with response:
            return self._read(response)

    def _read(self, response: requests.Response) -> str:
        status = response.status_code
        if status in (404, 405, 501):
            logger.info("the server offers no fast channel (%d); polling only, trying again in an hour", status)
            return HoldResult.UNSUPPORTED
        if status == 401:
            return HoldResult.NEEDS_CHECKIN  # the runner's check-in renews (or finds the agent refused)
        if status == 403:
            return HoldResult.REFUSED
        if status in (409, 429) or status >= 500:
            self.retry_after = parse_retry_after(response.headers.get("Retry-After"))
            logger.info("fast channel refused for now (%d); polling meanwhile", status)
            return HoldResult.RETRY_AFTER
        if status != 200:
            logger.info("fast channel: unexpected answer %d; polling meanwhile", status)
            return HoldResult.FAILED
        try:
            for line in response.iter_lines(chunk_size=MAX_LINE_BYTES):
                if not line:
                    continue  # a keep-alive
                message = json.loads(line[:MAX_LINE_BYTES])
                if not isinstance(message, dict):
                    return HoldResult.FAILED
                if message.get("waiting"):
                    if self.holds_opened == 0 or self.failures:
                        logger.info("fast channel open: the server can reach this agent at once")
                    self.holds_opened += 1
                    self.failures = 0
                    continue
                if message.get("wake") is True:
                    self.wakeups += 1
                    logger.debug("woken by the server (%s)", message.get("reason"))
                    return HoldResult.WOKEN
                if message.get("wake") is False:
                    return HoldResult.ENDED
        except (requests.RequestException, ValueError) as exc:
            logger.debug("fast channel lost (%s)", type(exc).__name__)
            return HoldResult.FAILED
        return HoldResult.FAILED  # closed without a final line
