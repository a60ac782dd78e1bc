"""Signing in with Chromium: the first admin walked through TOTP set-up, a password and a TOTP code, a recovery
code, a security key (Chromium's virtual authenticator), and single sign-on through a real OpenID Connect provider.

The second factor is required here (REDFLAG_REQUIRE_MFA), as in production. Each code is computed from the
secret the set-up page shows, as an authenticator app would.
"""

from __future__ import annotations

import re

import pytest
from allauth.mfa.models import Authenticator
from django.contrib.auth.models import User
from playwright.sync_api import expect

from accounts_app.models import RoleGrant
from agents_app.models import AgentGroup
from events_app.models import SystemEvent
from tests.browser.conftest import screenshot, wait_until
from tests.oidc_provider import OidcProvider
from tests.server.accounts_app.signin.helpers import totp

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "browser-signin-pw-7"
CALLBACK = "/accounts/oidc/sso/login/callback/"


@pytest.fixture(autouse=True)
def mfa_required(settings):
    settings.REDFLAG_REQUIRE_MFA = True


@pytest.fixture
def admin_account(django_user_model):
    return django_user_model.objects.create_superuser("admin", "admin@example.net", PASSWORD)


def password_step(page, username: str, password: str = PASSWORD, next_url: str = "/admin/") -> None:
    page.goto(f"/admin/login/?next={next_url}")
    page.fill("#id_login", username)
    page.fill("#id_password", password)
    page.click("#login-form input[type=submit]")


def set_up_totp(page, name: str) -> tuple[str, list[str]]:
    """On the set-up page the middleware sent us to: read the secret, answer with its code, keep the recovery codes."""
    page.wait_for_url(re.compile(r"/accounts/2fa/totp/activate/"))
    expect(page.locator("#mfa-required-note")).to_be_visible()
    screenshot(page, f"{name}-totp-setup")
    secret = page.locator("#authenticator_secret").input_value()
    page.fill("#id_code", totp(secret))
    page.click("form[action='/accounts/2fa/totp/activate/'] button[type=submit]")
    page.wait_for_url(re.compile(r"/accounts/2fa/recovery-codes/$"))
    codes = page.locator("#recovery_codes").input_value().split()
    screenshot(page, f"{name}-recovery-codes")
    page.click("#mfa-continue")
    page.wait_for_url(re.compile(r"/admin/$"))
    return secret, codes


def sign_out(page) -> None:
    page.goto("/accounts/2fa/")
    page.click("#logout-form button[type=submit]")
    page.wait_for_url(re.compile(r"/admin/login/"))


def second_factor_step(page, code: str) -> None:
    page.wait_for_url(re.compile(r"/accounts/2fa/authenticate/"))
    page.fill("#id_code", code)
    page.click("form[action='/accounts/2fa/authenticate/'] button[type=submit]")


def test_first_sign_in_sets_up_totp_then_password_and_code_then_a_recovery_code(page, live_server, admin_account):
    # First sign-in (the README's make run banner): password, then straight to TOTP set-up; nothing else opens.
    password_step(page, "admin")
    page.wait_for_url(re.compile(r"/accounts/2fa/totp/activate/"))
    page.goto("/admin/agents_app/agent/")
    assert "/accounts/2fa/totp/activate/" in page.url
    page.goto("/audit/events/")
    assert "/accounts/2fa/totp/activate/" in page.url
    secret, codes = set_up_totp(page, "first-admin")
    expect(page.locator("#site-name")).to_contain_text("RedFlag")
    assert len(codes) == 10
    sign_out(page)

    # A password and a TOTP code.
    password_step(page, "admin", next_url="/audit/events/")
    screenshot(page, "signin-second-factor")
    second_factor_step(page, totp(secret))
    page.wait_for_url(re.compile(r"/audit/events/$"))
    expect(page.locator("#event-rows")).to_contain_text("admin")
    sign_out(page)

    # A recovery code instead of the app, once.
    password_step(page, "admin")
    second_factor_step(page, codes[3])
    page.wait_for_url(re.compile(r"/admin/$"))
    sign_out(page)
    password_step(page, "admin")
    second_factor_step(page, codes[3])
    expect(page.locator(".errorlist, .errornote").first).to_be_visible()
    assert "/accounts/2fa/authenticate/" in page.url
    screenshot(page, "signin-recovery-code-reused")

    assert SystemEvent.objects.filter(event_type="user_login", actor="admin").count() == 3
    recorded = str(list(SystemEvent.objects.values_list("message", "metadata")))
    assert secret not in recorded and not any(code in recorded for code in codes) and PASSWORD not in recorded


def test_a_security_key_as_the_second_factor(page, live_server, admin_account):
    """Chromium's virtual authenticator (DevTools protocol) plays the security key, for set-up and sign-in."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "usb", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})
    password_step(page, "admin")
    set_up_totp(page, "webauthn-admin")  # the first factor; the key is added beside it
    page.goto("/accounts/2fa/webauthn/add/")
    page.fill("#id_name", "virtual key")
    page.click("#mfa_webauthn_add")
    # The page's own URL already matches /accounts/2fa/: wait for the key to be stored, not for a URL.
    wait_until(lambda: Authenticator.objects.filter(user=admin_account, type=Authenticator.Type.WEBAUTHN).count() == 1,
               30, "the security key stored")
    page.wait_for_load_state()
    screenshot(page, "webauthn-added")
    sign_out(page)

    password_step(page, "admin")
    page.wait_for_url(re.compile(r"/accounts/2fa/authenticate/"))
    page.click("#mfa_webauthn_authenticate")
    page.wait_for_url(re.compile(r"/admin/$"))
    assert SystemEvent.objects.filter(event_type="mfa_changed", metadata__factor="webauthn").count() == 1


def test_single_sign_on_through_the_provider(page, live_server, tmp_path, settings):
    provider = OidcProvider(redirect_uris=[live_server.url + CALLBACK], log_path=tmp_path / "provider.log",
                            accounts={"alice": {"groups": ["redflag-approvers"]}})
    try:
        settings.REDFLAG_OIDC_ISSUER = provider.issuer
        settings.REDFLAG_OIDC_NAME = "Example SSO"
        settings.REDFLAG_OIDC_ROLE_MAP = {"redflag-approvers": {"role": "approver", "groups": ["web"]}}
        settings.SOCIALACCOUNT_PROVIDERS = {"openid_connect": {
            **settings.SOCIALACCOUNT_PROVIDERS["openid_connect"],
            "APPS": [{"provider_id": "sso", "name": "Example SSO", "client_id": provider.client_id,
                      "secret": provider.client_secret, "settings": {"server_url": provider.issuer}}]}}
        AgentGroup.objects.create(name="web")

        page.goto("/admin/login/?next=/admin/")
        screenshot(page, "sso-signin-page")
        page.click("#sso-sign-in")
        page.wait_for_url(re.compile(re.escape(provider.issuer) + r"/interaction/"))
        page.fill("input[name=login]", "alice")
        page.fill("input[name=password]", "anything")
        screenshot(page, "sso-provider-login")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(re.escape(provider.issuer) + r"/interaction/"))
        page.click("button[type=submit]")  # the provider's consent
        # Back at RedFlag as an approver of the web group: a second factor first, then the admin.
        set_up_totp(page, "sso-approver")
        expect(page.locator("#user-tools")).to_contain_text("alice".upper(), ignore_case=True)
    finally:
        provider.stop()
    grant = RoleGrant.objects.get(user=User.objects.get(username="alice"))
    assert grant.role == "approver" and [group.name for group in grant.groups.all()] == ["web"]
