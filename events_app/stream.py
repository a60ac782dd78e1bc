"""Live stream of new SystemEvents as Server-Sent Events (GET /audit/events/stream).

Correct across several server processes because every stream reads the table, never an in-process
queue: a wake-up only says "look again".

* PostgreSQL: a statement trigger (migration 0006) runs ``pg_notify('redflag_events')`` on every
  insert; it is delivered at commit, to every process. Each process (each event loop) keeps ONE
  listening connection, shared by all its streams, and wakes them; they then read rows with
  ``seq > cursor``. Without a notification a stream still looks every FALLBACK_POLL_SECONDS.
* SQLite (one machine): a short poll of the table every SQLITE_POLL_SECONDS.

The view is async: under an ASGI server (uvicorn, the production command in README) an idle
stream is a suspended coroutine, not a thread. Each connection lives at most
REDFLAG_EVENT_STREAM_SECONDS (default 300); the browser's EventSource then reconnects by itself,
sending Last-Event-ID.

Delivery is at-least-once. The SSE id is the cursor's watermark (every event at or below it has
been sent), so after a reconnect a few events may come again; clients deduplicate by event id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Callable

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.db.models import Max

from events_app.models import SystemEvent
from events_app.querysets import EventFilter
from events_app.rendering import event_record

logger = logging.getLogger(__name__)

CHANNEL = "redflag_events"
SQLITE_POLL_SECONDS = 1.0
FALLBACK_POLL_SECONDS = 10.0
KEEPALIVE_SECONDS = 15.0
HOLE_GRACE_SECONDS = 5.0
MAX_ROWS_PER_READ = 500
RETRY_MILLISECONDS = 2000


def stream_lifetime() -> float:
    return float(getattr(settings, "REDFLAG_EVENT_STREAM_SECONDS", 300))


class SeqCursor:
    """Where a stream is in insertion order, tolerant of PostgreSQL's out-of-order commits.

    ``nextval`` is taken at insert, so seq 7 can commit before seq 6, and a rolled-back insert
    leaves 6 missing for ever. ``low`` is the watermark: every seq at or below it has been seen or
    given up on. A missing seq (a hole) holds the watermark for HOLE_GRACE_SECONDS; rows above it
    that were already sent are remembered so they are not sent twice.
    """

    def __init__(self, low: int, *, grace: float = HOLE_GRACE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.low = low
        self.grace = grace
        self.clock = clock
        self.seen: set[int] = set()
        self.holes: dict[int, float] = {}

    def observe(self, present: list[int]) -> None:
        """Record the seqs > low that exist now (all rows, not only the filter's), then advance."""
        now = self.clock()
        self.seen.update(s for s in present if s > self.low)
        if not self.seen:
            return
        if min(self.seen) - self.low > 10 * MAX_ROWS_PER_READ:  # a jump (sequence reset or cache): no waiting
            self.low = min(self.seen) - 1
            self.holes.clear()
        for seq in range(self.low + 1, max(self.seen)):
            if seq not in self.seen:
                self.holes.setdefault(seq, now)
        while True:
            nxt = self.low + 1
            if nxt in self.seen:
                self.seen.discard(nxt)
                self.holes.pop(nxt, None)
            elif nxt in self.holes and now - self.holes[nxt] >= self.grace:
                del self.holes[nxt]
            else:
                break
            self.low = nxt

    def is_new(self, seq: int, delivered: set[int]) -> bool:
        return seq > self.low and seq not in delivered


def _read(spec: EventFilter, cursor: SeqCursor, delivered: set[int]) -> list[dict]:
    """Two indexed reads: the seqs after the watermark (all rows), then the filter's rows among them."""
    present = list(SystemEvent.objects.filter(seq__gt=cursor.low).order_by("seq")
                   .values_list("seq", flat=True)[:MAX_ROWS_PER_READ])
    if not present:
        return []
    low, high = cursor.low, present[-1]
    rows = [row for row in SystemEvent.objects.matching(spec).filter(seq__gt=low, seq__lte=high).order_by("seq")
            if cursor.is_new(row.seq, delivered)]
    cursor.observe(present)
    out = []
    for row in rows:
        delivered.add(row.seq)
        out.append(event_record(row))
    # Forget deliveries at or below the watermark: they can no longer come back.
    delivered.intersection_update({s for s in delivered if s > cursor.low})
    return out


async def read_in_pool(function, *args):
    """Run a short read in the event loop's shared thread pool, not a thread of this request.

    Django gives each ASGI request its own thread for thread-sensitive calls, and that thread keeps
    its database connection (CONN_MAX_AGE) for as long as the stream is open: a thousand idle
    streams would hold a thousand connections. The loop's default pool is bounded
    (min(32, CPUs + 4) threads), so all streams of a process share that many connections.
    """
    return await sync_to_async(function, thread_sensitive=False)(*args)


def current_top_seq() -> int:
    return SystemEvent.objects.aggregate(top=Max("seq"))["top"] or 0


class Notifier:
    """One LISTEN connection per event loop (per server process under uvicorn), shared by its streams."""

    _by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self):
        self.waiters: set[asyncio.Event] = set()
        self.task: asyncio.Task | None = None

    @classmethod
    def for_running_loop(cls) -> Notifier:
        loop = asyncio.get_running_loop()
        notifier = cls._by_loop.get(loop)
        if notifier is None:
            notifier = cls._by_loop[loop] = cls()
        return notifier

    def ensure_listening(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        while self.waiters:
            try:
                async with await psycopg.AsyncConnection.connect(autocommit=True, **params) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.wake()  # anything committed while we were not listening
                    while self.waiters:
                        async for _ in conn.notifies(timeout=KEEPALIVE_SECONDS, stop_after=1):
                            self.wake()
            except Exception as exc:  # noqa: BLE001 - a lost listener degrades to polling, then retries
                logger.warning("event stream listener lost (%s); polling until it reconnects", type(exc).__name__)
                await asyncio.sleep(FALLBACK_POLL_SECONDS)
        self.task = None

    async def close(self) -> None:
        """Stop listening now (tests, loop shutdown); the next stream starts a new listener."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def release(self, waiter: asyncio.Event) -> None:
        """A stream ended; the last one out stops the listener (no connection left behind when the
        loop is a short-lived one, as under runserver)."""
        self.waiters.discard(waiter)
        if not self.waiters and self.task is not None:
            self.task.cancel()
            self.task = None

    def wake(self) -> None:
        for waiter in list(self.waiters):
            waiter.set()

    async def wait(self, waiter: asyncio.Event, timeout: float) -> None:
        self.waiters.add(waiter)
        self.ensure_listening()
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiter.clear()


def sse(event_type: str | None, data: str | None = None, event_id: int | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event_type:
        lines.append(f"event: {event_type}")
    if data is not None:
        lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


async def event_stream(spec: EventFilter, start_after: int | None, *, lifetime: float | None = None
                       ) -> AsyncIterator[bytes]:
    """The SSE body: ``retry``, then matching events as they are committed, until ``lifetime``."""
    postgres = connection.vendor == "postgresql"
    if start_after is None:
        start_after = await read_in_pool(current_top_seq)
    cursor, delivered = SeqCursor(start_after), set()
    deadline = time.monotonic() + (stream_lifetime() if lifetime is None else lifetime)
    waiter = asyncio.Event()
    notifier = Notifier.for_running_loop() if postgres else None
    yield f"retry: {RETRY_MILLISECONDS}\n".encode() + sse("ready", json.dumps({"cursor": cursor.low}),
                                                          event_id=cursor.low)
    last_sent = time.monotonic()
    try:
        while time.monotonic() < deadline:
            records = await read_in_pool(_read, spec, cursor, delivered)
            for record in records:
                yield sse("system_event", json.dumps(record, sort_keys=True), event_id=cursor.low)
                last_sent = time.monotonic()
            if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            pause = HOLE_GRACE_SECONDS / 2 if cursor.holes else None
            if notifier is not None:
                await notifier.wait(waiter, min(remaining, pause or FALLBACK_POLL_SECONDS))
            else:
                await asyncio.sleep(min(remaining, SQLITE_POLL_SECONDS))
    finally:
        if notifier is not None:
            notifier.release(waiter)
    yield sse("bye", json.dumps({"reason": "lifetime"}), event_id=cursor.low)


def event_stream_sync(spec: EventFilter, start_after: int | None, *, lifetime: float | None = None
                      ) -> Iterator[bytes]:
    """The same body for a WSGI server (runserver, the tests' live server).

    Django would buffer an async body to its end under WSGI, so this one is a plain generator: it
    holds the worker thread and polls every SQLITE_POLL_SECONDS, on either database. Production
    serves the async one under uvicorn.
    """
    cursor, delivered = SeqCursor(current_top_seq() if start_after is None else start_after), set()
    deadline = time.monotonic() + (stream_lifetime() if lifetime is None else lifetime)
    yield f"retry: {RETRY_MILLISECONDS}\n".encode() + sse("ready", json.dumps({"cursor": cursor.low}),
                                                          event_id=cursor.low)
    last_sent = time.monotonic()
    try:
        while time.monotonic() < deadline:
            for record in _read(spec, cursor, delivered):
                yield sse("system_event", json.dumps(record, sort_keys=True), event_id=cursor.low)
                last_sent = time.monotonic()
            if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
            time.sleep(max(0.0, min(deadline - time.monotonic(), SQLITE_POLL_SECONDS)))
    finally:
        # This thread held its connection for the whole stream; give it back now rather than
        # when the thread is collected (request_finished keeps connections younger than CONN_MAX_AGE).
        connection.close()
    yield sse("bye", json.dumps({"reason": "lifetime"}), event_id=cursor.low)
