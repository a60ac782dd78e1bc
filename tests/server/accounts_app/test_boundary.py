"""Every URL of redflag.urls and every admin action, as every role on the whole fleet and on one group.

The URL list is generated from the URLconf (resolved recursively) and the actions from the admin
site's registry, so a new page or action is walked automatically, and fails here until it has a rule
below. For each person (world.PEOPLE) and each URL:

- allowed pages answer 200, and a scoped list shows its in-scope rows;
- forbidden pages answer 403, 404 or a redirect (to the sign-in, or the admin's "not found");
- no body, allowed or not, names the out-of-scope agent (its hostname or its id) to anyone whose
  roles do not reach the whole fleet, and nothing names either agent to staff holding no role.

Actions are posted once on an in-scope and once on an out-of-scope row, each in a transaction rolled
back afterwards: a refused one changes nothing (no event, no command); an allowed one runs; and no
scoped person's action ever creates a command or an event for the out-of-scope agent.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve

from agents_app.models import Command
from events_app.models import SystemEvent
from tests.server.accounts_app.world import PEOPLE, ROLES_OF, build_world
from tests.server.events_app.test_stream import in_thread

V, OP, P, A, U = "viewer", "operator", "approver", "admin", "auditor"
READERS = frozenset({V, OP, P, A})
NOBODY = frozenset()


@dataclass(frozen=True)
class ModelRule:
    """Who (by role) may open a model's list and pages, add and delete; how its rows reach an agent."""

    view: frozenset
    add: frozenset = NOBODY
    delete: frozenset = NOBODY
    scope: str | None = None  # "agent", "group", "owner" (rows a scoped user started), None (not agent rows)


ADMIN_ONLY = ModelRule(view=frozenset({A}), add=frozenset({A}), delete=frozenset({A}))
READ_ONLY = ModelRule(view=READERS)
SUPERUSER_ONLY = ModelRule(view=NOBODY)

MODEL_RULES = {
    "agents_app.agent": ModelRule(view=READERS | {U}, delete=frozenset({A}), scope="agent"),
    "agents_app.agentgroup": ModelRule(view=READERS, add=frozenset({A}), delete=frozenset({A}), scope="group"),
    "agents_app.packageupdate": ModelRule(view=READERS, scope="agent"),
    "agents_app.command": ModelRule(view=READERS, scope="agent"),
    "agents_app.updatelog": ModelRule(view=READERS, scope="agent"),
    "agents_app.agentsubsystem": ModelRule(view=READERS, scope="agent"),
    "agents_app.bulkoperation": ModelRule(view=READERS, scope="owner"),
    "agents_app.agentrelease": ModelRule(view=READERS, add=frozenset({A})),
    "redflag.serversettings": ModelRule(view=frozenset({A})),
    "events_app.systemevent": ModelRule(view=frozenset({U}), scope="agent"),
    "events_app.auditapitoken": ModelRule(view=frozenset({A}), add=frozenset({A})),
    "tokens_app.registrationtoken": ADMIN_ONLY,
    "tokens_app.signingkey": ModelRule(view=frozenset({A})),
    "advisories_app.vulnerability": READ_ONLY,
    "advisories_app.exposure": ModelRule(view=READERS, scope="agent"),
    "advisories_app.feedimport": READ_ONLY,
    "advisories_app.feedsource": ModelRule(view=READERS, add=frozenset({A}), delete=frozenset({A})),
    "policies_app.maintenancewindow": ModelRule(view=READERS, add=frozenset({P}), delete=frozenset({P})),
    "policies_app.policy": ModelRule(view=READERS, add=frozenset({P}), delete=frozenset({P}), scope="group"),
    "policies_app.rollout": ModelRule(view=READERS, scope="group"),
    "policies_app.machineturn": ModelRule(view=READERS, scope="agent"),
    "notifications_app.destination": ADMIN_ONLY,
    "notifications_app.rule": ADMIN_ONLY,
    "notifications_app.delivery": ModelRule(view=frozenset({A})),
    "notifications_app.deliveryattempt": ModelRule(view=frozenset({A})),
    "reports_app.report": ModelRule(view=READERS, scope="group"),
    "reports_app.reportschedule": ModelRule(view=READERS, add=frozenset({A}), delete=frozenset({A}), scope="group"),
    "auth.user": ADMIN_ONLY,
    # Left to superusers: Django's groups and raw permissions, the task queue, allauth's stores.
    "auth.group": SUPERUSER_ONLY,
    "django_q.schedule": SUPERUSER_ONLY,
    "django_q.success": SUPERUSER_ONLY,
    "django_q.failure": SUPERUSER_ONLY,
    "django_q.ormq": SUPERUSER_ONLY,
    "account.emailaddress": SUPERUSER_ONLY,
    "mfa.authenticator": SUPERUSER_ONLY,
    "socialaccount.socialapp": SUPERUSER_ONLY,
    "socialaccount.socialtoken": SUPERUSER_ONLY,
    "socialaccount.socialaccount": SUPERUSER_ONLY,
}

# Admin actions of every registered model: the roles that may run each (on the scope of those roles' grants).
NONE = frozenset()
ACTION_RULES = {
    "agents_app.agent": {"scan_now": {OP}, "heartbeat_10": {OP}, "heartbeat_30": {OP}, "heartbeat_60": {OP},
                         "stop_heartbeat": {OP}, "reboot": {P}, "reboot_announced": {P},
                         "approve_security_updates": {P}, "update_agent": {P}, "allow_rebind": {A},
                         "revoke_credentials": {A}, "delete_selected": {A}},
    "agents_app.agentgroup": {"scan_now": {OP}, "heartbeat_30": {OP}, "approve_security_updates": {P},
                              "approve_all_updates": {P}, "install_approved_updates": {P}, "reboot": {P},
                              "reboot_announced": {P}, "delete_selected": {A}},
    "agents_app.packageupdate": {"approve": {P}, "ignore": {P}, "unignore": {P}, "install": {P},
                                 "confirm_dependencies": {P}, "delete_selected": NONE},
    "agents_app.command": {"cancel_pending": {OP}, "retry_failed": {P}, "delete_selected": NONE},
    "agents_app.agentsubsystem": {name: {OP} for name in ("enable", "disable", "scan_on_schedule", "scan_on_demand",
                                                          "every_6_hours", "daily")} | {"delete_selected": NONE},
    "agents_app.updatelog": {"delete_selected": NONE},
    "agents_app.bulkoperation": {"delete_selected": NONE},
    "agents_app.agentrelease": {"revoke_releases": {A}, "delete_selected": NONE},
    "redflag.serversettings": {"delete_selected": NONE},
    "events_app.systemevent": {"delete_selected": NONE},
    "events_app.auditapitoken": {"revoke_selected": {A}, "delete_selected": NONE},
    "tokens_app.registrationtoken": {"revoke_selected": {A}, "delete_selected": {A}},
    "tokens_app.signingkey": {"delete_selected": NONE},
    "advisories_app.vulnerability": {"delete_selected": NONE},
    "advisories_app.exposure": {"delete_selected": NONE},
    "advisories_app.feedimport": {"delete_selected": NONE},
    "advisories_app.feedsource": {"delete_selected": {A}},
    "policies_app.maintenancewindow": {"delete_selected": {P}},
    "policies_app.policy": {"delete_selected": {P}},
    "policies_app.rollout": {"resume": {P}, "abort": {P}, "delete_selected": NONE},
    "policies_app.machineturn": {"delete_selected": NONE},
    "notifications_app.destination": {"send_test": {A}, "delete_selected": {A}},
    "notifications_app.rule": {"delete_selected": {A}},
    "notifications_app.delivery": {"delete_selected": NONE},
    "notifications_app.deliveryattempt": {"delete_selected": NONE},
    "reports_app.report": {"delete_selected": NONE},
    "reports_app.reportschedule": {"generate_now": {A}, "delete_selected": {A}},
    "auth.user": {"delete_selected": {A}},
    "auth.group": {"delete_selected": NONE},
    "django_q.schedule": {"delete_selected": NONE},
    "django_q.success": {"delete_selected": NONE, "resubmit_task": NONE},
    "django_q.failure": {"delete_selected": NONE, "resubmit_task": NONE},
    "django_q.ormq": {"delete_selected": NONE},
    "account.emailaddress": {"delete_selected": NONE, "make_verified": NONE},
    "mfa.authenticator": {"delete_selected": NONE},
    "socialaccount.socialapp": {"delete_selected": NONE},
    "socialaccount.socialtoken": {"delete_selected": NONE},
    "socialaccount.socialaccount": {"delete_selected": NONE},
}


# --- the URLs of redflag.urls ---------------------------------------------------------------------------

def url_patterns():
    """(route, name, pattern) of every URL, the routes of included URLconfs joined to their prefix."""
    def walk(patterns, prefix, namespace):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
                yield from walk(entry.url_patterns, prefix + _route(entry.pattern), inner)
            elif isinstance(entry, URLPattern):
                yield prefix + _route(entry.pattern), f"{namespace}{entry.name}" if entry.name else None, entry
    return list(walk(get_resolver().url_patterns, "", ""))


def _route(pattern) -> str:
    return str(pattern).removeprefix("^").removesuffix("$")


def fill(route: str, values: dict[str, str]) -> str:
    """A concrete path for ``route``: each <converter:name> and (?P<name>...) replaced by ``values[name]``."""
    path = re.sub(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)", lambda m: values[m.group(1)], route)
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], path)
    path = path.replace("^", "").replace("$", "")
    return "/" + path


ADMIN_MODEL_PAGE = re.compile(
    r"^admin:(?P<app>[a-z_]+?)_(?P<model>[a-z0-9]+)_(?P<page>changelist|add|history|delete|change)$")
ADMIN_MODEL_REDIRECT = re.compile(r"^admin/(?P<app>\w+)/(?P<model>\w+)/<path:object_id>/$")

# Pages that are not a model's: who may open them. PUBLIC pages (sign-in, health, schema, installers, the
# account pages of the signed-in person) are still searched for the out-of-scope agent.
PUBLIC, STAFF, NOT_FOR_PEOPLE = "public", "staff", "not for people"
URL_RULES = {
    "home": PUBLIC, "health": PUBLIC, "api-schema": PUBLIC, "signing-keys": PUBLIC,
    "release-latest": PUBLIC, "release-manifest": PUBLIC, "release-artifact": PUBLIC,
    "install-artifact": PUBLIC, "install-manifest": PUBLIC, "install-script": PUBLIC,
    # The agents' API: bearer agent credentials only, never a person's session.
    "agent-register": NOT_FOR_PEOPLE, "agent-renew": NOT_FOR_PEOPLE, "agent-checkin": NOT_FOR_PEOPLE,
    "agent-events": NOT_FOR_PEOPLE, "agent-command-result": NOT_FOR_PEOPLE, "agent-report-updates": NOT_FOR_PEOPLE,
    "agent-report-system": NOT_FOR_PEOPLE, "agent-config": NOT_FOR_PEOPLE, "metrics": NOT_FOR_PEOPLE,
    "admin:index": STAFF, "admin:password_change": STAFF, "admin:password_change_done": STAFF,
    "admin:jsi18n": STAFF, "admin:login": PUBLIC, "sign_in": PUBLIC, "admin:logout": PUBLIC,
    "admin:autocomplete": PUBLIC, "admin:view_on_site": PUBLIC, "admin:app_list": "app list",
    "admin:auth_user_password_change": frozenset({A}),
    "admin:reports_app_report_generate": frozenset({A}),
    "admin:reports_app_report_download": READERS,
    # The live stream holds its response open in a thread of its own: test_stream_is_scoped walks it.
    "events:history": frozenset({U}), "events:stream": "stream", "events:export": frozenset({U}),
    "events:detail": frozenset({U}), "events:api-events": frozenset({U}),
    "advisories:export": READERS, "advisories:api-exposures": READERS,
}
# Unnamed routes: Django's catch-all and allauth's old aliases of its named pages.
UNNAMED_RULES = {
    "admin/(?P<url>.*)": PUBLIC,
    "accounts/login/": PUBLIC, "accounts/social/login/cancelled/": PUBLIC, "accounts/social/login/error/": PUBLIC,
    "accounts/social/signup/": PUBLIC, "accounts/social/connections/": PUBLIC,
}
# allauth's pages for the signed-in person's own account (sign-in, second factors, SSO connections).
ACCOUNT_PAGE = re.compile(r"^(account_|mfa_|socialaccount_|openid_connect_)")
API_WITH_TOKEN = {"events:api-events", "advisories:api-exposures"}
# Pages of one row, walked for a row of the in-scope agent (group) and one of the other.
OBJECT_PAGES = {"events:detail", "admin:reports_app_report_download"}


def roles_of(username: str) -> set[str]:
    return ROLES_OF.get(username, set())


def may(username: str, roles) -> bool:
    return bool(roles_of(username) & set(roles))


def reaches_outside(username: str, roles=None) -> bool:
    """Whether the person's grants of ``roles`` (any grant when None) reach the out-of-scope agent."""
    if username == "root":
        return True
    return any(not groups for role, groups in PEOPLE[username] if roles is None or role in roles)


def body_of(response) -> str:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return body.decode(errors="replace")


def assert_forbidden(username: str, path: str, response) -> None:
    assert response.status_code in (302, 403, 404, 405), f"{username} {path}: {response.status_code}"
    if response.status_code == 302:
        location = response["Location"]
        assert location.startswith(("/admin/", "/accounts/login/")) and "/change/" not in location, (
            f"{username} {path}: redirected to {location}")


class Walker:
    """One person's session, and every boundary it crossed (collected, so one run reports them all)."""

    def __init__(self, world, username: str):
        self.world, self.username = world, username
        self.client = Client()
        self.client.force_login(world.users[username])
        self.failures: list[str] = []
        self.sees_outside = reaches_outside(username)

    @contextmanager
    def soft(self, what: str, readers=None):
        """Collect a failure instead of stopping; pages inside read with the grants of ``readers`` (roles;
        None: any grant), which decides whether the out-of-scope agent may show."""
        self.sees_outside = reaches_outside(self.username, readers)
        try:
            yield
        except Exception as exc:  # an assertion, or a page that raised (a 500 in production)
            self.failures.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def get(self, path: str, **headers):
        client = Client() if headers else self.client
        response = client.get(path, **headers)
        # The admin's "X with ID ... doesn't exist" message repeats the id the request itself named, on the next
        # page: drop it, so a marker found later is something the server disclosed, not an echo.
        client.cookies.pop("messages", None)
        assert response.status_code < 500, f"{self.username} {path}: {response.status_code}"
        text = body_of(response)
        if not self.sees_outside:
            markers = self.world.outside_markers + (() if roles_of(self.username) else self.world.inside_markers)
            leaked = [marker for marker in markers if marker in text]
            assert not leaked, f"{self.username} {path} ({response.status_code}) shows {leaked}"
        return response, text

    def expect(self, path: str, allowed: bool, *, shows_inside: bool = False, **headers):
        response, text = self.get(path, **headers)
        if response.status_code == 302 and "/change/" in response["Location"]:
            # A list that sends on to its single row (server settings): the row's page decides.
            return self.expect(response["Location"], allowed)
        if allowed:
            assert response.status_code == 200, f"{self.username} {path}: {response.status_code}, expected 200"
            if shows_inside:
                assert any(marker in text for marker in self.world.inside_markers), (
                    f"{self.username} {path}: the in-scope row is missing")
        else:
            assert_forbidden(self.username, path, response)
        return response


def model_pages(walker: Walker, label: str, rule: ModelRule) -> None:
    """The list, add page, and the change, history and delete pages of an in-scope and an out-of-scope row."""
    app_label, model_name = label.split(".")
    base = f"/admin/{app_label}/{model_name}/"
    username, world = walker.username, walker.world
    reads = may(username, rule.view)
    walker.expect(base, reads, shows_inside=reads and rule.scope == "agent" and label in world.inside_rows)
    walker.expect(f"{base}add/", may(username, rule.add))
    if rule.scope is None:  # not an agent's row: any one will do, everyone who reads the list may open it
        model = next(model for model in admin.site._registry if model._meta.label_lower == label)
        # The newest row (for people: someone who is not a superuser, whom the admin role may manage).
        first = model._default_manager.order_by("-pk").values_list("pk", flat=True).first()
        rows = [] if first is None else [(first, "inside")]
    else:
        rows = [(world.inside_rows.get(label), "inside"), (world.outside_rows.get(label), "outside")]

    def reaches(where, roles) -> bool:
        return where == "inside" or reaches_outside(username, roles)

    for pk, where in rows:
        if pk is None:
            continue
        walker.expect(f"{base}{pk}/change/", reads and reaches(where, rule.view))
        walker.expect(f"{base}{pk}/history/", reads and reaches(where, rule.view))
        # Deleting needs the row inside the scope of the delete role too (seen fleet-wide, deleted on one group).
        deletes = may(username, rule.delete) and reaches(where, rule.view) and reaches(where, rule.delete)
        walker.expect(f"{base}{pk}/delete/", deletes)
        response, _ = walker.get(f"{base}{pk}/")  # the admin's redirect to the change page
        assert response.status_code in (301, 302, 403, 404)


def registered_models() -> dict[str, object]:
    return {model._meta.label_lower: model_admin for model, model_admin in admin.site._registry.items()}


def admin_model_page(name: str | None) -> bool:
    """Whether ``name`` is one of the five pages the admin makes for each registered model."""
    match = ADMIN_MODEL_PAGE.match(name or "")
    return bool(match) and f"{match['app']}.{match['model']}" in registered_models()


# --- the walk ---------------------------------------------------------------------------------------


@pytest.fixture
def world(db, settings):
    settings.REDFLAG_EVENT_STREAM_SECONDS = 0  # the stream answers what is there and closes
    return build_world()


def test_every_url_and_every_admin_model_has_a_rule():
    """A page added to the URLconf, or a model to the admin, fails here until its rule is written."""
    missing = []
    for route, name, _ in url_patterns():
        if name is None:
            if not (ADMIN_MODEL_REDIRECT.match(route) or route in UNNAMED_RULES):
                missing.append(route)
        elif not (admin_model_page(name) or name in URL_RULES or ACCOUNT_PAGE.match(name)):
            missing.append(name)
    missing += [label for label in registered_models() if label not in MODEL_RULES]
    for label, model_admin in registered_models().items():
        for _, action, _ in model_admin._get_base_actions():
            if action not in ACTION_RULES.get(label, {}):
                missing.append(f"{label} action {action}")
    assert not missing, f"no rule for: {missing}"


def values_for(world, username: str, where: str = "outside") -> dict[str, str]:
    agent = world.outside if where == "outside" else world.inside
    rows = world.outside_rows if where == "outside" else world.inside_rows
    return {
        "agent_id": str(agent.pk), "command_id": str(rows["agents_app.command"]), "version": "0.1.0",
        "script": "linux.sh", "export_format": "csv", "event_id": str(rows["events_app.systemevent"]),
        "report_id": str(rows["reports_app.report"]), "file_format": "csv", "id": str(world.users["viewer-web"].pk),
        "key": "nope", "uidb36": "1", "provider_id": "nope", "pk": "1", "url": "nope/",
        "content_type_id": "1", "object_id": str(agent.pk), "app_label": "agents_app",
    }


@pytest.mark.parametrize("username", [*PEOPLE, "root"])
def test_walk_every_url(world, username):
    walker = Walker(world, username)
    models = registered_models()
    for label, rule in MODEL_RULES.items():
        if label not in models:
            continue
        with walker.soft(label, rule.view):
            if username == "root":
                walker.expect(f"/admin/{label.replace('.', '/')}/", True)
            else:
                model_pages(walker, label, rule)
    for route, name, _ in url_patterns():
        if admin_model_page(name) or name is None and ADMIN_MODEL_REDIRECT.match(route):
            continue  # walked above, model by model
        rule = URL_RULES.get(name) if name else UNNAMED_RULES.get(route)
        if rule is None and name and ACCOUNT_PAGE.match(name):
            rule = PUBLIC
        has_parameters = bool(re.search(r"<|\(\?P", route))
        for where in ("inside", "outside") if has_parameters and rule != "app list" else ("inside",):
            path = fill(route, values_for(world, username, where))
            with walker.soft(path, rule if isinstance(rule, frozenset) else None):
                walk_one(walker, world, username, name, rule, path, where)
    assert not walker.failures, "\n".join(walker.failures)


def walk_one(walker, world, username, name, rule, path, where):
    if rule == "stream":
        return
    if username == "root" or rule == PUBLIC:
        walker.get(path)
        return
    if rule == NOT_FOR_PEOPLE:
        response, _ = walker.get(path)
        assert response.status_code in (401, 403, 404, 405), f"{username} {path}: {response.status_code}"
        return
    if rule == STAFF:
        walker.expect(path, True)
        return
    if rule == "app list":
        for app_label in {label.split(".")[0] for label in MODEL_RULES}:
            opens = any(may(username, rule.view) for label, rule in MODEL_RULES.items()
                        if label.startswith(f"{app_label}.") and label in registered_models())
            walker.expect(f"/admin/{app_label}/", opens)
        return
    allowed = may(username, rule)
    if name in API_WITH_TOKEN:
        walker.expect(path, allowed, HTTP_AUTHORIZATION=f"Bearer {world.secrets[username]}")
        return
    if name in OBJECT_PAGES:  # one row of the inside or the outside agent (group)
        allowed = allowed and (where == "inside" or reaches_outside(username, rule))
    if name in ("events:history", "events:export", "advisories:export") and allowed:
        walker.expect(path, True, shows_inside=True)
        return
    walker.expect(path, allowed)


# --- the actions ------------------------------------------------------------------------------------


REFUSALS = ("No action selected", "Items must be selected", "Nothing was done")


def post_action(client, label: str, action: str, pk) -> tuple[object, list[str], bool]:
    """Post ``action`` on one row from its list; (response, messages, whether the action ran)."""
    app_label, model_name = label.split(".")
    response = client.post(f"/admin/{app_label}/{model_name}/",
                           {"action": action, "_selected_action": [str(pk)], "index": "0"})
    messages = [str(message) for message in get_messages(response.wsgi_request)]
    client.cookies.pop("messages", None)  # each post reads only its own messages
    refused = any(refusal in text for text in messages for refusal in REFUSALS)
    # An action that ran answers with its own message or its own page (delete's confirmation, or its refusal to
    # delete rows the account may not: the cascade over an agent's history); one the user may not run is left
    # out of the list, which then renders again or sends on to its single row (server settings), or is a 403.
    confirmation = any(text in body_of(response) for text in ("Are you sure", "Cannot delete"))
    ran = not refused and response.status_code in (200, 302) and bool(messages or confirmation)
    return response, messages, ran


def outside_activity(world) -> tuple[int, int]:
    return (Command.objects.filter(agent=world.outside).count(),
            SystemEvent.objects.filter(agent=world.outside).count())


@pytest.mark.parametrize("username", list(PEOPLE))
def test_every_admin_action(world, username):
    client = Client()
    client.force_login(world.users[username])
    failures = []
    models = registered_models()
    for label, actions in ACTION_RULES.items():
        if label not in models:
            continue
        if MODEL_RULES[label].scope is None:  # not an agent's row: any one (the newest) will do
            newest = models[label].model._default_manager.order_by("-pk").values_list("pk", flat=True).first()
            targets = [("inside", {label: newest})] if newest is not None else []
        else:
            targets = [("inside", world.inside_rows), ("outside", world.outside_rows)]
        for action, roles in actions.items():
            for where, rows in targets:
                if rows.get(label) is None:
                    continue
                allowed = may(username, roles) and (where == "inside" or reaches_outside(username, roles))
                context = f"{username} {label}.{action} on the {where} row"
                with transaction.atomic():
                    events, commands = SystemEvent.objects.count(), Command.objects.count()
                    outside_before = outside_activity(world)
                    try:
                        response, messages, ran = post_action(client, label, action, rows[label])
                        context += f": {response.status_code} {messages}"
                        assert response.status_code < 500, context
                        assert ran == allowed, f"{context}: {'ran' if ran else 'refused'}, expected the opposite"
                        if not ran:  # nothing changed
                            assert (SystemEvent.objects.count(), Command.objects.count()) == (events, commands), (
                                f"{context}: refused, yet wrote an event or a command")
                        if not reaches_outside(username):  # never a command or an event for the other agent
                            assert outside_activity(world) == outside_before, f"{context}: touched the other agent"
                            leaked = [marker for marker in world.outside_markers if marker in body_of(response)]
                            assert not leaked, f"{context} shows {leaked}"
                    except AssertionError as exc:
                        failures.append(str(exc).splitlines()[0])
                    transaction.set_rollback(True)
    assert not failures, "\n".join(failures)


def test_rules_are_the_same_url_the_resolver_finds(world):
    """The paths the walk builds resolve to the pattern they were built from (the walk hits real pages)."""
    for route, name, pattern in url_patterns():
        if name is None or not re.search(r"<|\(\?P", route):
            continue
        path = fill(route, values_for(world, "viewer-web"))
        assert resolve(path).func == pattern.callback, route


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("username", ["auditor-web", "auditor-fleet", "viewer-fleet"])
def test_stream_is_scoped(settings, username):
    """The live stream replays from the first event (last_event_id=0) only what the reader's grants reach."""
    settings.REDFLAG_EVENT_STREAM_SECONDS = 1
    world = build_world()
    client = Client()
    client.force_login(world.users[username])
    response = in_thread(lambda: client.get("/audit/events/stream?last_event_id=0"))
    if not may(username, {U}):
        assert response.status_code == 403
        return
    body = in_thread(lambda: body_of(response))
    assert response.status_code == 200 and "event: bye" in body
    assert world.inside_markers[0] in body
    assert (world.outside_markers[0] in body) == reaches_outside(username, {U})
