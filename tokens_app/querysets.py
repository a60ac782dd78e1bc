"""Reusable reads for tokens.

A registration token's validity has one rule: not revoked, not expired, seats
left. ``STATUS_RULES`` states it once, in precedence order, as a pair per
status: the SQL condition and the same condition on a loaded row. The model's
``status`` property, ``with_status()``, ``active()`` and the atomic redemption
UPDATE all read from this table; tests/server/tokens_app/test_querysets.py proves both halves agree
for every combination.
"""

from __future__ import annotations

import datetime
from functools import reduce
from operator import or_
from typing import Callable, NamedTuple

from django.db import models
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from tokens_app.choices import TokenStatus
from tokens_app.hashing import hash_secret


class StatusRule(NamedTuple):
    status: TokenStatus
    condition: Callable[[datetime.datetime], Q]
    holds_for: Callable[[object, datetime.datetime], bool]


STATUS_RULES: tuple[StatusRule, ...] = (
    StatusRule(
        TokenStatus.REVOKED,
        lambda now: Q(revoked_at__isnull=False),
        lambda token, now: token.revoked_at is not None,
    ),
    StatusRule(
        TokenStatus.EXPIRED,
        lambda now: Q(expires_at__lte=now),
        lambda token, now: token.expires_at <= now,
    ),
    StatusRule(
        TokenStatus.EXHAUSTED,
        lambda now: Q(seats_used__gte=F("max_seats")),
        lambda token, now: token.seats_used >= token.max_seats,
    ),
)


def token_status(token, now: datetime.datetime) -> TokenStatus:
    for rule in STATUS_RULES:
        if rule.holds_for(token, now):
            return rule.status
    return TokenStatus.ACTIVE


def active_condition(now: datetime.datetime) -> Q:
    return ~reduce(or_, (rule.condition(now) for rule in STATUS_RULES))


class RegistrationTokenQuerySet(models.QuerySet):
    def with_status(self, now: datetime.datetime | None = None):
        now = now or timezone.now()
        return self.annotate(
            computed_status=Case(
                *(When(rule.condition(now), then=Value(rule.status.value)) for rule in STATUS_RULES),
                default=Value(TokenStatus.ACTIVE.value),
                output_field=models.CharField(),
            )
        )

    def active(self, now: datetime.datetime | None = None):
        return self.filter(active_condition(now or timezone.now()))

    def by_secret(self, secret: str):
        return self.filter(token_hash=hash_secret(secret))

