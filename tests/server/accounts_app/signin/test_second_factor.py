"""Two-factor sign-in through the real pages (allauth's log-in and MFA, accounts_app/signin).

The requirement (REDFLAG_REQUIRE_MFA) is on here, as in production: tests/settings.py turns it off for the
rest of the suite, which signs in with force_login.
"""

from __future__ import annotations

import logging

import pytest
from allauth.mfa.models import Authenticator
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.core import serializers
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.accounts_app.signin.helpers import (
    PASSWORD,
    set_up_totp,
    shown_recovery_codes,
    sign_in,
    totp,
)
from tests.server.events_app.helpers import auditors_group

# allauth announces a new or removed factor on commit, as a request does it: real transactions here.
pytestmark = pytest.mark.django_db(transaction=True)

ADMIN_PAGES = ("/admin/", "/admin/agents_app/agent/", "/audit/events/", "/admin/redflag/serversettings/1/change/")


@pytest.fixture(autouse=True)
def mfa_required(settings):
    settings.REDFLAG_REQUIRE_MFA = True


@pytest.fixture
def admin_user(transactional_db):
    return User.objects.create_superuser("root", password=PASSWORD)


def events(**filters) -> list[SystemEvent]:
    return list(SystemEvent.objects.filter(**filters).order_by("seq"))


def wrong_code(secret: str) -> str:
    """A code that is not the current one (nor, with no tolerance configured, any accepted one)."""
    return f"{(int(totp(secret)) + 1) % 10**6:06d}"


def everything_recorded() -> str:
    """Every event row, serialized: what a secret must never be part of."""
    return serializers.serialize("json", SystemEvent.objects.all())


def test_an_admin_without_a_factor_is_walked_through_totp_setup_and_can_do_nothing_else(admin_user, client, caplog):
    caplog.set_level(logging.DEBUG)
    ServerSettings.current()
    response = sign_in(client, "root")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    # Every page, the auditor's included, sends them to set up a factor, keeping where they were going.
    for page in ADMIN_PAGES:
        answer = client.get(page)
        assert answer.status_code == 302, page
        assert answer["Location"].startswith(reverse("mfa_activate_totp") + "?next="), (page, answer["Location"])
    # A change posted from an old tab is not made.
    before = ServerSettings.current().default_poll_interval_seconds if hasattr(
        ServerSettings, "default_poll_interval_seconds") else None
    refused = client.post("/admin/redflag/serversettings/1/change/", {})
    assert refused.status_code == 302 and refused["Location"] == reverse("mfa_activate_totp")
    if before is not None:
        assert ServerSettings.current().default_poll_interval_seconds == before

    setup_page = client.get(reverse("mfa_activate_totp")).content.decode()
    assert 'id="mfa-required-note"' in setup_page  # says why they are here
    secret = set_up_totp(client)
    codes_page = client.get(reverse("mfa_view_recovery_codes")).content.decode()
    assert len(shown_recovery_codes(codes_page)) == 10 and 'id="mfa-continue"' in codes_page
    for page in ADMIN_PAGES:
        assert client.get(page).status_code == 200, page

    added = events(event_type="mfa_changed")
    assert [(event.metadata["factor"], event.metadata["change"]) for event in added] == [
        ("totp", "added"), ("recovery_codes", "added")]
    assert added[0].actor == "root" and added[0].component == "accounts"
    assert secret not in everything_recorded() + caplog.text
    assert not any(code in everything_recorded() + caplog.text for code in shown_recovery_codes(codes_page))


def test_password_then_totp_code_signs_in_and_wrong_codes_are_recorded(admin_user):
    client = Client()
    sign_in(client, "root")
    secret = set_up_totp(client)
    client.post(reverse("account_logout"))

    browser = Client()
    response = sign_in(browser, "root")
    assert response.status_code == 302 and response["Location"] == reverse("mfa_authenticate")
    assert browser.get("/admin/").status_code == 302  # not signed in until the second factor
    wrong = wrong_code(secret)
    assert browser.post(reverse("mfa_authenticate"), {"code": wrong}).status_code == 200
    failure = events(event_type="auth_failure", metadata__stage="second factor")
    assert len(failure) == 1 and failure[0].metadata["username"] == "root" and wrong not in everything_recorded()

    done = browser.post(reverse("mfa_authenticate"), {"code": totp(secret)})
    assert done.status_code == 302 and done["Location"] == "/admin/"
    assert browser.get("/admin/").status_code == 200
    assert browser.get("/audit/events/").status_code == 200
    assert len(events(event_type="user_login", actor="root")) == 2  # the set-up sign-in and this one


def test_wrong_codes_lock_the_second_factor_step_recorded_once(admin_user):
    client = Client()
    sign_in(client, "root")
    secret = set_up_totp(client)
    client.post(reverse("account_logout"))
    browser = Client()
    sign_in(browser, "root")
    wrong = wrong_code(secret)
    answers = [browser.post(reverse("mfa_authenticate"), {"code": wrong}) for _ in range(7)]
    assert "Too many failed login attempts" in answers[-1].content.decode()
    # Locked: the right code is refused too, for the rest of the window.
    assert browser.post(reverse("mfa_authenticate"), {"code": totp(secret)}).status_code == 200
    assert browser.get("/admin/agents_app/agent/").status_code == 302
    lockouts = events(event_type="user_lockout")
    assert len(lockouts) == 1 and lockouts[0].metadata["reason"] == "too many wrong second-factor codes"
    assert secret not in everything_recorded() and wrong not in everything_recorded()


def test_a_recovery_code_signs_in_once(admin_user):
    client = Client()
    sign_in(client, "root")
    set_up_totp(client)
    codes = shown_recovery_codes(client.get(reverse("mfa_view_recovery_codes")).content.decode())
    client.post(reverse("account_logout"))

    for attempt, expected in ((codes[0], 302), (codes[0], 200)):  # the second use of one code is refused
        browser = Client()
        sign_in(browser, "root")
        response = browser.post(reverse("mfa_authenticate"), {"code": attempt})
        assert response.status_code == expected
        assert (browser.get("/admin/").status_code == 200) == (expected == 302)
    assert not any(code in everything_recorded() for code in codes)


def test_a_viewer_needs_no_second_factor_but_anyone_who_can_change_something_does(transactional_db, client):
    viewer = User.objects.create_user("vera", password=PASSWORD, is_staff=True)
    viewer.groups.add(auditors_group())  # view permissions only
    sign_in(client, "vera")
    assert client.get("/audit/events/").status_code == 200

    editor = User.objects.create_user("eddie", password=PASSWORD, is_staff=True)
    editor.user_permissions.add(Permission.objects.get(codename="change_agent"))
    other = Client()
    sign_in(other, "eddie")
    assert other.get("/admin/").status_code == 302


def test_the_requirement_can_be_switched_off(admin_user, client, settings):
    settings.REDFLAG_REQUIRE_MFA = False
    sign_in(client, "root")
    assert client.get("/admin/").status_code == 200


def test_a_factor_held_is_checked_once_per_session(admin_user, client, settings, django_assert_num_queries):
    """The requirement costs no query per request: the first request learns it, the session remembers it."""
    sign_in(client, "root")
    set_up_totp(client)
    client.get("/admin/agents_app/agent/")
    settings.REDFLAG_REQUIRE_MFA = False
    with CaptureQueriesContext(connection) as off:
        assert client.get("/admin/agents_app/agent/").status_code == 200
    settings.REDFLAG_REQUIRE_MFA = True
    with django_assert_num_queries(len(off.captured_queries)):
        assert client.get("/admin/agents_app/agent/").status_code == 200


def test_removing_the_last_factor_sends_them_back_to_setup(admin_user, client):
    sign_in(client, "root")
    set_up_totp(client)
    assert client.get("/admin/").status_code == 200
    totp_row = Authenticator.objects.get(user=admin_user, type=Authenticator.Type.TOTP)
    response = client.post(reverse("mfa_deactivate_totp"))
    assert response.status_code == 302
    assert not Authenticator.objects.filter(pk=totp_row.pk).exists()
    assert client.get("/admin/")["Location"].startswith(reverse("mfa_activate_totp"))
    assert [(event.metadata["factor"], event.metadata["change"]) for event in events(event_type="mfa_changed")] == [
        ("totp", "added"), ("recovery_codes", "added"), ("totp", "removed"), ("recovery_codes", "removed")]
    assert events(event_type="mfa_changed")[2].severity == "warning"


def test_wrong_passwords_lock_the_account_once_recorded_and_no_password_is_kept(admin_user, caplog):
    caplog.set_level(logging.DEBUG)
    ServerSettings.objects.update_or_create(pk=1, defaults={"rate_admin": "100/min"})
    client = Client()
    answers = [sign_in(client, "root", f"wrong-password-{attempt}") for attempt in range(7)]
    assert [answer.status_code for answer in answers] == [200] * 7
    assert "Too many failed login attempts" in answers[-1].content.decode()
    # Locked: even the right password is refused for the rest of the window.
    assert sign_in(client, "root").status_code == 200 and client.get("/admin/").status_code == 302
    lockouts = events(event_type="user_lockout")
    assert len(lockouts) == 1, [event.message for event in lockouts]
    assert lockouts[0].metadata["username"] == "root" and lockouts[0].metadata["client_ip"] == "127.0.0.1"
    assert len(events(event_type="auth_failure", metadata__username="root")) == 5
    recorded = everything_recorded() + caplog.text
    assert "wrong-password" not in recorded and PASSWORD not in recorded


def test_the_address_rate_limit_answers_429_before_any_password_check(admin_user, client):
    ServerSettings.objects.update_or_create(pk=1, defaults={"rate_admin": "2/min"})
    codes = [sign_in(client, "root", "nope").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert len(events(event_type="auth_failure", metadata__username="root")) == 2
    lockout = events(event_type="user_lockout")
    assert len(lockout) == 1 and "address" in lockout[0].metadata["reason"]


def test_the_django_admin_login_view_hands_over_to_the_sign_in(transactional_db, client):
    """Nothing reaches Django's own admin log-in form, which knows no second factor."""
    request = RequestFactory().get("/admin/login/?next=/admin/agents_app/agent/")
    response = admin.site.login(request)
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/admin/agents_app/agent/"
    page = client.get("/admin/login/?next=/admin/")
    assert page.status_code == 200 and 'name="login"' in page.content.decode()
    assert page.context["sso_enabled"] is False
