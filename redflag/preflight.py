"""Before a service starts: are the database and the Redis servers the settings name really there?

Settings parsing (redflag/env.py) refuses a value that cannot be right; this checks what can only be
known by connecting: a PostgreSQL database that does not exist, a server that does not answer, a Redis
broker or cache that is down. Each problem is one line naming the setting and what to do, never a
traceback, and never the URL's password. ``run_portal``, ``qcluster``, ``migrate`` and ``runserver``
(through manage.py) and redflag/asgi.py run it before they start anything.
"""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import OperationalError

from redflag.env import StartupRefused

REDIS_TIMEOUT_SECONDS = 3


def _where(url: str) -> str:
    """host:port/path of a URL, without user or password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port}{parts.path}" if parts.port else f"{host}{parts.path}"


def database_problem() -> str | None:
    """Why the configured database cannot be used; None when a connection opens."""
    try:
        connection.ensure_connection()
    except OperationalError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        database = settings.DATABASES["default"]
        name = database.get("NAME")
        if connection.vendor == "postgresql":
            if "does not exist" in detail and f'database "{name}"' in detail:
                createdb = shlex.join(["createdb", "-h", database.get("HOST") or "localhost",
                                       "-p", str(database.get("PORT") or 5432),
                                       "-U", database.get("USER") or "postgres", name])
                return (f"DATABASE_URL names the PostgreSQL database {name!r}, which does not exist on "
                        f"{_where(settings.DATABASE_URL)}; create it ({createdb}) or fix the URL")
            return f"DATABASE_URL: cannot connect to PostgreSQL at {_where(settings.DATABASE_URL)}: {detail}"
        return f"cannot open the SQLite database {name}: {detail}"
    finally:
        connection.close()
    return None


def redis_problem(setting: str, url: str | None) -> str | None:
    """Why the Redis server at ``url`` (from ``setting``) does not answer a PING; None when it does or is unset."""
    if not url:
        return None
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                                      socket_timeout=REDIS_TIMEOUT_SECONDS)
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        return f"{setting}: Redis at {_where(url)} does not answer ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def services_problem() -> str | None:
    """The first reason the database or a configured Redis is unusable; None when all answer."""
    return (database_problem()
            or redis_problem("REDFLAG_Q_BROKER_URL", settings.Q_BROKER_URL)
            or redis_problem("REDFLAG_CACHE_URL", settings.CACHE_URL))


def schema_problem() -> str | None:
    """Why the database cannot serve a command yet: migrations not applied (a fresh data folder before
    the first `make run`, or an upgrade before `migrate`); None when the schema is current."""
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        connection.close()
    if not pending:
        return None
    return (f"the database is not set up yet ({len(pending)} migration(s) not applied): run `make run` once, "
            f"or `.venv/bin/python manage.py migrate`, then this command again")


def require_schema() -> None:
    """Stop a command that reads the tables with one line when they are missing or out of date."""
    problem = services_problem() or schema_problem()
    if problem:
        raise StartupRefused(problem)


def require_services() -> None:
    """Stop start-up with one line when the database or a configured Redis is unusable."""
    problem = services_problem()
    if problem:
        raise StartupRefused(problem)
