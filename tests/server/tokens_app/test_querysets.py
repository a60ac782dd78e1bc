"""Registration token status (tokens_app/querysets.py): the property and the queryset share one rule."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase as HypothesisTestCase

from tokens_app.choices import TokenStatus
from tokens_app.hashing import hash_secret
from tokens_app.models import RegistrationToken
from tokens_app.querysets import token_status

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=dt_timezone.utc)


class TestStatusRuleAgreement(HypothesisTestCase):
    """The property and the queryset come from one rule: prove it for every combination."""

    @hypothesis_settings(max_examples=200, deadline=None)
    @given(
        revoked=st.booleans(),
        expires_offset=st.integers(min_value=-3, max_value=3),
        max_seats=st.integers(min_value=1, max_value=3),
        seats_used=st.integers(min_value=0, max_value=4),
    )
    def test_property_annotation_and_active_agree(self, revoked, expires_offset, max_seats, seats_used):
        token = RegistrationToken.objects.create(
            label="t", token_hash=hash_secret(f"{revoked}{expires_offset}{max_seats}{seats_used}"),
            prefix="p", max_seats=max_seats, seats_used=seats_used,
            expires_at=NOW + timedelta(seconds=expires_offset),
            revoked_at=NOW - timedelta(hours=1) if revoked else None,
        )

        python_status = token_status(token, NOW)
        sql_status = RegistrationToken.objects.with_status(NOW).get(pk=token.pk).computed_status
        in_active = RegistrationToken.objects.active(NOW).filter(pk=token.pk).exists()
        assert python_status == sql_status
        assert in_active == (python_status == TokenStatus.ACTIVE)
        # Precedence: revoked beats expired beats exhausted.
        if revoked:
            assert python_status == TokenStatus.REVOKED
        elif expires_offset <= 0:
            assert python_status == TokenStatus.EXPIRED
        elif seats_used >= max_seats:
            assert python_status == TokenStatus.EXHAUSTED
        else:
            assert python_status == TokenStatus.ACTIVE
        token.delete()
