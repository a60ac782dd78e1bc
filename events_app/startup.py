"""The server_startup event, written once per web process when it loads."""

from __future__ import annotations

import logging
import os
import socket

from django.conf import settings
from django.db import DatabaseError, connections

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event
from redflag.models import ServerSettings

logger = logging.getLogger(__name__)


def record_server_startup(*, server: str) -> None:
    details = {"pid": os.getpid(), "host": socket.gethostname(), "server": server,
               "rate_limits_enabled": settings.REDFLAG_RATE_LIMIT_ENABLED}
    try:
        record_event(
            event_type=EventType.SERVER_STARTUP,
            subtype=EventSubtype.SUCCESS,
            component=Component.SERVER,
            message=f"Server process {details['pid']} started ({server})",
            metadata=details,
            standalone=True,
        )
        server_settings = ServerSettings.current()
        public_url = server_settings.public_url
        if server_settings.insecure_public_url:
            logger.warning("the public URL %s is plain http: agents' traffic is not encrypted", public_url)
            record_event(
                event_type=EventType.CONFIG_CHANGED,
                subtype=EventSubtype.WARNING,
                severity=Severity.WARNING,
                component=Component.SECURITY,
                message=f"The public URL {public_url} is plain http: tokens, credentials and commands travel "
                        "unencrypted",
                metadata={**details, "public_url": public_url},
                standalone=True,
            )
        if not settings.REDFLAG_RATE_LIMIT_ENABLED:
            logger.warning("REDFLAG_RATE_LIMIT_ENABLED=false: rate limits are off")
            record_event(
                event_type=EventType.CONFIG_CHANGED,
                subtype=EventSubtype.WARNING,
                severity=Severity.WARNING,
                component=Component.SECURITY,
                message="Rate limits are switched off (REDFLAG_RATE_LIMIT_ENABLED=false)",
                metadata=details,
                standalone=True,
            )
    except DatabaseError as exc:
        # Not migrated yet, or the database is down: serving goes on; the
        # health endpoint reports the database state.
        logger.warning("could not record server start-up: %s", exc)
    finally:
        connections.close_all()  # this thread's connection; requests open their own
