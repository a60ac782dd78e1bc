"""GET /api/v1/agents/{id}/wait: the fast channel's long poll, a bare ASGI endpoint.

It answers "something is waiting, check in now", never the command itself (the check-in stays the
one delivery path, with its signatures, nonces and claims). The agent holds one such request; the
server answers newline-delimited JSON (agent_client.protocol documents the lines).

Why bare ASGI in front of Django rather than a view: an idle wait must cost a suspended coroutine
and nothing else. Django would run this project's sync-only middleware in a thread per request,
and ten thousand waiting agents would hold ten thousand threads. Here, per request:

1. the path and method are checked (404 / 405 as JSON);
2. when this event loop already has more wait opens in progress than it finishes in
   BACKLOG_SECONDS (a herd reconnecting after a restart: agents_app/services/wakeup.py,
   ``OpenBacklog``), the open is refused at once, before any authentication work: 503 with a
   Retry-After drawn from HERD_RETRY_SECONDS, so the herd spreads itself over a minute and check-ins
   keep their share of the threads and database connections (the agent polls meanwhile and comes
   back after the Retry-After);
3. a waiter is registered with this event loop's WakeHub and the hub must be listening (else 503:
   the agent keeps polling and tries the channel again later);
4. in the loop's shared thread pool, with a database connection only for that moment, the
   check-in's lean authentication: the access token verified in Python, then ONE statement
   (``wait_claim``) for credentials-still-valid + machine binding + request nonce + the per-agent
   rate count (at the check-in's rate, counted apart) + the catch-up read (a pending command that
   arrived before the waiter was listening answers at once). A request out of the ordinary (a
   header missing or malformed, another agent's path, a stale timestamp) takes the general path
   (AgentTokenAuthentication), and every refusal is answered as every agent endpoint answers it
   (401/403/409/429, audited the same way);
5. otherwise the request is held: a blank line every WAKE_KEEPALIVE_SECONDS, one final line when
   the agent is woken, when REDFLAG_WAKE_HOLD_SECONDS have passed, or when the client goes away.

Served only under ASGI (redflag/asgi.py mounts it). Under WSGI the path is a 404, which the agent
reads as "this server has no fast channel" and keeps polling, as it does with an older server.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import re
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.request import Request

from agent_client.protocol import WAKE_KEEPALIVE_SECONDS
from agents_app.api.authentication import (
    NONCE_PATTERN,
    TIMESTAMP_PATTERN,
    AgentTokenAuthentication,
    IsPathAgent,
    bearer_token,
    request_machine_id,
    request_nonce_check,
)
from agents_app.models import Command
from agents_app.services.agents import agent_check_machine
from agents_app.services.waits import wait_claim
from agents_app.services.wakeup import Waiter, WakeHub
from redflag.api.errors import error_body, exception_handler
from redflag.api.throttling import CheckinThrottle, rate_take, rate_window

logger = logging.getLogger(__name__)

# The agent id as Django's <uuid:> converter reads it: lowercase, hyphenated.
WAIT_PATH = re.compile(r"^/api/v1/agents/(?P<agent_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                       r"/wait$")
# How long a new wait may wait for its process's listener to connect before it is refused (503).
LISTENER_READY_SECONDS = 5.0
# A channel the server cannot offer now: the agent polls meanwhile and comes back after this.
UNAVAILABLE_RETRY_AFTER_SECONDS = 60
# Open waits one agent may hold in one process; a newer one ends the oldest ("superseded"), so a
# reconnecting or misbehaving agent cannot pile up held requests.
MAX_WAITS_PER_AGENT = 2
# A herd (every agent reconnecting after a restart): refused opens come back after a Retry-After
# drawn from this range, so they arrive spread over about a minute instead of all at once.
HERD_RETRY_SECONDS = (5, 65)


class WaitThrottle(CheckinThrottle):
    """The check-in's rate, counted apart: opening waits never eats into the agent's check-ins."""

    def identity(self, request) -> str:
        return self.identity_for(super().identity(request))

    @staticmethod
    def identity_for(agent_id: str) -> str:
        return "wait-" + agent_id


class _PathView:
    """What IsPathAgent and the throttle read from a view."""

    def __init__(self, agent_id: str):
        self.kwargs = {"agent_id": agent_id}


@dataclass
class Refusal:
    status: int
    body: dict
    headers: list[tuple[bytes, bytes]]


def _refusal(exc: Exception, drf_request) -> Refusal:
    if isinstance(exc, DisallowedHost):
        return Refusal(400, error_body("invalid_host", "The Host header is not one this server answers to."), [])
    response = exception_handler(exc, {"view": None, "request": drf_request})
    if response is None:  # not an API error: never a trace to the client
        logger.exception("wait endpoint failed", exc_info=exc)
        return Refusal(500, error_body("server_error", "The server could not complete the request."), [])
    headers = [(name.lower().encode("latin-1"), str(value).encode("latin-1")) for name, value in response.items()
               if name.lower() in ("retry-after", "www-authenticate")]
    return Refusal(response.status_code, response.data, headers)


def authorize_and_peek(scope: dict, agent_id: str) -> Refusal | bool:
    """Step 4 (in a pool thread): a Refusal, or whether a command is already waiting."""
    close_old_connections()
    drf_request = None
    try:
        django_request = ASGIRequest(scope, io.BytesIO())
        django_request.get_host()  # ALLOWED_HOSTS, as Django checks it for every other request
        lean = _lean_headers(django_request, agent_id)
        if lean is not None:
            return _lean_authorize_and_peek(django_request, agent_id, *lean)
        drf_request = Request(django_request, authenticators=[AgentTokenAuthentication()])
        view = _PathView(agent_id)
        if not getattr(drf_request.user, "is_authenticated", False):
            raise exceptions.NotAuthenticated()
        IsPathAgent().has_permission(drf_request, view)
        throttle = WaitThrottle()
        if not throttle.allow_request(drf_request, view):
            raise exceptions.Throttled(wait=throttle.wait())
        # The check-in's own rule (commands_deliver): pending and not expired.
        return (Command.objects.pending()
                .filter(agent_id=drf_request.user.agent.pk, expires_at__gt=timezone.now()).exists())
    except Exception as exc:  # noqa: BLE001 - every refusal becomes its JSON answer
        return _refusal(exc, drf_request)
    finally:
        close_old_connections()


def _lean_headers(request, agent_id: str) -> tuple[int, str, str] | None:
    """(credential generation, machine id, nonce) of a well-formed request for its own agent's wait
    with a fresh timestamp; None for anything the general path must answer (it answers exactly as
    every agent endpoint does)."""
    try:
        token = bearer_token(request)
        if token is None or token[0] != agent_id:
            return None
        machine_id_hash = request_machine_id(request)
        nonce = request.META.get("HTTP_X_REQUEST_NONCE", "")
        timestamp = request.META.get("HTTP_X_REQUEST_TIMESTAMP", "")
    except exceptions.APIException:
        return None
    if not NONCE_PATTERN.fullmatch(nonce) or not TIMESTAMP_PATTERN.fullmatch(timestamp):
        return None
    if abs(time.time() - int(timestamp)) > settings.REDFLAG_NONCE_SKEW_SECONDS:
        return None
    return token[1], machine_id_hash, nonce


def _lean_authorize_and_peek(request, agent_id: str, generation: int, machine_id_hash: str, nonce: str) -> bool:
    """The common open in one statement (``wait_claim``); when it records nothing, the refusal is
    worked out in the general path's order (401, 403, 429, 409), taking the nonce at most once."""
    now = timezone.now()
    window = rate_window(WaitThrottle.bucket, WaitThrottle.identity_for(agent_id), now)
    claim = wait_claim(agent_id=agent_id, generation=generation, machine_id_hash=machine_id_hash, nonce=nonce,
                       rate=window, now=now)
    if claim.nonce_fresh:
        if not claim.within(window):
            raise exceptions.Throttled(wait=max(1.0, float(window.period)))
        return claim.pending
    agent = AgentTokenAuthentication.agent_with_credentials(request, agent_id, generation)  # 401, 403
    agent_check_machine(agent=agent, machine_id_hash=machine_id_hash)  # 403, or an admin-opened rebind
    if not claim.within(window):  # counted in the cache before anything else: nothing taken
        raise exceptions.Throttled(wait=max(1.0, float(window.period)))
    request_nonce_check(request, agent)  # 409 for a replay; else (just rebound) the nonce is taken now
    if window is not None and claim.rate_count is None and rate_take(window) > window.allowed:
        raise exceptions.Throttled(wait=max(1.0, float(window.period)))
    return Command.objects.pending().filter(agent_id=agent.pk, expires_at__gt=now).exists()


def _herd_refusal() -> Refusal:
    return Refusal(503, error_body("wake_channel_busy", "The server is opening many waits; keep polling and try "
                                                        "again after Retry-After."),
                   [(b"retry-after", str(random.randint(*HERD_RETRY_SECONDS)).encode())])


def _line(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


async def _answer(send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"), *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


async def wait_endpoint(scope: dict, receive, send, agent_id: str) -> None:
    if scope["method"] != "GET":
        await _answer(send, 405, error_body("method_not_allowed", f'Method "{scope["method"]}" not allowed.'),
                      [(b"allow", b"GET")])
        return
    hub = WakeHub.for_running_loop()
    if not hub.opens.admit():  # step 2: a herd; nothing done for this request yet
        refusal = _herd_refusal()
        await _answer(send, refusal.status, refusal.body, refusal.headers)
        return
    waiter = hub.register(agent_id)
    try:
        try:
            if not await hub.ready(LISTENER_READY_SECONDS):
                await _answer(send, 503, error_body("wake_channel_unavailable",
                                                    "The fast channel is not available now; keep polling."),
                              [(b"retry-after", str(UNAVAILABLE_RETRY_AFTER_SECONDS).encode())])
                return
            outcome = await sync_to_async(authorize_and_peek, thread_sensitive=False)(scope, agent_id)
        finally:
            hub.opens.done()
        if isinstance(outcome, Refusal):
            await _answer(send, outcome.status, outcome.body, outcome.headers)
            return
        waiter.armed = True
        _supersede_older(hub, waiter)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no")]})  # nginx: pass each line on at once
        if outcome:
            waiter.wake("pending")
        else:
            await send({"type": "http.response.body", "body": _line({"waiting": True}), "more_body": True})
        await _hold(waiter, receive, send)
    finally:
        hub.release(waiter)


def _supersede_older(hub: WakeHub, waiter: Waiter) -> None:
    # Oldest first (the hub keeps each agent's waiters in arrival order); only authenticated ones.
    group = hub.waiters.get(waiter.agent_id, {})
    others = [other for other in group if other is not waiter and other.armed and not other.event.is_set()]
    for other in others[:max(0, len(others) - (MAX_WAITS_PER_AGENT - 1))]:
        other.wake("superseded")


async def _hold(waiter: Waiter, receive, send) -> None:
    """Step 5: keep-alives until woken, the hold ends, or the client leaves."""
    gone = asyncio.get_running_loop().create_task(_disconnected(receive, waiter))
    deadline = asyncio.get_running_loop().time() + settings.REDFLAG_WAKE_HOLD_SECONDS
    try:
        while not waiter.event.is_set():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                waiter.wake("hold_ended")
                break
            try:
                await asyncio.wait_for(waiter.event.wait(), min(remaining, WAKE_KEEPALIVE_SECONDS))
            except asyncio.TimeoutError:
                if not waiter.event.is_set():
                    await send({"type": "http.response.body", "body": b"\n", "more_body": True})
        if waiter.reason != "client_gone":
            final = {"wake": waiter.reason not in ("hold_ended", "superseded"), "reason": waiter.reason}
            await send({"type": "http.response.body", "body": _line(final)})
    except OSError:  # the client left between two lines (uvicorn raises ClientDisconnected)
        pass
    finally:
        gone.cancel()


async def _disconnected(receive, waiter: Waiter) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            waiter.wake("client_gone")
            return


def with_wait_endpoint(django_application):
    """The ASGI application: the wait path here, everything else to Django."""

    async def application(scope, receive, send):
        if scope["type"] == "http":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            match = WAIT_PATH.match(path)
            if match:
                await wait_endpoint(scope, receive, send, match["agent_id"])
                return
        await django_application(scope, receive, send)

    return application
