"""Agent-side events, shaped for ``POST /api/v1/agents/{id}/events``.

Each event gets its own UUID when it happens, so sending it twice (a lost
acknowledgement, a restart mid-flush) stores it once on the server.
Messages and metadata never carry a token.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Optional

from agent_client.config import format_time, utc_now

# The vocabulary the server accepts from an agent (events_app.choices.AGENT_REPORTABLE_TYPES).
AGENT_STARTUP = "agent_startup"
AGENT_REGISTRATION = "agent_registration"
AGENT_CHECKIN = "agent_checkin"
AGENT_SCAN = "agent_scan"
AGENT_UPDATE = "agent_update"
AGENT_INSTALL = "agent_install"
AGENT_REBOOT = "agent_reboot"
TOKEN_RENEWAL = "token_renewal"
CONFIG_CHANGED = "config_changed"
SECURITY_VIOLATION = "security_violation"
MIGRATION = "migration"
EVENT_TYPES = (
    AGENT_STARTUP, AGENT_REGISTRATION, AGENT_CHECKIN, AGENT_SCAN, AGENT_UPDATE, AGENT_INSTALL,
    AGENT_REBOOT, TOKEN_RENEWAL, CONFIG_CHANGED, SECURITY_VIOLATION, MIGRATION,
)
SUBTYPES = ("initiated", "success", "failed", "info", "warning", "critical")
SEVERITIES = ("info", "warning", "error", "critical")
# The server's Component list (tests/server/test_protocol_agreement.py); the agent itself uses the first ones.
COMPONENTS = ("agent", "server", "build", "download", "config", "migration", "security", "scheduler", "policy",
              "notification", "reports", "accounts")

MAX_MESSAGE_CHARS = 2000
MAX_METADATA_KEYS = 100


def make_event(
    event_type: str,
    subtype: str,
    message: str,
    *,
    severity: str = "info",
    component: str = "agent",
    metadata: Optional[dict[str, Any]] = None,
    occurred_at: Optional[dt.datetime] = None,
) -> dict[str, Any]:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    if subtype not in SUBTYPES:
        raise ValueError(f"unknown event subtype {subtype!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}")
    metadata = dict(metadata or {})
    if len(metadata) > MAX_METADATA_KEYS:
        metadata = dict(list(metadata.items())[:MAX_METADATA_KEYS])
    return {
        "id": str(uuid.uuid4()),
        "event_type": event_type,
        "event_subtype": subtype,
        "severity": severity,
        "component": component,
        "message": message[:MAX_MESSAGE_CHARS] or "(no message)",
        "metadata": metadata,
        "occurred_at": format_time(occurred_at or utc_now()),
    }
