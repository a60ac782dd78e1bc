"""Write paths for registration tokens (agent credentials live with agents: agents_app.services.credentials).

Each function validates, saves and records its SystemEvent in one transaction.
A refusal that must leave an audit row returns from the transaction first and
raises afterwards, so the event is committed while the caller gets a 4xx.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from events_app.choices import Component, EventSubtype, EventType
from events_app.services import SYSTEM_ACTOR, record_event
from redflag.errors import InvalidRequest
from redflag.models import ServerSettings
from tokens_app.choices import RefusalReason
from tokens_app.hashing import REGISTRATION_PREFIX, display_prefix, hash_secret, new_secret
from tokens_app.models import RegistrationToken
from tokens_app.querysets import active_condition, token_status

LABEL_MAX_LENGTH = RegistrationToken._meta.get_field("label").max_length


# --- registration tokens ---------------------------------------------------


class TokenLifetimeTooLong(InvalidRequest):
    default_code = "token_lifetime_too_long"


def token_create(
    *, label: str, max_seats: int, expires_in: timedelta, created_by=None
) -> tuple[RegistrationToken, str]:
    """Create a registration token; returns it with the plaintext, which is never stored."""
    cap = timedelta(hours=ServerSettings.current().registration_token_max_hours)
    if expires_in > cap:
        raise TokenLifetimeTooLong(f"a token may live at most {cap.total_seconds() / 3600:g} hours")
    if expires_in <= timedelta(0):
        raise InvalidRequest("the expiry must be in the future")
    if max_seats < 1:
        raise InvalidRequest("a token needs at least one seat")
    secret = new_secret(REGISTRATION_PREFIX)
    actor = created_by.get_username() if created_by else SYSTEM_ACTOR
    with transaction.atomic():
        token = RegistrationToken.objects.create(
            label=label,
            token_hash=hash_secret(secret),
            prefix=display_prefix(secret),
            max_seats=max_seats,
            expires_at=timezone.now() + expires_in,
            created_by=created_by,
        )
        record_event(
            event_type=EventType.TOKEN_CREATED,
            subtype=EventSubtype.SUCCESS,
            component=Component.SECURITY,
            message=f"Registration token {token.label!r} created ({max_seats} seats)",
            metadata={"token_id": token.pk, "prefix": token.prefix, "seats": max_seats,
                      "expires_at": token.expires_at.isoformat()},
            actor=actor,
        )
    return token, secret


def token_update(*, token: RegistrationToken, label: str, actor: str) -> bool:
    """Rename a token (its label is all an admin may change); False when the label is unchanged."""
    label = label.strip()
    if not label or len(label) > LABEL_MAX_LENGTH:
        raise InvalidRequest(f"a label needs 1 to {LABEL_MAX_LENGTH} characters")
    with transaction.atomic():
        previous = RegistrationToken.objects.select_for_update().values_list("label", flat=True).get(pk=token.pk)
        if previous == label:
            return False
        RegistrationToken.objects.filter(pk=token.pk).update(label=label)
        token.label = label
        record_event(
            event_type=EventType.CONFIG_CHANGED,
            subtype=EventSubtype.SUCCESS,
            component=Component.SECURITY,
            message=f"Registration token {previous!r} renamed to {label!r}",
            metadata={"token_id": token.pk, "prefix": token.prefix, "label": label, "previous_label": previous},
            actor=actor,
        )
    return True


def token_revoke(*, token: RegistrationToken, actor: str) -> bool:
    """Revoke ``token``; False when it was already revoked (nothing recorded)."""
    now = timezone.now()
    with transaction.atomic():
        revoked = RegistrationToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
        if revoked:
            record_event(
                event_type=EventType.TOKEN_REVOKED,
                subtype=EventSubtype.SUCCESS,
                component=Component.SECURITY,
                message=f"Registration token {token.label!r} revoked",
                metadata={"token_id": token.pk, "prefix": token.prefix, "seats_used": token.seats_used},
                actor=actor,
            )
    return bool(revoked)


def token_redeem(*, token: RegistrationToken, now: datetime) -> RefusalReason | None:
    """Consume one of ``token``'s seats with a single conditional UPDATE (the validity rule of
    ``active_condition``, so a seat is never over-issued under concurrency).

    None when the seat is taken; otherwise the real reason it was refused, read again (the token may
    have been revoked or used up since the caller read it). Must run inside the caller's transaction
    so the seat and the agent commit together; it takes the token's row lock until that commit, so
    the caller runs it last.
    """
    if RegistrationToken.objects.filter(pk=token.pk).filter(active_condition(now)).update(
        seats_used=F("seats_used") + 1
    ):
        return None
    return token_refusal(token=RegistrationToken.objects.filter(pk=token.pk).first(), now=now)


def token_redeem_sql(*, secret: str, now: datetime, condition: str = "TRUE") -> tuple[str, list]:
    """``token_redeem``'s conditional UPDATE as SQL, for a caller that sends it inside a larger statement
    (one round trip): a seat of the token with this secret if it is active (the WHERE compiled from
    ``active_condition``: the same rule) and ``condition`` holds; RETURNING the token's id and label."""
    query = RegistrationToken.objects.by_secret(secret).filter(active_condition(now)).query
    where, params = query.get_compiler(connection=connection).compile(query.where)
    table, seats = connection.ops.quote_name(RegistrationToken._meta.db_table), connection.ops.quote_name("seats_used")
    return (f"UPDATE {table} SET {seats} = {seats} + 1 WHERE {where} AND {condition} RETURNING id, label",
            list(params))


def token_refusal(*, token: RegistrationToken | None, now: datetime) -> RefusalReason:
    """Why this token (None: no token has the secret presented) cannot enroll a machine now."""
    if token is None:
        return RefusalReason.UNKNOWN
    return RefusalReason(token_status(token, now).value)
