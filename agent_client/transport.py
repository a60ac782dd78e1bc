"""The agent's HTTP client for the RedFlag protocol (v1).

Every request carries the machine binding and a fresh nonce and timestamp;
authenticated ones carry the bearer access token. The client:

1. renews the access token before it expires, and on a 401 ``token_expired``
   (or ``invalid_credentials``) renews once and repeats the request;
2. saves the rotated refresh token atomically to the config file *before* the
   new access token is used — a crash can never leave the only valid refresh
   token in memory;
3. retries network errors, 429, 5xx and transient 409s with exponential
   backoff and jitter, waiting at least the server's ``Retry-After``;
4. raises :class:`TerminalError` when the server refuses this agent for good
   (``machine_mismatch``, ``agent_revoked``, ``wrong_agent``, a refused
   refresh token) so the caller stops retrying and logs one clear line;
5. sends nothing over plain ``http://`` to a host that is not this machine
   unless the config records that an admin registered with ``--insecure``
   (:func:`plain_http_problem`): a :class:`TerminalError` instead.

Nothing here logs or raises with a token in it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import hashlib
import ipaddress
import logging
import random
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Optional

import requests

from agent_client import __version__
from agent_client import config as config_module
from agent_client.config import AgentConfig, parse_time, utc_now
from agent_client.events import TOKEN_RENEWAL, make_event

logger = logging.getLogger("redflag.agent.transport")

API_PREFIX = "/api/v1"
TERMINAL_CODES = frozenset({"machine_mismatch", "agent_revoked", "wrong_agent"})
RENEWABLE_CODES = frozenset({"token_expired", "invalid_credentials"})
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# Renew this long before the access token's stated expiry, so a request never
# races the expiry on the wire.
RENEW_MARGIN = dt.timedelta(seconds=30)


# Where an agent enrols; a 404 or 405 there means the URL is not a RedFlag portal's base address.
REGISTER_PATH = f"{API_PREFIX}/agents/register"

class TransportError(Exception):
    """A request did not succeed."""


class ApiError(TransportError):
    """The server refused the request in a way retrying will not change (400, 404, 413, …)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"server refused the request ({status} {code}): {message}")
        self.status = status
        self.code = code
        self.message = message


class ServerUnavailable(TransportError):
    """Network errors, 429 or 5xx outlasted the retries; try again later."""

    def __init__(self, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TerminalError(TransportError):
    """The server refuses this agent until an admin acts (or it registers again)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 1.0
    max_seconds: float = 300.0
    # A Retry-After longer than this is not waited out inside one call: the
    # call fails with ServerUnavailable(retry_after=…) and the loop waits.
    max_retry_after_seconds: float = 900.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential with equal jitter: half the step fixed, half random."""
        step = min(self.max_seconds, self.base_seconds * (2 ** max(0, attempt - 1)))
        return step / 2 + rng.uniform(0, step / 2)

    def delay(self, attempt: int, retry_after: Optional[float], rng: random.Random) -> float:
        if retry_after is not None:
            # Never earlier than the server asked; a little later so a fleet does not return in step.
            return retry_after + rng.uniform(0, min(5.0, retry_after * 0.1))
        return self.backoff(attempt, rng)


@dataclasses.dataclass
class ApiResponse:
    status: int
    body: Any
    headers: dict[str, str]


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def settle_environment(session: requests.Session, url: str) -> None:
    """Read the proxy and CA-bundle environment variables once, for ``url``'s server, rather than on
    every request: requests looks them up (and ``~/.netrc``) per request while ``trust_env`` is on,
    a third of the CPU an idle agent's check-in costs. Every request of a Client goes to that one
    server, and the agent's environment does not change while it runs; so the answer is the same.
    """
    settings = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies = settings["proxies"]
    session.verify = settings["verify"]
    session.trust_env = False


def new_nonce() -> str:
    return secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]


def _error_of(response: requests.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error") or {}
        code = str(error.get("code") or f"http_{response.status_code}")
        message = str(error.get("message") or response.reason or "")
    except (ValueError, AttributeError):
        code, message = f"http_{response.status_code}", response.reason or "unexpected response"
    return code, message[:300]


class Client:
    def __init__(
        self,
        config: AgentConfig,
        *,
        machine_id_hash: str,
        config_path: Optional[Path] = None,
        session: Optional[requests.Session] = None,
        retry: Optional[RetryPolicy] = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Optional[random.Random] = None,
        timeout: tuple[float, float] = (10.0, 60.0),
        on_event: Optional[Callable[[dict[str, Any]], None]] = None,
    ) -> None:
        self.config = config
        self.machine_id_hash = machine_id_hash
        self.config_path = Path(config_path) if config_path else None
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"redflag-agent/{__version__}"
        if config.ca_bundle:
            self.session.verify = config.ca_bundle
        if session is None and config.server_url:
            settle_environment(self.session, config.server_url)
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.timeout = timeout
        self.on_event = on_event
        # Seconds to add to the local clock, learned from the server's Date
        # header after a stale_request answer (a host with a drifting clock).
        self.clock_offset = 0.0
        self._unsaved_credentials = False
        self._transport_problem = None if config.insecure_http else plain_http_problem(config.server_url)

    # -- public calls ------------------------------------------------------------

    def checkin(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", self.agent_path("checkin"), payload).body

    def send_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        body = self.request("POST", self.agent_path("events"), {"events": events}).body
        if not isinstance(body, dict) or body.get("received") != len(events):
            raise TransportError(f"server acknowledged {body!r} for {len(events)} events")
        return body

    def download(self, path: str, destination: Path, *, max_bytes: int) -> str:
        """Stream an authenticated GET to ``destination``; returns the SHA-256 of what arrived.

        Refuses more than ``max_bytes`` (the size the signed manifest promised).
        """
        self._refuse_insecure_transport()
        if self._access_token_expiring():
            self.renew()
        url = self.config.server_url.rstrip("/") + path
        try:
            response = self.session.get(url, headers=self._headers(True), timeout=self.timeout, stream=True,
                                        allow_redirects=False)
        except requests.RequestException as exc:
            raise ServerUnavailable(f"cannot reach {self._host()}: {_short(exc)}") from None
        with response:
            if response.status_code != 200:
                code, message = _error_of(response)
                raise ApiError(response.status_code, code, message)
            digest, received = hashlib.sha256(), 0
            with open(destination, "wb") as handle:
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    received += len(chunk)
                    if received > max_bytes:
                        raise ApiError(200, "too_large", f"the download exceeds the promised {max_bytes} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
        return digest.hexdigest()

    def signing_keys(self) -> list[dict[str, Any]]:
        return self.request("GET", f"{API_PREFIX}/signing-keys", auth=False).body.get("keys", [])

    def health(self) -> dict[str, Any]:
        return self.request("GET", f"{API_PREFIX}/health", auth=False).body

    def signed_headers(self) -> dict[str, str]:
        """The headers of one authenticated request (fresh nonce), for a request made outside
        :meth:`request` (the fast channel's long poll). Never renews: only the poll loop does."""
        self._refuse_insecure_transport()
        return self._headers(True)

    def access_token_expires_within(self, seconds: float) -> bool:
        if not self.config.access_token:
            return True
        try:
            expires = parse_time(self.config.access_token_expires_at)
        except ValueError:
            return False  # unknown expiry: let the server's 401 decide
        return expires is not None and expires - dt.timedelta(seconds=seconds) <= utc_now()

    def agent_path(self, suffix: str) -> str:
        if not self.config.agent_id:
            raise TransportError("this agent is not registered")
        return f"{API_PREFIX}/agents/{urllib.parse.quote(self.config.agent_id)}/{suffix}"

    # -- the request loop ------------------------------------------------------------

    def request(self, method: str, path: str, payload: Optional[dict[str, Any]] = None, *,
                auth: bool = True) -> ApiResponse:
        self._refuse_insecure_transport()
        if auth:
            self._save_pending_credentials()
            if self._access_token_expiring():
                logger.info("access token expires soon; renewing")
                self.renew()
        return self._exchange(method, path, payload, auth=auth, renewing=False)

    def _exchange(self, method: str, path: str, payload: Optional[dict[str, Any]], *, auth: bool,
                  renewing: bool) -> ApiResponse:
        url = self.config.server_url.rstrip("/") + path
        renewed = clock_adjusted = False
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.session.request(
                    method, url, json=payload, headers=self._headers(auth), timeout=self.timeout, allow_redirects=False
                )
            except requests.RequestException as exc:
                self._retry_or_raise(attempt, f"cannot reach {self._host()}: {_short(exc)}", None)
                continue
            status = response.status_code
            logger.debug("%s %s -> %d", method, path, status)
            if status < 400:
                return ApiResponse(status, self._json(response), dict(response.headers))
            code, message = _error_of(response)
            if status == 401 and code == "stale_request" and not clock_adjusted:
                clock_adjusted = self._adjust_clock(response)
                if clock_adjusted:
                    continue
            if status == 401 and code == "stale_request":
                raise ApiError(status, code, f"{message} (check this host's clock)")
            if renewing and status in (400, 401, 403, 404):
                raise self._renewal_refused(code, message)
            if status == 403 and code in TERMINAL_CODES:
                raise TerminalError(code, f"server refused this agent ({code}): {message}")
            if status == 401 and auth:
                if code in RENEWABLE_CODES and not renewed:
                    logger.info("access token refused (%s); renewing", code)
                    self.renew()
                    renewed = True
                    continue
                raise TerminalError(code, f"server refused the agent's credentials ({code}): {message}")
            if status == 409 and code == "replayed_nonce" and attempt < self.retry.max_attempts:
                continue  # every attempt has a fresh nonce; a collision is astronomically rare
            if status in RETRYABLE_STATUSES or status >= 500 or (status == 409 and code == "conflict"):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                self._retry_or_raise(attempt, f"server answered {status} ({code})", retry_after)
                continue
            raise ApiError(status, code, message)

    def _refuse_insecure_transport(self) -> None:
        if self._transport_problem is not None:
            raise TerminalError("insecure_transport", self._transport_problem)

    def _retry_or_raise(self, attempt: int, problem: str, retry_after: Optional[float]) -> None:
        too_long = retry_after is not None and retry_after > self.retry.max_retry_after_seconds
        if attempt >= self.retry.max_attempts or too_long:
            attempts = f"{attempt} attempt{'s' if attempt > 1 else ''}"
            raise ServerUnavailable(f"{problem}; gave up after {attempts}", retry_after)
        delay = self.retry.delay(attempt, retry_after, self.rng)
        logger.warning("%s; retrying in %.1f s", problem, delay)
        self.sleep(delay)

    def _headers(self, auth: bool) -> dict[str, str]:
        headers = {
            "X-Machine-ID": self.machine_id_hash,
            "X-Request-Nonce": new_nonce(),
            "X-Request-Timestamp": str(int(time.time() + self.clock_offset)),
            "Accept": "application/json",
        }
        if auth:
            headers["Authorization"] = f"Bearer {self.config.access_token}"
        return headers

    def _adjust_clock(self, response: requests.Response) -> bool:
        try:
            server_time = email.utils.parsedate_to_datetime(response.headers.get("Date", ""))
        except (TypeError, ValueError, IndexError):
            return False
        if server_time is None:
            return False
        self.clock_offset = server_time.timestamp() - time.time()
        logger.warning("local clock is %.0f s %s the server's; compensating", abs(self.clock_offset),
                       "behind" if self.clock_offset > 0 else "ahead of")
        return True

    @staticmethod
    def _json(response: requests.Response) -> Any:
        if response.status_code == 304 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "bad_response", "the server's answer is not JSON") from None

    def _host(self) -> str:
        return urllib.parse.urlsplit(self.config.server_url).netloc or self.config.server_url

    # -- credentials ------------------------------------------------------------------

    def _access_token_expiring(self) -> bool:
        if not self.config.access_token:
            return True
        try:
            expires = parse_time(self.config.access_token_expires_at)
        except ValueError:
            return False  # unknown expiry: let the server's 401 decide
        return expires is not None and expires - RENEW_MARGIN <= utc_now()

    def renew(self) -> None:
        """Rotate the credentials; the new refresh token is on disk before anything uses it."""
        if not self.config.refresh_token:
            raise TerminalError("no_refresh_token", "the config holds no refresh token: register this agent again")
        response = self._exchange(
            "POST", f"{API_PREFIX}/agents/renew", {"refresh_token": self.config.refresh_token}, auth=False,
            renewing=True,
        )
        body = response.body if isinstance(response.body, dict) else {}
        fields = ("access_token", "access_token_expires_at", "refresh_token", "refresh_token_expires_at")
        if not all(isinstance(body.get(name), str) and body.get(name) for name in fields):
            raise TransportError("the server's renew answer lacks credentials")
        for name in fields:
            setattr(self.config, name, body[name])
        self._unsaved_credentials = True
        self._save_pending_credentials()
        logger.info("credentials renewed")

    def _save_pending_credentials(self) -> None:
        """Persist renewed credentials; until that succeeds, no request uses them."""
        if not self._unsaved_credentials:
            return
        if self.config_path is None:
            self._unsaved_credentials = False
            return
        try:
            config_module.save(self.config, self.config_path)
        except OSError as exc:
            self._emit(
                TOKEN_RENEWAL, "failed",
                f"Renewed credentials could not be saved to {self.config_path}: {exc.strerror or exc}",
                severity="error", metadata={"reason": "config_write_failed"},
            )
            raise TransportError(
                f"renewed credentials could not be saved to {self.config_path}: {exc.strerror or exc}"
            ) from None
        self._unsaved_credentials = False

    def _renewal_refused(self, code: str, message: str) -> TerminalError:
        self._emit(
            TOKEN_RENEWAL, "failed", f"The server refused to renew this agent's credentials ({code}): {message}",
            severity="error", metadata={"reason": code},
        )
        return TerminalError(code, f"server refused to renew the credentials ({code}): {message}; register again")

    def _emit(self, event_type: str, subtype: str, message: str, **kwargs: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(make_event(event_type, subtype, message, **kwargs))
        except Exception:  # recording an event must never hide the real error
            logger.debug("could not record event", exc_info=True)


def _short(exc: BaseException) -> str:
    """A one-line reason for a requests exception (their str() is a nested repr)."""
    text = type(exc).__name__
    reason = exc
    while reason.__context__ is not None and reason is not reason.__context__:
        reason = reason.__context__
    detail = str(reason).split("] ")[-1].strip()
    if detail and len(detail) < 160:
        return f"{text} ({detail})"
    return text


def register(
    server_url: str,
    *,
    registration_token: str,
    machine_id_hash: str,
    facts: dict[str, str],
    agent_version: str = __version__,
    retry: Optional[RetryPolicy] = None,
    sleep: Callable[[float], None] = time.sleep,
    ca_bundle: Optional[str] = None,
    insecure_http: bool = False,
    refresh_token: Optional[str] = None,
) -> dict[str, Any]:
    """POST /agents/register; returns the server's answer (credentials, keys, config).

    Over plain HTTP to another machine only with ``insecure_http`` (``register --insecure``). A
    machine that is already enrolled re-enrols only with its agent's current ``refresh_token``
    (or within a re-enrolment window an admin opened); otherwise the server answers 409.
    """
    client = Client(
        AgentConfig(server_url=server_url, ca_bundle=ca_bundle, insecure_http=insecure_http),
        machine_id_hash=machine_id_hash,
        # A person is usually waiting: a few tries, and no long Retry-After sleeps.
        retry=retry or RetryPolicy(max_attempts=3, max_retry_after_seconds=60),
        sleep=sleep,
    )
    payload = {"registration_token": registration_token, "machine_id": machine_id_hash,
               "agent_version": agent_version, **facts}
    if refresh_token:
        payload["refresh_token"] = refresh_token
    response = client.request("POST", REGISTER_PATH, payload, auth=False)
    body = response.body
    required = ("agent_id", "access_token", "refresh_token")
    if not isinstance(body, dict) or not all(body.get(name) for name in required):
        raise TransportError("the server's registration answer lacks the agent id or credentials")
    return body


def is_this_machine(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic that never leaves the host."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_problem(url: str) -> Optional[str]:
    """Why the agent will not talk to ``url`` without ``--insecure``; None for https:// or this machine."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "http" or is_this_machine(parts.hostname or ""):
        return None
    return (f"{url} is plain HTTP to another machine: the registration token and the agent's credentials "
            "would cross the network unencrypted; use https:// (or register with --insecure)")


def normalize_server_url(url: str) -> str:
    """``https://host[:port][/prefix]`` without a trailing slash; ValueError naming the problem."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"server URL must look like https://host[:port], not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError("server URL must not have a query or fragment")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
