"""The fast channel, server side: tell an agent holding ``GET /agents/{id}/wait`` to check in now.

A wake-up carries no command and no state, only "something is waiting: check in". The agent then
does its ordinary signed check-in, so signatures, nonces, at-least-once delivery and run-once stay
on the one path they always had; a lost wake-up costs latency (the agent's next regular poll),
never correctness. Polling stays the fallback for everything.

Publishing (any process, any thread): ``agent_wake_on_commit`` from the write path
(``command_create``), after the transaction commits, so an agent is never sent to fetch a row it
cannot see yet and a rolled-back command wakes nobody.

Delivery, by configuration (``wake_backend``), to every server process:

* Redis pub/sub on channel ``redflag:wake`` when REDFLAG_CACHE_URL is set;
* otherwise PostgreSQL ``NOTIFY redflag_wake``;
* otherwise (SQLite, the embedded setup) straight to this process's event loops, and, for what
  other processes queue (a django-q2 worker's bulk operation), a read of the newly queued commands
  every second.

Listening: each event loop (each uvicorn worker) keeps one ``WakeHub`` with ONE listening
connection shared by all its waiters, started by the first waiter and stopped once none is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable

import psycopg
import redis
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection, transaction

from agents_app.choices import CommandStatus
from agents_app.models import Command

logger = logging.getLogger(__name__)

PG_CHANNEL = "redflag_wake"
REDIS_CHANNEL = "redflag:wake"
# NOTIFY payloads must stay under 8000 bytes: 36-character UUIDs and a comma, 200 at a time.
IDS_PER_MESSAGE = 200
# How long a listener with no waiter left stays connected before it closes (a reconnecting fleet
# should not make it flap).
LISTENER_LINGER_SECONDS = 30.0
LISTENER_RETRY_SECONDS = 5.0
LISTENER_POLL_SECONDS = 15.0
LISTENER_APPLICATION_NAME = "redflag-wake-listener"
# SQLite: how often a process looks for commands other processes queued.
LOCAL_POLL_SECONDS = 1.0
# Wait opens one event loop takes on at once: what it finishes in BACKLOG_SECONDS at the rate it
# finished them over the last OPEN_RATE_WINDOW_SECONDS, and never fewer than BACKLOG_FLOOR.
BACKLOG_SECONDS = 2.0
OPEN_RATE_WINDOW_SECONDS = 5.0
BACKLOG_FLOOR = 64

BACKEND_REDIS, BACKEND_POSTGRESQL, BACKEND_LOCAL = "redis", "postgresql", "local"


def wake_backend() -> str:
    if getattr(settings, "CACHE_URL", ""):
        return BACKEND_REDIS
    if connection.vendor == "postgresql":
        return BACKEND_POSTGRESQL
    return BACKEND_LOCAL


# -- publishing ------------------------------------------------------------------------------

_redis_lock = threading.Lock()
_redis_client = None


def _redis():
    global _redis_client
    with _redis_lock:
        if _redis_client is None:
            _redis_client = redis.Redis.from_url(settings.CACHE_URL, socket_timeout=2, socket_connect_timeout=2)
        return _redis_client


def _messages(agent_ids: Iterable) -> list[str]:
    ids = sorted({str(agent_id) for agent_id in agent_ids})
    return [",".join(ids[start:start + IDS_PER_MESSAGE]) for start in range(0, len(ids), IDS_PER_MESSAGE)]


def agents_wake(agent_ids: Iterable) -> None:
    """Wake these agents' waiters in every server process now. Never raises: a wake-up that cannot
    be sent leaves the agents on their regular poll, which is the fallback by design."""
    messages = _messages(agent_ids)
    if not messages:
        return
    backend = wake_backend()
    try:
        if backend == BACKEND_REDIS:
            client = _redis()
            for message in messages:
                client.publish(REDIS_CHANNEL, message)
        elif backend == BACKEND_POSTGRESQL:
            with connection.cursor() as cursor:
                for message in messages:
                    cursor.execute("SELECT pg_notify(%s, %s)", [PG_CHANNEL, message])
        else:
            for message in messages:
                WakeHub.publish_local(message.split(","))
    except Exception as exc:  # noqa: BLE001 - see the docstring: polling delivers it anyway
        logger.warning("could not send a wake-up through %s (%s); the agents will get it at their next poll",
                       backend, type(exc).__name__)


class _WakeBatch:
    """The agents to wake when one transaction commits: one on_commit hook for all of them."""

    def __init__(self) -> None:
        self.agent_ids: set[str] = set()
        self.hook = self.send  # one bound method, so the hook list can be searched for it
        self.index = -1

    def alive_in(self, hooks: list) -> bool:
        """Still registered in this transaction (not run, not dropped by a rollback)?"""
        return 0 <= self.index < len(hooks) and hooks[self.index][1] is self.hook

    def send(self) -> None:
        agents_wake(self.agent_ids)


def agent_wake_on_commit(agent_id) -> None:
    """Wake the agent once the current transaction commits (at once outside a transaction).

    A bulk operation creating commands for a thousand agents in one transaction sends a few batched
    messages, not a thousand: the ids gather in one batch whose hook runs at commit. A rollback
    drops the hook with its ids (nobody is woken for a command that does not exist), and the next
    call starts a new batch.
    """
    if not connection.in_atomic_block:
        agents_wake([agent_id])
        return
    batch = connection.__dict__.get("_redflag_wake_batch")
    if batch is None or not batch.alive_in(connection.run_on_commit):
        batch = connection.__dict__["_redflag_wake_batch"] = _WakeBatch()
        transaction.on_commit(batch.hook)
        batch.index = len(connection.run_on_commit) - 1
    batch.agent_ids.add(str(agent_id))


# -- listening -------------------------------------------------------------------------------


def _queued_after(rowid: int | None) -> tuple[int, list[tuple[str, str]]]:
    """SQLite: (the newest command rowid, [(command id, agent id)] of the pending commands after
    ``rowid``). SQLite has one writer at a time, so rows become visible in rowid order and the
    read is a range scan of the table's own B-tree, however long the table."""
    try:
        with connection.cursor() as cursor:
            if rowid is None:
                cursor.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {Command._meta.db_table}")
                return cursor.fetchone()[0], []
            cursor.execute(f"SELECT rowid, id, agent_id, status FROM {Command._meta.db_table} WHERE rowid > %s",
                           [rowid])
            rows = cursor.fetchall()
    finally:
        close_old_connections()
    newest = max([rowid, *(row[0] for row in rows)])
    # SQLite keeps a UUID as 32 hex digits; the waiters know the canonical form.
    return newest, [(str(uuid.UUID(str(command_id))), str(uuid.UUID(str(agent_id))))
                    for _, command_id, agent_id, status in rows if status == CommandStatus.PENDING]


class Waiter:
    """One open wait request. ``armed`` once its catch-up read is done: from then on a
    reconnecting listener must wake it (it may have missed a message while disconnected)."""

    __slots__ = ("agent_id", "event", "reason", "armed")

    def __init__(self, agent_id: str):
        self.agent_id = agent_id
        self.event = asyncio.Event()
        self.reason = ""
        self.armed = False

    def wake(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()


class OpenBacklog:
    """The wait opens one event loop has taken on and not finished (queued for the thread pool and
    a database connection, or authenticating), against what it can finish within BACKLOG_SECONDS.

    Why: after a server restart every agent opens its wait at once. Queued without a bound, the
    opens took the thread pool and the connection pool for minutes and starved the check-ins into
    time-outs. An open beyond the backlog is refused before any work (the caller answers 503 with a
    Retry-After); the measured rate adapts the bound to what this machine actually sustains.
    """

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.in_progress = 0
        self.finished: deque[float] = deque()  # when each open of the last OPEN_RATE_WINDOW_SECONDS ended

    def limit(self) -> int:
        horizon = self.clock() - OPEN_RATE_WINDOW_SECONDS
        while self.finished and self.finished[0] < horizon:
            self.finished.popleft()
        return max(BACKLOG_FLOOR, int(len(self.finished) / OPEN_RATE_WINDOW_SECONDS * BACKLOG_SECONDS))

    def admit(self) -> bool:
        if self.in_progress >= self.limit():
            return False
        self.in_progress += 1
        return True

    def done(self) -> None:
        self.in_progress -= 1
        self.finished.append(self.clock())


class WakeHub:
    """The waiters of one event loop and the one connection that listens for them."""

    _by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop, backend: str):
        self.loop = loop
        self.backend = backend
        # agent id -> its open waits in arrival order (a dict used as an ordered set)
        self.waiters: dict[str, dict[Waiter, None]] = {}
        self.count = 0
        self.task: asyncio.Task | None = None
        self.listening = asyncio.Event()
        self.opens = OpenBacklog(loop.time)

    @classmethod
    def for_running_loop(cls) -> WakeHub:
        loop = asyncio.get_running_loop()
        with cls._lock:
            hub = cls._by_loop.get(loop)
            if hub is None:
                hub = cls._by_loop[loop] = cls(loop, wake_backend())
        return hub

    @classmethod
    def publish_local(cls, agent_ids: list[str]) -> None:
        """The in-process backend: hand the ids to every loop of this process, from any thread."""
        with cls._lock:
            hubs = list(cls._by_loop.values())
        for hub in hubs:
            if not hub.loop.is_closed():
                hub.loop.call_soon_threadsafe(hub.wake, agent_ids, "notified")

    # -- waiters ---------------------------------------------------------------------------

    def register(self, agent_id: str) -> Waiter:
        waiter = Waiter(agent_id)
        self.waiters.setdefault(agent_id, {})[waiter] = None
        self.count += 1
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._listen())
        return waiter

    def release(self, waiter: Waiter) -> None:
        group = self.waiters.get(waiter.agent_id)
        if group is not None and waiter in group:
            del group[waiter]
            self.count -= 1
            if not group:
                del self.waiters[waiter.agent_id]

    async def ready(self, timeout: float) -> bool:
        """Whether this loop is listening (within ``timeout``): a catch-up read done before that
        could miss a wake-up sent in between."""
        if self.listening.is_set():
            return True
        try:
            await asyncio.wait_for(self.listening.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def wake(self, agent_ids: Iterable[str], reason: str) -> None:
        for agent_id in agent_ids:
            for waiter in self.waiters.get(agent_id, ()):
                waiter.wake(reason)

    def wake_armed(self, reason: str) -> None:
        for group in self.waiters.values():
            for waiter in group:
                if waiter.armed:
                    waiter.wake(reason)

    def _deliver(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            payload = payload.decode("ascii", "replace")
        self.wake(payload.split(","), "notified")

    # -- the listening connection ------------------------------------------------------------

    async def _listen(self) -> None:
        """1. connect (PostgreSQL LISTEN or Redis SUBSCRIBE) and mark the hub listening;
        2. wake every armed waiter: a message may have been sent while nobody listened;
        3. deliver messages until no waiter is left for LISTENER_LINGER_SECONDS;
        4. on a lost connection: not listening (new waiters get a 503), retry after a pause."""
        while True:
            try:
                if self.backend == BACKEND_REDIS:
                    await self._listen_redis()
                elif self.backend == BACKEND_POSTGRESQL:
                    await self._listen_postgresql()
                else:
                    await self._watch_local()
                if not self.count:
                    return  # lingered with no waiter: the next waiter starts a new listener
                continue  # a waiter came while the connection was closing
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a lost listener degrades to polling, then retries
                self.listening.clear()
                logger.warning("wake-up listener lost (%s); agents poll until it reconnects", type(exc).__name__)
            if not self.count:
                return
            await asyncio.sleep(LISTENER_RETRY_SECONDS)

    def _lingered(self, idle_since: list) -> bool:
        """True once no waiter has been left for LISTENER_LINGER_SECONDS."""
        if self.count:
            idle_since.clear()
            return False
        if not idle_since:
            idle_since.append(self.loop.time())
        return self.loop.time() - idle_since[0] > LISTENER_LINGER_SECONDS

    async def _listen_postgresql(self) -> None:
        params = connection.get_connection_params()
        for name in ("cursor_factory", "context", "prepare_threshold", "pool"):
            params.pop(name, None)
        # Which process listens, in pg_stat_activity: "redflag-wake-listener/<pid>".
        params["application_name"] = f"{LISTENER_APPLICATION_NAME}/{os.getpid()}"
        async with await psycopg.AsyncConnection.connect(autocommit=True, **params) as conn:
            await conn.execute(f"LISTEN {PG_CHANNEL}")
            self._connected()
            idle_since: list = []
            while not self._lingered(idle_since):
                async for notify in conn.notifies(timeout=LISTENER_POLL_SECONDS):
                    self._deliver(notify.payload)
                await conn.execute("SELECT 1")  # a dead connection shows here, not as silence
        self.listening.clear()

    async def _listen_redis(self) -> None:
        client = aioredis.Redis.from_url(settings.CACHE_URL, socket_connect_timeout=5)
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(REDIS_CHANNEL)
            self._connected()
            idle_since: list = []
            while not self._lingered(idle_since):
                message = await pubsub.get_message(timeout=LISTENER_POLL_SECONDS)
                if message is not None and message.get("type") == "message":
                    self._deliver(message["data"])
                elif message is None:
                    await pubsub.ping()
            await pubsub.aclose()
        finally:
            await client.aclose()
        self.listening.clear()

    async def _watch_local(self) -> None:
        """SQLite: another process (a django-q2 worker running a bulk operation, a second web
        process) cannot reach this loop, so every LOCAL_POLL_SECONDS a read of the commands added
        since the last look wakes the agents of the pending ones (and their waiters only)."""
        rowid, _ = await sync_to_async(_queued_after, thread_sensitive=False)(None)
        self._connected()
        idle_since: list = []
        while not self._lingered(idle_since):
            await asyncio.sleep(LOCAL_POLL_SECONDS)
            rowid, queued = await sync_to_async(_queued_after, thread_sensitive=False)(rowid)
            self.wake({agent_id for _, agent_id in queued}, "queued")
        self.listening.clear()

    def _connected(self) -> None:
        self.listening.set()
        self.wake_armed("reconnected")
