"""The floor for a check-in: a bare ASGI handler that runs the check-in's own SQL and nothing else.

    uvicorn bare_checkin:app --app-dir bench --workers 2   (DATABASE_URL in the environment)

No Django, no DRF, no token check: it reads the path's agent id and the nonce header, parses the
JSON body, and in one transaction sends the statements a common check-in sends (nothing due,
nothing pending): the agent's UPDATE … RETURNING (alive, credentials, "anything due or pending?")
and the request nonce with its rate-limit counter (one statement). Its cost per request is what
Python + psycopg + PostgreSQL cannot go below for this work; ``bench/checkin.py`` reports the real
check-in as a ratio to it.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

POOL: AsyncConnectionPool | None = None

ALIVE = """
UPDATE agents_app_agent SET last_seen_at = %(now)s, metrics = %(metrics)s, agent_version = %(version)s
WHERE id = %(agent)s AND revoked_at IS NULL
RETURNING config_version, poll_interval_seconds, heartbeat_until,
  EXISTS (SELECT 1 FROM agents_app_agentsubsystem s WHERE s.agent_id = agents_app_agent.id AND s.enabled
          AND s.auto_run AND (s.next_run_at IS NULL OR s.next_run_at <= %(now)s)),
  EXISTS (SELECT 1 FROM agents_app_command c WHERE c.agent_id = agents_app_agent.id AND c.status = 'pending'
          AND c.expires_at > %(now)s)
"""
NONCE_AND_COUNT = """
WITH nonce AS (
  INSERT INTO redflag_requestnonce (nonce, agent_id, created_at) VALUES (%(nonce)s, %(agent)s, %(now)s)
  ON CONFLICT (nonce) DO NOTHING RETURNING 1),
counter AS (
  INSERT INTO redflag_cache (cache_key, value, expires) VALUES (%(key)s, '1', %(expires)s)
  ON CONFLICT (cache_key) DO UPDATE SET value = (redflag_cache.value::bigint + 1)::text RETURNING value)
SELECT (SELECT count(*) FROM nonce), (SELECT value FROM counter)
"""


async def _pool() -> AsyncConnectionPool:
    global POOL
    if POOL is None:
        POOL = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=8, open=False)
        await POOL.open()
    return POOL


async def _body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if POOL is not None:
                    await POOL.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/api/v1/health":
        await _send_json(send, 200, {"status": "ok"})
        return
    parts = scope["path"].strip("/").split("/")  # api v1 agents <id> checkin
    headers = dict(scope["headers"])
    data = json.loads(await _body(receive) or b"{}")
    now = datetime.now(timezone.utc)
    agent = parts[3]
    window = int(time.time() // 60)
    pool = await _pool()
    async with pool.connection() as conn:
        async with conn.transaction():
            row = await (await conn.execute(ALIVE, {"now": now, "metrics": Jsonb(data.get("metrics", {})),
                                                    "version": data.get("agent_version", ""), "agent": agent})
                         ).fetchone()
            fresh, _count = await (await conn.execute(NONCE_AND_COUNT, {
                "nonce": headers[b"x-request-nonce"].decode(), "agent": agent, "now": now,
                "key": f"bare:checkin:{agent}:{window}", "expires": now})).fetchone()
    if row is None or not fresh:
        await _send_json(send, 409, {"error": "refused"})
        return
    await _send_json(send, 200, {"commands": [], "config_version": row[0], "poll_interval_seconds": row[1] or 300,
                                 "heartbeat": {"active": False, "until": None}, "server_time": now.isoformat()})
