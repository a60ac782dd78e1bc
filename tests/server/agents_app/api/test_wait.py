"""GET /api/v1/agents/{id}/wait, the fast channel, driven in-process through the real ASGI application.

The ASGI messages go straight to ``redflag.asgi``'s wrapper (no socket), the database and the
wake-up delivery are real: on SQLite the in-process hub, on PostgreSQL a real LISTEN connection
woken by the NOTIFY that ``command_create`` sends on commit. The end-to-end tests with uvicorn and
the real agent are in tests/server/end_to_end/test_fast_channel.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents_app.api import wait as wait_module
from agents_app.api.wait import with_wait_endpoint
from agents_app.models import Agent, Command
from agents_app.services import wakeup as wakeup_module
from agents_app.services.agents import agent_revoke
from agents_app.services.commands import command_create
from agents_app.services.wakeup import BACKEND_LOCAL, BACKEND_POSTGRESQL, BACKEND_REDIS, WakeHub, wake_backend
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.conftest import machine_hash

pytestmark = pytest.mark.django_db(transaction=True)

STEP_TIMEOUT = 10.0


async def not_django(scope, receive, send):
    """Stands for Django behind the wrapper: anything that is not the wait path lands here."""
    await send({"type": "http.response.start", "status": 418, "headers": []})
    await send({"type": "http.response.body", "body": b"django"})


APPLICATION = with_wait_endpoint(not_django)


class Exchange:
    """One HTTP request to the ASGI application, as uvicorn would drive it."""

    def __init__(self, path: str, headers: dict[str, str], method: str = "GET"):
        self.scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), *((k.lower().encode(), v.encode()) for k, v in headers.items())],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
        }
        self.messages: list[dict] = []
        self.arrived = asyncio.Event()
        self.hang_up = asyncio.Event()
        self._requested = False
        self.task: asyncio.Task | None = None

    async def receive(self):
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        self.messages.append(message)
        self.arrived.set()

    def start(self) -> Exchange:
        self.task = asyncio.get_running_loop().create_task(APPLICATION(self.scope, self.receive, self.send))
        return self

    @property
    def status(self) -> int | None:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    @property
    def finished(self) -> bool:
        return any(m["type"] == "http.response.body" and not m.get("more_body") for m in self.messages)

    def lines(self) -> list:
        return [json.loads(line) if line else "" for line in self.body.decode().split("\n")[:-1]]

    async def until(self, condition, what: str) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"not within {STEP_TIMEOUT} s: {what}; got {self.messages!r}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def run(self) -> Exchange:
        """The whole exchange, for answers that come at once."""
        self.start()
        await self.until(lambda: self.finished, "a complete answer")
        return self


def wait_headers(agent, **overrides) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {agent.access_token}", "X-Machine-ID": agent.machine_id,
               "X-Request-Nonce": secrets.token_urlsafe(24), "X-Request-Timestamp": str(int(time.time()))}
    headers.update(overrides)
    return {name: value for name, value in headers.items() if value is not None}


def wait_path(agent_id) -> str:
    return f"/api/v1/agents/{agent_id}/wait"


def run(scenario):
    """Each test is one event loop, as one uvicorn worker is; the hub of that loop closes with it."""

    async def main():
        loop = asyncio.get_running_loop()
        # One pool thread, so its database connection can be closed at the end (no session left
        # behind to block the test database's teardown).
        pool = ThreadPoolExecutor(max_workers=1)
        loop.set_default_executor(pool)
        try:
            return await scenario()
        finally:
            hub = WakeHub.for_running_loop()
            if hub.task is not None:
                hub.task.cancel()
            await loop.run_in_executor(pool, connections.close_all)

    return asyncio.run(main())


def queue_command(agent_id, command_type="scan_system"):
    return command_create(agent=Agent.objects.get(pk=agent_id), command_type=command_type, params={}, source="api")


def error_code(exchange: Exchange) -> str:
    return json.loads(exchange.body)["error"]["code"]


# -- refusals first ----------------------------------------------------------------------


def test_without_or_with_wrong_credentials_the_wait_is_refused(agent, enroll):
    other = enroll()
    revoked = enroll()
    agent_revoke(agent=revoked.model, actor="test")

    async def scenario():
        return {
            "no token": await Exchange(wait_path(agent.id), wait_headers(agent, Authorization=None)).run(),
            "bad token": await Exchange(wait_path(agent.id), wait_headers(agent, Authorization="Bearer nope")).run(),
            "other machine": await Exchange(wait_path(agent.id), wait_headers(agent, **{
                "X-Machine-ID": machine_hash("elsewhere")})).run(),
            "other agent's path": await Exchange(wait_path(other.id), wait_headers(agent)).run(),
            "revoked": await Exchange(wait_path(revoked.id), wait_headers(revoked)).run(),
            "stale": await Exchange(wait_path(agent.id), wait_headers(agent, **{
                "X-Request-Timestamp": str(int(time.time()) - 3600)})).run(),
            "no nonce": await Exchange(wait_path(agent.id), wait_headers(agent, **{"X-Request-Nonce": None})).run(),
        }

    answers = run(scenario)
    assert {name: (exchange.status, error_code(exchange)) for name, exchange in answers.items()} == {
        "no token": (401, "not_authenticated"),
        "bad token": (401, "invalid_credentials"),
        "other machine": (403, "machine_mismatch"),
        "other agent's path": (403, "wrong_agent"),
        "revoked": (401, "invalid_credentials"),  # revoking retires its credentials
        "stale": (401, "stale_request"),
        "no nonce": (400, "invalid"),
    }
    assert (b"www-authenticate", b'Bearer realm="redflag"') in answers["no token"].messages[0]["headers"]
    # Exactly what the check-in answers the revoked agent.
    assert revoked.post("checkin", {"metrics": {}}).status_code == answers["revoked"].status
    # Refusals are audited as on every agent endpoint.
    assert SystemEvent.objects.filter(metadata__reason="wrong_agent").exists()
    assert SystemEvent.objects.filter(metadata__reason="machine_mismatch").exists()


def test_a_replayed_nonce_is_refused_and_recorded(agent):
    headers = wait_headers(agent)
    Command.objects.all().delete()
    queue_command(agent.id)  # so the first wait answers at once

    async def scenario():
        first = await Exchange(wait_path(agent.id), headers).run()
        second = await Exchange(wait_path(agent.id), headers).run()
        return first, second

    first, second = run(scenario)
    assert first.status == 200
    assert (second.status, error_code(second)) == (409, "replayed_nonce")
    assert SystemEvent.objects.filter(metadata__reason="replayed_nonce").count() == 1


def test_other_methods_paths_and_hosts_are_refused_and_other_paths_go_to_django(agent):
    async def scenario():
        return (
            await Exchange(wait_path(agent.id), wait_headers(agent), method="POST").run(),
            await Exchange(wait_path(str(agent.id).upper()), wait_headers(agent)).run(),
            await Exchange(f"/api/v1/agents/{agent.id}/wait/extra", wait_headers(agent)).run(),
            await Exchange(wait_path(agent.id), {**wait_headers(agent), "Host": "evil.example"}).run(),
        )

    wrong_method, upper_case, longer_path, bad_host = run(scenario)
    assert (wrong_method.status, error_code(wrong_method)) == (405, "method_not_allowed")
    assert (upper_case.status, upper_case.body) == (418, b"django")  # not ours: Django answers (404)
    assert (longer_path.status, longer_path.body) == (418, b"django")
    # A second Host header: Django joins the two, which names no allowed host.
    assert (bad_host.status, error_code(bad_host)) == (400, "invalid_host")


def three_waits_at_two_a_minute(agent) -> list:
    """Three waits in a row with the check-in rate at 2/min and a command queued (each answers at once)."""
    row = ServerSettings.current()
    row.rate_checkin = "2/min"
    row.save()
    ServerSettings.forget()
    queue_command(agent.id)

    async def scenario():
        return [await Exchange(wait_path(agent.id), wait_headers(agent)).run() for _ in range(3)]

    return run(scenario)


def test_the_wait_shares_the_check_in_rate_but_not_its_count(agent, settings):
    answers = three_waits_at_two_a_minute(agent)
    assert [exchange.status for exchange in answers] == [200, 200, 429]
    assert any(name == b"retry-after" for name, _ in answers[2].messages[0]["headers"])
    # The check-in's own budget is untouched.
    assert agent.post("checkin", {"metrics": {}}).status_code == 200


# -- the happy paths ---------------------------------------------------------------------


def test_a_pending_command_answers_at_once(agent):
    queue_command(agent.id)

    async def scenario():
        return await Exchange(wait_path(agent.id), wait_headers(agent)).run()

    exchange = run(scenario)
    assert exchange.status == 200
    assert exchange.lines() == [{"wake": True, "reason": "pending"}]
    assert dict(exchange.messages[0]["headers"])[b"content-type"] == b"application/x-ndjson"


def test_an_expired_or_delivered_command_does_not_wake(agent):
    command = queue_command(agent.id)
    Command.objects.filter(pk=command.pk).update(status="sent")

    async def scenario():
        exchange = Exchange(wait_path(agent.id), wait_headers(agent)).start()
        await exchange.until(lambda: exchange.lines()[:1] == [{"waiting": True}], "the waiting line")
        exchange.hang_up.set()
        await asyncio.wait_for(exchange.task, STEP_TIMEOUT)
        return exchange

    exchange = run(scenario)
    assert exchange.lines() == [{"waiting": True}]


def test_a_command_created_while_the_agent_waits_wakes_it_on_commit(agent):
    """The same on SQLite (the in-process hub) and PostgreSQL (LISTEN/NOTIFY)."""
    assert wake_backend() == (BACKEND_POSTGRESQL if connection.vendor == "postgresql" else BACKEND_LOCAL)

    async def scenario():
        exchange = Exchange(wait_path(agent.id), wait_headers(agent)).start()
        await exchange.until(lambda: exchange.lines()[:1] == [{"waiting": True}], "the waiting line")
        created = time.monotonic()
        await sync_to_async(queue_command, thread_sensitive=False)(agent.id)
        await exchange.until(lambda: exchange.finished, "the wake-up")
        return exchange, time.monotonic() - created

    exchange, seconds = run(scenario)
    assert exchange.lines() == [{"waiting": True}, {"wake": True, "reason": "notified"}]
    assert seconds < 2.0


REDIS_URL = "redis://127.0.0.1:6379/6"


def test_with_redis_configured_the_wake_up_travels_by_redis_pub_sub(agent, settings, monkeypatch):
    settings.CACHE_URL = REDIS_URL  # what REDFLAG_CACHE_URL sets (the tests keep their in-memory cache)
    monkeypatch.setattr(wakeup_module, "_redis_client", None)
    assert wake_backend() == BACKEND_REDIS
    listened: list = []

    async def scenario():
        exchange = Exchange(wait_path(agent.id), wait_headers(agent)).start()
        await exchange.until(lambda: exchange.lines()[:1] == [{"waiting": True}], "the waiting line")
        hub = WakeHub.for_running_loop()
        listened.append(hub.backend)
        created = time.monotonic()
        await sync_to_async(queue_command, thread_sensitive=False)(agent.id)
        await exchange.until(lambda: exchange.finished, "the wake-up")
        return exchange, time.monotonic() - created

    exchange, seconds = run(scenario)
    assert listened == [BACKEND_REDIS]
    assert exchange.lines() == [{"waiting": True}, {"wake": True, "reason": "notified"}]
    assert seconds < 2.0


def test_on_sqlite_a_command_queued_by_another_process_wakes_the_agent_within_a_second_or_two(agent):
    """Another process's on_commit cannot reach this loop; the hub's read of new commands does."""
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL and Redis deliver every process's wake-ups; the read is SQLite's")

    def queue_elsewhere():
        # As a django-q2 worker's command_create would leave it: the row, and a wake-up this loop never hears.
        now = timezone.now()
        Command.objects.create(agent_id=agent.id, command_type="scan_system", params={}, dedupe_key="scan_system",
                               source="web_ui_bulk", created_at=now, issued_at=now,
                               expires_at=now + timedelta(hours=1), nonce="elsewhere", key_id="k", signature="s")

    async def scenario():
        exchange = Exchange(wait_path(agent.id), wait_headers(agent)).start()
        await exchange.until(lambda: exchange.lines()[:1] == [{"waiting": True}], "the waiting line")
        created = time.monotonic()
        await sync_to_async(queue_elsewhere, thread_sensitive=False)()
        await exchange.until(lambda: exchange.finished, "the wake-up")
        return exchange, time.monotonic() - created

    exchange, seconds = run(scenario)
    assert exchange.lines() == [{"waiting": True}, {"wake": True, "reason": "queued"}]
    assert seconds < 2 * wakeup_module.LOCAL_POLL_SECONDS + 0.5


def test_only_the_agent_named_is_woken_and_a_rolled_back_command_wakes_nobody(agent, enroll):
    other = enroll()

    def roll_back():
        with transaction.atomic():
            queue_command(agent.id)
            transaction.set_rollback(True)

    async def scenario():
        mine = Exchange(wait_path(agent.id), wait_headers(agent)).start()
        theirs = Exchange(wait_path(other.id), wait_headers(other)).start()
        for exchange in (mine, theirs):
            await exchange.until(lambda e=exchange: e.lines()[:1] == [{"waiting": True}], "the waiting line")
        await sync_to_async(roll_back, thread_sensitive=False)()
        await asyncio.sleep(0.5)
        assert not mine.finished
        await sync_to_async(queue_command, thread_sensitive=False)(other.id)
        await theirs.until(lambda: theirs.finished, "the other agent's wake-up")
        await asyncio.sleep(0.3)
        assert not mine.finished
        mine.hang_up.set()
        await asyncio.wait_for(mine.task, STEP_TIMEOUT)
        return mine, theirs

    mine, theirs = run(scenario)
    assert theirs.lines()[-1] == {"wake": True, "reason": "notified"}
    assert mine.lines() == [{"waiting": True}]
    assert not Command.objects.filter(agent_id=agent.id).exists()


def test_keepalives_then_the_hold_ends_without_a_wake(agent, settings, monkeypatch):
    settings.REDFLAG_WAKE_HOLD_SECONDS = 1
    monkeypatch.setattr(wait_module, "WAKE_KEEPALIVE_SECONDS", 0.3)

    async def scenario():
        return await Exchange(wait_path(agent.id), wait_headers(agent)).run()

    exchange = run(scenario)
    lines = exchange.lines()
    assert lines[0] == {"waiting": True} and lines[-1] == {"wake": False, "reason": "hold_ended"}
    assert lines[1:-1] and set(lines[1:-1]) == {""}  # blank keep-alive lines in between


def test_a_third_wait_of_one_agent_ends_its_oldest(agent):
    async def scenario():
        exchanges = []
        for _ in range(3):
            exchange = Exchange(wait_path(agent.id), wait_headers(agent)).start()
            await exchange.until(lambda e=exchange: e.lines()[:1] == [{"waiting": True}], "the waiting line")
            exchanges.append(exchange)
        await exchanges[0].until(lambda: exchanges[0].finished, "the oldest wait to end")
        for exchange in exchanges[1:]:
            assert not exchange.finished
            exchange.hang_up.set()
            await asyncio.wait_for(exchange.task, STEP_TIMEOUT)
        return exchanges[0], WakeHub.for_running_loop().count

    oldest, left = run(scenario)
    assert oldest.lines()[-1] == {"wake": False, "reason": "superseded"}
    assert left == 0  # every waiter was released


# -- the cost of opening a wait ----------------------------------------------------------


# The open's lean path (agents_app/services/waits.py): PostgreSQL, one statement (credentials,
# machine, nonce, rate count, catch-up read). SQLite: BEGIN, the nonce, [the counter,] the catch-up
# read, COMMIT. With the counters in the cache (these tests' in-memory one) there is no counter row;
# with the database cache (production) there is, inside the same statement on PostgreSQL.
WAIT_OPEN_QUERIES = {"postgresql": 1, "sqlite": 4}
WAIT_OPEN_QUERIES_WITH_DATABASE_COUNTERS = {"postgresql": 1, "sqlite": 5}
DATABASE_CACHE = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "redflag_cache"}}


@pytest.fixture
def database_counters(settings):
    settings.CACHES = DATABASE_CACHE
    call_command("createcachetable", verbosity=0)
    settings.REDFLAG_RATE_LIMIT_ENABLED = True


def open_queries(agent) -> tuple[list, list]:
    """The sync part of a wait (authentication, rate limit, catch-up read), run in this thread and
    counted, with 0, 1 and 30 commands waiting for the agent."""
    now = timezone.now()
    ServerSettings.current()  # the process-wide cache, as in a server that has answered before
    counts, outcomes = [], []
    for waiting in (0, 1, 30):
        Command.objects.all().delete()
        Command.objects.bulk_create([
            Command(agent_id=agent.id, command_type="scan_system", params={}, dedupe_key=f"k{n}", source="api",
                    created_at=now, issued_at=now, expires_at=now + timedelta(hours=1), nonce=f"n{n}",
                    key_id="k", signature="s") for n in range(waiting)])
        exchange = Exchange(wait_path(agent.id), wait_headers(agent))
        with CaptureQueriesContext(connection) as queries:
            outcomes.append(wait_module.authorize_and_peek(exchange.scope, str(agent.id)))
        counts.append(len(queries))
    return counts, outcomes


def test_opening_a_wait_is_one_statement_whatever_waits_for_the_agent(agent):
    counts, outcomes = open_queries(agent)
    assert outcomes == [False, True, True]
    assert counts == [WAIT_OPEN_QUERIES[connection.vendor]] * 3


def test_with_the_counters_in_the_database_the_count_is_in_the_same_statement(database_counters, agent):
    counts, outcomes = open_queries(agent)
    assert outcomes == [False, True, True]
    assert counts == [WAIT_OPEN_QUERIES_WITH_DATABASE_COUNTERS[connection.vendor]] * 3


def test_with_the_counters_in_the_database_over_the_rate_is_429(database_counters, agent):
    answers = three_waits_at_two_a_minute(agent)
    assert [exchange.status for exchange in answers] == [200, 200, 429]
    assert (b"retry-after", b"60") in answers[2].messages[0]["headers"]
    assert agent.post("checkin", {"metrics": {}}).status_code == 200  # the check-in's own count


def test_a_credential_revoked_between_two_opens_is_refused_at_once(agent):
    queue_command(agent.id)

    def revoke():
        agent_revoke(agent=Agent.objects.get(pk=agent.id), actor="test")

    async def scenario():
        first = await Exchange(wait_path(agent.id), wait_headers(agent)).run()
        await sync_to_async(revoke, thread_sensitive=False)()
        second = await Exchange(wait_path(agent.id), wait_headers(agent)).run()
        return first, second

    first, second = run(scenario)
    assert first.status == 200
    assert (second.status, error_code(second)) == (401, "invalid_credentials")


def test_from_a_new_machine_in_an_admin_opened_rebind_window_the_wait_opens_and_rebinds(agent):
    """The statement records nothing (another machine); the general path rebinds, then takes the
    nonce and the count once."""
    Agent.objects.filter(pk=agent.id).update(rebind_allowed_until=timezone.now() + timedelta(hours=1))
    queue_command(agent.id)
    new_machine = machine_hash("reinstalled")

    async def scenario():
        return await Exchange(wait_path(agent.id), wait_headers(agent, **{"X-Machine-ID": new_machine})).run()

    exchange = run(scenario)
    assert exchange.status == 200 and exchange.lines() == [{"wake": True, "reason": "pending"}]
    assert Agent.objects.get(pk=agent.id).machine_id_hash == new_machine


# -- a reconnecting herd -------------------------------------------------------------------


def test_beyond_the_backlog_an_open_is_refused_at_once_with_a_spread_retry_after(agent, monkeypatch):
    monkeypatch.setattr(wakeup_module, "BACKLOG_FLOOR", 2)
    headers = wait_headers(agent)
    queue_command(agent.id)

    async def scenario():
        hub = WakeHub.for_running_loop()
        hub.opens.in_progress = 2  # two opens still queued for the thread pool
        refused = [await Exchange(wait_path(agent.id), headers).run() for _ in range(20)]
        hub.opens.in_progress = 0
        admitted = await Exchange(wait_path(agent.id), headers).run()  # the same nonce: nothing was taken
        return refused, admitted, hub.count, hub.opens.in_progress

    refused, admitted, left, in_progress = run(scenario)
    assert {(exchange.status, error_code(exchange)) for exchange in refused} == {(503, "wake_channel_busy")}
    retry_afters = {int(dict(exchange.messages[0]["headers"])[b"retry-after"]) for exchange in refused}
    low, high = wait_module.HERD_RETRY_SECONDS
    assert retry_afters <= set(range(low, high + 1)) and len(retry_afters) > 1  # jittered
    assert admitted.status == 200 and admitted.lines() == [{"wake": True, "reason": "pending"}]
    assert left == 0 and in_progress == 0  # the admitted open was counted out again
    assert not SystemEvent.objects.filter(metadata__reason="replayed_nonce").exists()


def test_the_backlog_grows_with_the_rate_this_loop_finishes_opens():
    clock = [1000.0]
    backlog = wakeup_module.OpenBacklog(lambda: clock[0])
    floor = wakeup_module.BACKLOG_FLOOR
    assert [backlog.admit() for _ in range(floor + 1)] == [True] * floor + [False]
    for _ in range(floor):
        backlog.done()
    assert backlog.in_progress == 0
    clock[0] += wakeup_module.OPEN_RATE_WINDOW_SECONDS + 1  # those are out of the window now
    # 500 opens finished a second: the backlog is what it finishes in BACKLOG_SECONDS.
    for _ in range(int(500 * wakeup_module.OPEN_RATE_WINDOW_SECONDS)):
        backlog.finished.append(clock[0])
    assert backlog.limit() == int(500 * wakeup_module.BACKLOG_SECONDS)
    clock[0] += wakeup_module.OPEN_RATE_WINDOW_SECONDS + 1  # an idle while later: back to the floor
    assert backlog.limit() == floor
