"""Talking to the outside: Apprise for its URL schemes, and the signed generic webhook.

Each sender returns None on success or an error text; the caller scrubs it of the destination's
secrets before storing it (vault.scrub), and nothing here logs the URL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import apprise
import requests
from apprise.attachment.memory import AttachMemory

WEBHOOK_TIMEOUT_SECONDS = 10
SIGNATURE_HEADER = "X-RedFlag-Signature"
TIMESTAMP_HEADER = "X-RedFlag-Timestamp"
DELIVERY_HEADER = "X-RedFlag-Delivery"
USER_AGENT = "RedFlag-Notifications/1"


# The HTTP libraries log each request line at DEBUG, query string included (a webhook's ?token=, an
# ntfy topic): while this thread sends a notification, their records are dropped.
TRANSPORT_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry", "requests")
_sending = threading.local()


class _NotWhileSending(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_sending, "active", False)


def install_log_filters() -> None:
    """Called once at start-up (apps.py)."""
    for name in TRANSPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _NotWhileSending) for existing in logger.filters):
            logger.addFilter(_NotWhileSending())


@contextmanager
def _quiet_transport():
    _sending.active = True
    try:
        yield
    finally:
        _sending.active = False


@dataclass
class Message:
    subject: str
    body: str
    payload: dict
    delivery_id: str
    attachments: list[tuple[str, bytes, str]] = field(default_factory=list)


def apprise_understands(url: str) -> bool:
    """Whether Apprise has a plugin that accepts this URL (scheme known, required parts present)."""
    return apprise.Apprise.instantiate(url.strip(), suppress_exceptions=True) is not None


def send_apprise(url: str, message: Message) -> str | None:
    notifier = apprise.Apprise()
    if not notifier.add(url):
        return "Apprise does not understand this URL any more"
    attachments = apprise.AppriseAttachment()
    for name, content, mimetype in message.attachments:
        attachments.add(AttachMemory(content=content, name=name, mimetype=mimetype))
    # Apprise reports failures only through its logger: capture them for the delivery log. The
    # "apprise" logger does not propagate to the server's log (apps.py), as its lines name URLs.
    with _quiet_transport(), apprise.LogCapture(level=logging.WARNING) as captured:
        ok = notifier.notify(title=message.subject, body=message.body,
                             attach=attachments if message.attachments else None)
        text = captured.getvalue().strip()
    if ok:
        return None
    return text[-2000:] or "Apprise reported a failure without saying why"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over ``<timestamp>.<body>``, hex, as sent in X-RedFlag-Signature (``v1=<hex>``)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def webhook_body(message: Message) -> bytes:
    return json.dumps(message.payload, sort_keys=True, separators=(",", ":")).encode()


def send_webhook(url: str, secret: str, message: Message, *, now: float | None = None) -> str | None:
    body = webhook_body(message)
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        DELIVERY_HEADER: message.delivery_id,
    }
    try:
        with _quiet_transport():
            response = requests.post(url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS,
                                     allow_redirects=False)
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:300]}"
