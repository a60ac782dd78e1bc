"""The durable outbox: everything the agent must tell the server, kept until acknowledged.

Events, command results and scan/system reports are written here first (one
SQLite file, ``outbox.sqlite3`` beside the config, 0600, WAL journal with
``synchronous=FULL``), and removed only after the server acknowledged them.
A crash, a reboot or a server outage loses nothing; a repeat after a lost
acknowledgement is harmless because every item carries an idempotency key
(an event's id, a report's id) that the server deduplicates on.

The cap: at most ``max_items`` items (default 2000) and ``max_bytes`` of
payload (default 8 MiB). When a new item would exceed either, the oldest
items are dropped and one ``agent_checkin``/``warning`` event counts them by
kind (later overflows add to it while it is unsent), so the loss itself
reaches the server. A single item may use at most half the byte cap.

Flushing walks the items oldest first. Consecutive items of one kind go out
in one batch when their channel allows it (events: up to 500 per request).
A failed send stops the flush, so nothing overtakes an older item of the
same stream; items of a kind nobody can send yet stay where they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from agent_client.events import AGENT_CHECKIN, make_event

logger = logging.getLogger("redflag.agent.outbox")

OUTBOX_FILE_NAME = "outbox.sqlite3"
DEFAULT_MAX_ITEMS = 2000
DEFAULT_MAX_BYTES = 8 * 1024 * 1024

KIND_EVENT = "event"
KIND_COMMAND_RESULT = "command_result"
KIND_UPDATES_REPORT = "updates_report"
KIND_SYSTEM_REPORT = "system_report"

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    item_id TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
)
"""


class OutboxError(Exception):
    pass


@dataclasses.dataclass
class OutboxItem:
    seq: int
    kind: str
    item_id: str
    payload: dict[str, Any]
    size: int
    created_at: float
    attempts: int


@dataclasses.dataclass
class Channel:
    """How one kind of item reaches the server.

    ``send`` receives a batch of payloads and returns normally only when the
    server acknowledged all of them; anything it raises stops the flush.
    """

    send: Callable[[list[dict[str, Any]]], None]
    batch_size: int = 1


@dataclasses.dataclass
class FlushResult:
    sent: int = 0
    remaining: int = 0
    error: Optional[BaseException] = None

    @property
    def complete(self) -> bool:
        return self.error is None and self.remaining == 0


class Outbox:
    def __init__(self, path: Path, *, max_items: int = DEFAULT_MAX_ITEMS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_items < 2:
            raise ValueError("the outbox needs room for at least two items")
        self.path = Path(path)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._initialized = False
        # Threads of one agent (the loop, a command) may open a new outbox at once; switching it to
        # WAL is not covered by SQLite's busy timeout, so one thread does that first.
        self._init_lock = threading.Lock()

    @classmethod
    def beside(cls, config_path: Path, **kwargs: Any) -> Outbox:
        return cls(Path(config_path).parent / OUTBOX_FILE_NAME, **kwargs)

    # -- storage ---------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self._initialized:
            with self._init_lock:
                if not self._initialized:
                    with self._open() as connection:
                        connection.execute("PRAGMA journal_mode=WAL")
                        connection.execute(SCHEMA)
                    self._initialized = True
        with self._open() as connection:
            yield connection

    @contextlib.contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        if not self._initialized:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Create the file 0600 before SQLite does (it would honour the umask).
            fd = os.open(str(self.path), os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        try:
            connection = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from None
        try:
            connection.execute("PRAGMA synchronous=FULL")
            yield connection
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"outbox {self.path} is unusable: {exc}") from None
        finally:
            connection.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    # -- writing ---------------------------------------------------------------

    def add(self, kind: str, payload: dict[str, Any], *, item_id: str) -> bool:
        """Store an item durably. False when an item with this id is already queued."""
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        size = len(text.encode("utf-8"))
        if size > self.max_bytes // 2:
            raise OutboxError(f"{kind} {item_id} is {size} bytes, more than the outbox accepts")
        with self._write() as connection:
            inserted = connection.execute(
                "INSERT OR IGNORE INTO outbox (kind, item_id, payload, size, created_at) VALUES (?, ?, ?, ?, ?)",
                (kind, item_id, text, size, time.time()),
            ).rowcount
            if inserted:
                self._enforce_cap(connection)
        return bool(inserted)

    def add_event(self, event: dict[str, Any]) -> bool:
        return self.add(KIND_EVENT, event, item_id=event["id"])

    def _enforce_cap(self, connection: sqlite3.Connection) -> None:
        """Drop the oldest items until the outbox fits, and say so in one overflow warning.

        There is at most one unsent overflow warning: a later overflow adds its
        counts to it rather than queueing another, so a long outage cannot fill
        the outbox with warnings. The warning itself is never dropped.
        """
        count, total = connection.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        if count <= self.max_items and total <= self.max_bytes:
            return
        warning_row = connection.execute(
            "SELECT seq, payload FROM outbox WHERE item_id LIKE 'overflow:%' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        room_for_warning = 0 if warning_row else 1
        reserve = 0 if warning_row else 1024
        newest_seq = connection.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
        rows = connection.execute(
            "SELECT seq, kind, size FROM outbox WHERE item_id NOT LIKE 'overflow:%' AND seq < ? ORDER BY seq",
            (newest_seq,),
        ).fetchall()
        dropped: dict[str, int] = {}
        for seq, kind, size in rows:
            if count + room_for_warning <= self.max_items and total + reserve <= self.max_bytes:
                break
            connection.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            dropped[kind] = dropped.get(kind, 0) + 1
            count -= 1
            total -= size
        if not dropped:
            return
        logger.warning("outbox full: dropped the %d oldest unsent items (%s)", sum(dropped.values()),
                       ", ".join(f"{number} {kind}" for kind, number in sorted(dropped.items())))
        if warning_row:
            # Merged in place. A flush that read the old text a moment ago may
            # acknowledge it and lose this increment; the counts are advisory.
            seq, payload = warning_row
            previous = json.loads(payload).get("metadata", {}).get("dropped", {})
            for kind, number in previous.items():
                dropped[kind] = dropped.get(kind, 0) + int(number)
            warning = self._overflow_warning(dropped, event_id=json.loads(payload)["id"])
            text = json.dumps(warning, sort_keys=True, separators=(",", ":"))
            connection.execute("UPDATE outbox SET payload = ?, size = ? WHERE seq = ?",
                               (text, len(text.encode("utf-8")), seq))
            return
        warning = self._overflow_warning(dropped)
        text = json.dumps(warning, sort_keys=True, separators=(",", ":"))
        connection.execute(
            "INSERT INTO outbox (kind, item_id, payload, size, created_at) VALUES (?, ?, ?, ?, ?)",
            (KIND_EVENT, "overflow:" + warning["id"], text, len(text.encode("utf-8")), time.time()),
        )

    def _overflow_warning(self, dropped: dict[str, int], event_id: Optional[str] = None) -> dict[str, Any]:
        number = sum(dropped.values())
        summary = ", ".join(f"{value} {key}" for key, value in sorted(dropped.items()))
        warning = make_event(
            AGENT_CHECKIN,
            "warning",
            f"Agent outbox full (cap {self.max_items} items / {self.max_bytes} bytes): "
            f"dropped the {number} oldest unsent items ({summary})",
            severity="warning",
            metadata={"reason": "outbox_overflow", "dropped": dropped,
                      "max_items": self.max_items, "max_bytes": self.max_bytes},
        )
        if event_id:
            warning["id"] = event_id
        return warning

    # -- reading ---------------------------------------------------------------

    def pending(self, *, limit: Optional[int] = None, after_seq: int = 0) -> list[OutboxItem]:
        query = "SELECT seq, kind, item_id, payload, size, created_at, attempts FROM outbox WHERE seq > ? ORDER BY seq"
        parameters: Sequence[Any] = (after_seq,)
        if limit is not None:
            query += " LIMIT ?"
            parameters = (after_seq, limit)
        with self._connect() as connection:
            rows = connection.execute(query, parameters).fetchall()
        return [
            OutboxItem(seq=row[0], kind=row[1], item_id=row[2], payload=json.loads(row[3]), size=row[4],
                       created_at=row[5], attempts=row[6])
            for row in rows
        ]

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with self._connect() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def counts_by_kind(self) -> dict[str, int]:
        if not self.path.exists():
            return {}
        with self._connect() as connection:
            return dict(connection.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind ORDER BY kind").fetchall())

    def size_bytes(self) -> int:
        if not self.path.exists():
            return 0
        with self._connect() as connection:
            return int(connection.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])

    # -- acknowledging ------------------------------------------------------------

    def ack(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._write() as connection:
            connection.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])

    def note_failure(self, seqs: Sequence[int], error: str) -> None:
        if not seqs:
            return
        with self._write() as connection:
            connection.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                [(error[:500], seq) for seq in seqs],
            )

    # -- flushing -------------------------------------------------------------------

    def flush(self, channels: dict[str, Channel], *, page_size: int = 1000) -> FlushResult:
        """Send everything a channel exists for, oldest first; stop at the first failure."""
        result = FlushResult()
        after_seq = 0
        while True:
            page = self.pending(limit=page_size, after_seq=after_seq)
            if not page:
                break
            index = 0
            while index < len(page):
                item = page[index]
                channel = channels.get(item.kind)
                if channel is None:
                    result.remaining += 1
                    index += 1
                    continue
                batch = [item]
                while (
                    len(batch) < channel.batch_size
                    and index + len(batch) < len(page)
                    and page[index + len(batch)].kind == item.kind
                ):
                    batch.append(page[index + len(batch)])
                seqs = [entry.seq for entry in batch]
                try:
                    channel.send([entry.payload for entry in batch])
                except Exception as exc:
                    self.note_failure(seqs, f"{type(exc).__name__}: {exc}")
                    result.error = exc
                    result.remaining = self.count()
                    return result
                self.ack(seqs)
                result.sent += len(batch)
                index += len(batch)
            after_seq = page[-1].seq
        return result


def describe(outbox: Outbox) -> str:
    """``3 items (2 event, 1 updates_report), 1.2 KiB`` for the status command."""
    counts = outbox.counts_by_kind()
    total = sum(counts.values())
    if not total:
        return "empty"
    kinds = ", ".join(f"{number} {kind}" for kind, number in counts.items())
    size = outbox.size_bytes()
    return f"{total} item{'s' if total != 1 else ''} ({kinds}), {size / 1024:.1f} KiB"

