"""Opening a fast-channel wait (GET /agents/{id}/wait) in one statement.

The wait's authentication is the check-in's lean one (agents_app/api/authentication.py,
``CheckinAuthentication``): the access token is verified in Python (signed, with an expiry), and one
statement checks that its credentials still hold, takes the request nonce, counts the request against
the agent's rate and answers the catch-up question "is a command already pending?". Revocation takes
effect at once (the statement checks the credential generation, the machine and ``revoked_at``;
nothing is cached). When it records nothing, the caller works out the refusal the general way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction

from agents_app.services.checkin import NonceAndCount, pending_probe_sql
from redflag.api.throttling import RateWindow


@dataclass(frozen=True)
class WaitClaim:
    """What the statement found: whether it took the nonce (so the credentials held), the rate count
    (None without rate limits), and whether a command is already pending for the agent."""

    nonce_fresh: bool
    rate_count: int | None
    pending: bool = False

    def within(self, rate: RateWindow | None) -> bool:
        return rate is None or self.rate_count is None or self.rate_count <= rate.allowed


def wait_claim(*, agent_id: str, generation: int, machine_id_hash: str, nonce: str, rate: RateWindow | None,
               now: datetime) -> WaitClaim:
    """If the token's credential generation is current, the machine matches and the agent is not
    revoked, take the request nonce; if it was new, count the request in ``rate``; read whether a
    command is pending. One statement and one commit on PostgreSQL; SQLite runs the same statements
    in one transaction. With the counters in Redis (or process memory) the count is taken first, in
    the cache, and a request over the rate takes nothing else."""
    first = NonceAndCount.prepare(agent_id=agent_id, generation=generation, machine_id_hash=machine_id_hash,
                                  nonce=nonce, rate=rate, now=now)
    if first.over_rate_in_cache:
        return WaitClaim(nonce_fresh=False, rate_count=first.cached_count)
    pending_sql, pending_params = pending_probe_sql(agent_id=agent_id, now=now)
    if connection.vendor == "postgresql":
        ctes, counter_value, params = first.postgresql_ctes()
        sql = f"WITH {ctes} SELECT (SELECT count(*) FROM taken_nonce), {counter_value}, {pending_sql}"
        with connection.cursor() as cursor:
            cursor.execute(sql, [*params, *pending_params])
            fresh, counted, pending = cursor.fetchone()
        return WaitClaim(nonce_fresh=bool(fresh), rate_count=first.count_from(counted),
                         pending=bool(pending) and bool(fresh))
    with transaction.atomic(), connection.cursor() as cursor:
        fresh, count = first.run_on_sqlite(cursor)
        if not fresh:
            return WaitClaim(nonce_fresh=False, rate_count=count)
        cursor.execute(f"SELECT {pending_sql}", pending_params)
        return WaitClaim(nonce_fresh=True, rate_count=count, pending=bool(cursor.fetchone()[0]))
