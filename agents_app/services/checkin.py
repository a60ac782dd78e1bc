"""One check-in: the agent is alive, its heartbeat is reconciled, its due scans are created and up to
DELIVERY_BATCH signed commands are handed over. The view only validates and serialises."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from agents_app.models import Agent, AgentSubsystem, Command
from agents_app.services.capabilities import agent_capabilities_report
from agents_app.services.commands import commands_deliver
from agents_app.services.heartbeat import HEARTBEAT_POLL_SECONDS, heartbeat_active, heartbeat_reconcile
from agents_app.services.scheduling import schedule_due_scans
from redflag.api.throttling import RateWindow, rate_counter_sql, rate_counter_table, rate_take
from redflag.models import RequestNonce


@dataclass(frozen=True)
class CheckinReply:
    commands: list[Command]
    config_version: int
    poll_interval_seconds: int
    heartbeat_active: bool
    heartbeat_until: datetime | None
    server_time: datetime


@dataclass(frozen=True)
class CheckinClaim:
    """What the check-in's one statement found: the agent (None when it recorded nothing), whether it
    took the request nonce, the rate-limit count, and whether anything is due or pending for the
    agent (so the check-in reads no further when nothing is)."""

    agent: Agent | None
    nonce_fresh: bool
    rate_count: int | None
    due: bool = False
    pending: bool = False


# Columns the check-in reads back from its UPDATE: everything but the large system report.
_RETURNED_FIELDS = [field for field in Agent._meta.concrete_fields if field.name != "system_info"]
_RETURNED_ATTNAMES = [field.attname for field in _RETURNED_FIELDS]
# Stand-ins for "now" and the agent's id while a read is compiled once (see _Probe).
_PROBE_NOW = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=dt_timezone.utc)
_PROBE_AGENT = uuid.UUID("5eed5eed-0000-4000-8000-00000000a6e7")


@dataclass(frozen=True)
class _Probe:
    """A read compiled once per database vendor, its parameters re-filled per check-in.

    Why: compiling the two "anything due / pending?" reads through the ORM on every check-in cost
    more CPU than the rest of the check-in's own work (cProfile, bench/checkin.py). The rules stay
    where they are defined (``AgentSubsystem.objects.due``, ``Command.objects.pending``): the
    queryset is compiled with stand-in values and each parameter that is a stand-in is replaced
    by the request's own value.
    """

    sql: str
    slots: tuple  # per parameter: "now", "agent", or ("value", the compiled constant)

    def params(self, *, now, agent) -> list:
        return [now if slot == "now" else agent if slot == "agent" else slot[1] for slot in self.slots]


_PROBES: dict[str, tuple[_Probe, _Probe]] = {}
_COLUMNS: dict[str, str] = {}  # the RETURNING list, quoted for each vendor


def _probe(queryset) -> _Probe:
    ops = connection.ops
    now = ops.adapt_datetimefield_value(_PROBE_NOW)
    agent = Agent._meta.pk.get_db_prep_value(_PROBE_AGENT, connection)
    sql, params = queryset.values("pk").query.sql_with_params()
    slots = tuple("now" if param == now else "agent" if param == agent else ("value", param) for param in params)
    if "now" not in slots or "agent" not in slots:  # a stand-in compiled to something else: never guess
        raise RuntimeError(f"cannot precompile {sql!r}: a stand-in value is missing from {params!r}")
    return _Probe(sql, slots)


def _due_and_pending_probes() -> tuple[_Probe, _Probe]:
    """The check-in's two reads, compiled for this connection's vendor on first use."""
    probes = _PROBES.get(connection.vendor)
    if probes is None:
        probes = _PROBES[connection.vendor] = (
            _probe(AgentSubsystem.objects.due(_PROBE_NOW).filter(agent_id=_PROBE_AGENT)),
            _probe(Command.objects.pending().filter(agent_id=_PROBE_AGENT, expires_at__gt=_PROBE_NOW)),
        )
    return probes


def pending_probe_sql(*, agent_id: str, now: datetime) -> tuple[str, list]:
    """SQL: ``EXISTS (…)``, a command is pending for the agent (the check-in's own rule, precompiled);
    the wait's catch-up read (agents_app/api/wait.py) asks the same question in its one statement."""
    pending = _due_and_pending_probes()[1]
    return (f"EXISTS ({pending.sql})",
            pending.params(now=connection.ops.adapt_datetimefield_value(now),
                           agent=Agent._meta.pk.get_db_prep_value(agent_id, connection)))


def _alive_sql(*, agent_id: str, generation: int, machine_id_hash: str, agent_version: str | None,
               metrics: dict[str, Any], now: datetime, guards: str, guard_params: list) -> tuple[str, list]:
    """UPDATE … RETURNING: the agent is alive, if its credentials, machine and ``guards`` hold."""
    ops = connection.ops
    pk = Agent._meta.pk.get_db_prep_value(agent_id, connection)
    metrics_field = Agent._meta.get_field("metrics")
    db_now = ops.adapt_datetimefield_value(now)
    sets, params = ["last_seen_at = %s", "metrics = %s"], [db_now, metrics_field.get_db_prep_save(metrics, connection)]
    if agent_version:
        sets.append("agent_version = %s")
        params.append(agent_version)
    due, pending = _due_and_pending_probes()
    columns = _COLUMNS.get(connection.vendor) or _COLUMNS.setdefault(
        connection.vendor, ", ".join(ops.quote_name(field.column) for field in _RETURNED_FIELDS))
    sql = (f"UPDATE {ops.quote_name(Agent._meta.db_table)} SET {', '.join(sets)} "
           f"WHERE id = %s AND credential_generation = %s AND machine_id_hash = %s AND revoked_at IS NULL{guards} "
           f"RETURNING {columns}, EXISTS ({due.sql}) AS checkin_due, EXISTS ({pending.sql}) AS checkin_pending")
    return sql, [*params, pk, generation, machine_id_hash, *guard_params, *due.params(now=db_now, agent=pk),
                 *pending.params(now=db_now, agent=pk)]


def nonce_take_sql(*, nonce: str, agent_id: str | None, now: datetime, condition: str = "true",
                   condition_params: tuple = ()) -> tuple[str, list]:
    """INSERT the request nonce if it is new (and ``condition`` holds): one statement, no savepoint;
    the unique constraint decides and a replay inserts no row."""
    table = connection.ops.quote_name(RequestNonce._meta.db_table)
    agent = RequestNonce._meta.get_field("agent_id").get_db_prep_value(agent_id, connection)
    return (f"INSERT INTO {table} (nonce, agent_id, created_at) SELECT %s, %s, %s WHERE {condition} "
            f"ON CONFLICT (nonce) DO NOTHING",
            [nonce, agent, connection.ops.adapt_datetimefield_value(now), *condition_params])


def credentials_hold_sql(*, agent_id: str, generation: int, machine_id_hash: str) -> tuple[str, tuple]:
    """SQL: the agent exists with this credential generation and machine, and is not revoked."""
    table = connection.ops.quote_name(Agent._meta.db_table)
    return (f"EXISTS (SELECT 1 FROM {table} WHERE id = %s AND credential_generation = %s AND machine_id_hash = %s "
            f"AND revoked_at IS NULL)",
            (Agent._meta.pk.get_db_prep_value(agent_id, connection), generation, machine_id_hash))


def _row_converters() -> list[list]:
    """Per returned column, the converters Django would apply reading it (computed once per vendor)."""
    converters = _CONVERTERS.get(connection.vendor)
    if converters is None:
        converters = _CONVERTERS[connection.vendor] = [
            connection.ops.get_db_converters(field.cached_col) + field.get_db_converters(connection)
            for field in _RETURNED_FIELDS]
    return converters


_CONVERTERS: dict[str, list[list]] = {}


def _agent_from_row(values) -> Agent:
    converted = []
    for field, field_converters, value in zip(_RETURNED_FIELDS, _row_converters(), values):
        for converter in field_converters:
            value = converter(value, field.cached_col, connection)
        converted.append(value)
    return Agent.from_db(connection.alias, _RETURNED_ATTNAMES, converted)


@dataclass(frozen=True)
class NonceAndCount:
    """The first part of an agent request's one statement, shared by the check-in and the wait open: take
    the request nonce if the credentials hold (credentials_hold_sql), then count the request against
    ``rate`` in the database counter table, if that is where counters live. ``cached_count`` is the count
    already taken in the cache (Redis, or process memory in tests) when they live there."""

    nonce_sql: str
    nonce_params: list
    rate: RateWindow | None
    table: str | None
    cached_count: int | None

    @classmethod
    def prepare(cls, *, agent_id: str, generation: int, machine_id_hash: str, nonce: str, rate: RateWindow | None,
                now: datetime) -> NonceAndCount:
        table = rate_counter_table() if rate is not None else None
        cached = rate_take(rate) if rate is not None and table is None else None
        credentials, credential_params = credentials_hold_sql(agent_id=agent_id, generation=generation,
                                                              machine_id_hash=machine_id_hash)
        nonce_sql, nonce_params = nonce_take_sql(nonce=nonce, agent_id=agent_id, now=now, condition=credentials,
                                                 condition_params=credential_params)
        return cls(nonce_sql, nonce_params, rate, table, cached)

    @property
    def over_rate_in_cache(self) -> bool:
        return self.cached_count is not None and self.cached_count > self.rate.allowed

    def postgresql_ctes(self) -> tuple[str, str, list]:
        """(``taken_nonce AS (…)[, counted AS (…)]`` for a WITH, the SQL of the count or NULL, parameters)."""
        if self.table is None:
            return f"taken_nonce AS ({self.nonce_sql} RETURNING 1)", "NULL", list(self.nonce_params)
        counter_sql, counter_params = rate_counter_sql(self.rate, self.table,
                                                       condition="EXISTS (SELECT 1 FROM taken_nonce)")
        return (f"taken_nonce AS ({self.nonce_sql} RETURNING 1), counted AS ({counter_sql})",
                "(SELECT value FROM counted)", [*self.nonce_params, *counter_params])

    def count_from(self, counted) -> int | None:
        """The request's count: the statement's (``counted``), else the cache's."""
        return int(counted) if counted is not None else self.cached_count

    def run_on_sqlite(self, cursor) -> tuple[bool, int | None]:
        """The same as separate statements in the caller's transaction: (nonce taken, count)."""
        cursor.execute(self.nonce_sql, self.nonce_params)
        if cursor.rowcount != 1:
            return False, self.cached_count
        if self.table is None:
            return True, self.cached_count
        counter_sql, counter_params = rate_counter_sql(self.rate, self.table)
        cursor.execute(counter_sql, counter_params)
        return True, int(cursor.fetchone()[0])


def checkin_claim(*, agent_id: str, generation: int, machine_id_hash: str, nonce: str, rate: RateWindow | None,
                  agent_version: str | None, metrics: dict[str, Any], now: datetime) -> CheckinClaim:
    """The common check-in in one statement and one commit (PostgreSQL): if the access token's
    credential generation is current, the machine matches and the agent is not revoked, take the
    request nonce; if it was new, count the request against the agent's check-in rate; if within
    the rate, record the agent alive. Read back the agent and whether anything is due or pending.

    Revocation takes effect at once (the statement checks the generation and ``revoked_at``);
    nothing is cached. A refused request leaves nothing behind but, over the rate, its nonce and
    count. When it records nothing, the caller works out which refusal applies.

    SQLite (no data-modifying CTEs, and no round trips to save) runs the same statements in one
    transaction. With the counters in Redis (or process memory in tests) the count is taken first,
    in the cache, and a check-in over the rate records nothing.
    """
    first = NonceAndCount.prepare(agent_id=agent_id, generation=generation, machine_id_hash=machine_id_hash,
                                  nonce=nonce, rate=rate, now=now)
    if first.over_rate_in_cache:
        return CheckinClaim(agent=None, nonce_fresh=False, rate_count=first.cached_count)
    alive = {"agent_id": agent_id, "generation": generation, "machine_id_hash": machine_id_hash,
             "agent_version": agent_version, "metrics": metrics, "now": now}
    if connection.vendor == "postgresql":
        ctes, counter_value, params = first.postgresql_ctes()
        guards, guard_params = " AND EXISTS (SELECT 1 FROM taken_nonce)", []
        if first.table is not None:
            guards += f" AND CAST({counter_value} AS bigint) <= %s"
            guard_params = [rate.allowed]
        alive_sql, alive_params = _alive_sql(**alive, guards=guards, guard_params=guard_params)
        sql = (f"WITH {ctes}, alive AS ({alive_sql}) "
               f"SELECT (SELECT count(*) FROM taken_nonce), {counter_value}, alive.* FROM (SELECT 1) AS one "
               f"LEFT JOIN alive ON true")
        with connection.cursor() as cursor:
            cursor.execute(sql, [*params, *alive_params])
            fresh, counted, *row = cursor.fetchone()
        count = first.count_from(counted)
    else:
        row = [None]
        with transaction.atomic(), connection.cursor() as cursor:
            fresh, count = first.run_on_sqlite(cursor)
            if fresh and (count is None or count <= rate.allowed):
                alive_sql, alive_params = _alive_sql(**alive, guards="", guard_params=[])
                cursor.execute(alive_sql, alive_params)
                row = cursor.fetchone() or [None]
    if row[0] is None:
        return CheckinClaim(agent=None, nonce_fresh=bool(fresh), rate_count=count)
    *fields, due, pending = row
    return CheckinClaim(agent=_agent_from_row(fields), nonce_fresh=True, rate_count=count, due=bool(due),
                        pending=bool(pending))


def agent_alive(*, agent: Agent, agent_version: str | None, metrics: dict[str, Any], now: datetime) -> None:
    """Record that the agent is alive: one UPDATE, no event (check-ins are not audit news)."""
    changes: dict[str, Any] = {"last_seen_at": now, "metrics": metrics}
    if agent_version:
        changes["agent_version"] = agent_version
    Agent.objects.filter(pk=agent.pk).update(**changes)
    for field, value in changes.items():
        setattr(agent, field, value)


def checkin_handle(*, agent: Agent, agent_version: str | None, metrics: dict[str, Any],
                   heartbeat_reported: bool | None, capabilities: list[str] | None = None,
                   now: datetime | None = None, claim: CheckinClaim | None = None) -> CheckinReply:
    """The check-in, in order:

    1. the agent is alive (last seen, version, metrics);
    2. capabilities it reports (once per agent start) that differ from the known ones change its
       subsystems, before anything is scheduled;
    3. a heartbeat the agent no longer reports is cleared;
    4. this agent's due scans become commands (so an agent in heartbeat mode gets them at once);
    5. its oldest pending commands are claimed and handed over;
    6. the reply says how soon to come back: 5 s in heartbeat mode, else its poll interval.

    With a ``claim`` that recorded the agent alive (``checkin_claim``), step 1 is done, and steps 4
    and 5 read nothing unless the claim saw something due or pending.
    """
    now = now or timezone.now()
    recorded = claim is not None and claim.agent is not None
    if not recorded:
        agent_alive(agent=agent, agent_version=agent_version, metrics=metrics, now=now)
    if capabilities is not None:
        agent_capabilities_report(agent=agent, capabilities=capabilities)
    heartbeat_reconcile(agent=agent, reported_active=heartbeat_reported, now=now)
    scheduled = schedule_due_scans(now=now, agent_ids=[agent.pk]) if not recorded or claim.due else 0
    commands = commands_deliver(agent=agent, now=now) if not recorded or claim.pending or scheduled else []
    active = heartbeat_active(agent, now)
    return CheckinReply(
        commands=commands,
        config_version=agent.config_version,
        poll_interval_seconds=HEARTBEAT_POLL_SECONDS if active else agent.effective_poll_interval_seconds,
        heartbeat_active=active,
        heartbeat_until=agent.heartbeat_until if active else None,
        server_time=now,
    )
