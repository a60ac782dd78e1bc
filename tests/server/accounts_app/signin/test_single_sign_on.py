"""Single sign-on against a real OpenID Connect provider (tests/oidc_provider: panva's oidc-provider under node).

Everything goes over real HTTP between three parties: this test as the browser (a requests session that
follows every redirect and posts the provider's own login and consent forms), RedFlag's live server, and
the provider process. Nothing of RedFlag or allauth is replaced.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urljoin

import pytest
import requests
from django.contrib.auth.models import User
from django.test import Client

from accounts_app.models import RoleGrant
from accounts_app.signin.adapters import PASSWORD_SIGN_IN_OFF
from agents_app.models import AgentGroup
from events_app.models import SystemEvent
from tests.oidc_provider import OidcProvider
from tests.server.accounts_app.signin.helpers import PASSWORD, sign_in

pytestmark = pytest.mark.django_db(transaction=True)

CALLBACK = "/accounts/oidc/sso/login/callback/"
ACCOUNTS = {"alice": {"groups": ["redflag-approvers", "coffee-club"]}, "mallory": {"groups": ["coffee-club"]}}
ROLE_MAP = {"redflag-approvers": {"role": "approver", "groups": ["web"]}, "redflag-admins": {"role": "admin"}}


@pytest.fixture(scope="module")
def provider(live_server, tmp_path_factory):
    running = OidcProvider(redirect_uris=[live_server.url + CALLBACK], accounts=ACCOUNTS,
                           log_path=tmp_path_factory.mktemp("oidc") / "provider.log")
    yield running
    running.stop()


@pytest.fixture
def sso(provider, settings):
    """RedFlag configured for the provider, as the REDFLAG_OIDC_* variables configure it (redflag/settings.py)."""
    settings.REDFLAG_OIDC_ISSUER = provider.issuer
    settings.REDFLAG_OIDC_ROLE_MAP = ROLE_MAP
    settings.REDFLAG_REQUIRE_MFA = True
    settings.SOCIALACCOUNT_PROVIDERS = {"openid_connect": {
        **settings.SOCIALACCOUNT_PROVIDERS["openid_connect"],
        "APPS": [{"provider_id": "sso", "name": "Test provider", "client_id": provider.client_id,
                  "secret": provider.client_secret, "settings": {"server_url": provider.issuer}}]}}
    AgentGroup.objects.create(name="web")
    return provider


def form_fields(page_html: str) -> dict[str, str]:
    return {name: unescape(value) for name, value in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"',
                                                                 page_html)}


def form_action(page_html: str, base_url: str) -> str:
    return urljoin(base_url, unescape(re.search(r'<form[^>]*action="([^"]+)"', page_html).group(1)))


def sign_in_through_provider(base_url: str, username: str, next_url: str = "/admin/") -> requests.Response:
    """What a browser does: RedFlag's sign-in page, its SSO button, the provider's login and consent forms."""
    browser = requests.Session()
    page = browser.get(f"{base_url}/admin/login/?next={next_url}", timeout=10)
    assert 'id="sso-sign-in"' in page.text, page.text[-2000:]
    csrf = re.search(r'id="sso-form".*?name="csrfmiddlewaretoken" value="([^"]+)"', page.text, re.S).group(1)
    login_page = browser.post(f"{base_url}/accounts/oidc/sso/login/", timeout=10,
                              data={"csrfmiddlewaretoken": csrf, "next": next_url})
    assert 'name="login"' in login_page.text, (login_page.url, login_page.text[-2000:])
    consent = browser.post(form_action(login_page.text, login_page.url), timeout=10,
                           data={**form_fields(login_page.text), "login": username, "password": "any"})
    assert "/interaction/" in consent.url, (consent.url, consent.text[-2000:])
    return browser.post(form_action(consent.text, consent.url), data=form_fields(consent.text), timeout=30)


def test_a_mapped_person_signs_in_with_the_roles_their_claims_give(sso, live_server, settings):
    answer = sign_in_through_provider(live_server.url, "alice")
    # An approver can change things: straight from the provider to setting up a second factor.
    assert answer.status_code == 200 and "/accounts/2fa/totp/activate/" in answer.url, (answer.url, answer.text[-1500:])
    alice = User.objects.get(username="alice")
    assert alice.is_staff and not alice.has_usable_password()
    grant = RoleGrant.objects.get(user=alice)
    scope = sorted(group.name for group in grant.groups.all())
    assert (grant.role, grant.source, scope) == ("approver", "sso", ["web"])
    assert SystemEvent.objects.filter(event_type="user_login", actor="alice").count() == 1
    changed = SystemEvent.objects.get(event_type="role_changed", metadata__username="alice")
    assert changed.metadata["after"] == {"approver": ["web"]} and changed.actor == "single sign-on"
    recorded = "".join(SystemEvent.objects.values_list("message", flat=True)) + str(
        list(SystemEvent.objects.values_list("metadata", flat=True)))
    assert sso.client_secret not in recorded

    # Claims are mapped again at every sign-in: the map now makes that group operators, fleet-wide.
    settings.REDFLAG_OIDC_ROLE_MAP = {"redflag-approvers": {"role": "operator"}}
    settings.REDFLAG_REQUIRE_MFA = False
    again = sign_in_through_provider(live_server.url, "alice", next_url="/admin/agents_app/agent/")
    assert again.status_code == 200 and again.url == f"{live_server.url}/admin/agents_app/agent/", again.url
    grant = RoleGrant.objects.get(user=alice)
    assert (grant.role, grant.fleet_wide) == ("operator", True)
    assert SystemEvent.objects.filter(event_type="role_changed", metadata__username="alice").count() == 2
    assert User.objects.filter(username__startswith="alice").count() == 1  # the same account, not a second one


def test_a_person_the_map_gives_no_role_is_refused(sso, live_server):
    answer = sign_in_through_provider(live_server.url, "mallory")
    assert answer.status_code == 403 and 'id="sso-refused"' in answer.text
    assert not User.objects.filter(username="mallory").exists()
    refusal = SystemEvent.objects.get(event_type="auth_failure", metadata__stage="single sign-on")
    assert refusal.metadata["username"] == "mallory" and "no role" in refusal.message


def test_sso_only_refuses_passwords_except_break_glass(sso, settings):
    settings.REDFLAG_SSO_ONLY = True
    settings.REDFLAG_REQUIRE_MFA = False
    User.objects.create_user("bob", password=PASSWORD, is_staff=True)
    User.objects.create_user("carol", password=PASSWORD, is_staff=True)
    User.objects.create_superuser("root", password=PASSWORD)
    settings.REDFLAG_BREAK_GLASS_USERS = ["carol"]

    page = Client().get("/admin/login/").content.decode()
    assert 'id="sso-sign-in"' in page and '<details id="break-glass"' in page

    bob = Client()
    refused = sign_in(bob, "bob")
    assert refused.status_code == 200 and PASSWORD_SIGN_IN_OFF in unescape(refused.content.decode())
    assert bob.get("/admin/").status_code == 302
    event = SystemEvent.objects.get(event_type="auth_failure", metadata__username="bob")
    assert "SSO only" in event.message and PASSWORD not in str(event.metadata)
    for break_glass in ("root", "carol"):
        client = Client()
        assert sign_in(client, break_glass).status_code == 302
        assert client.get("/audit/events/").status_code in (200, 403)  # signed in (what they may see is their roles')
        assert "_auth_user_id" in client.session
