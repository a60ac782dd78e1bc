"""Settings come from the environment, parsed strictly; production passes check --deploy."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from redflag import settings as production  # the test settings replace CACHES with LocMem
from redflag.env import parse_duration
from tests.server.processes import ROOT

PRODUCTION_ENV = {
    "REDFLAG_ENV": "production",
    "REDFLAG_SECRET_KEY": "k3y-" + "x9Qa7Lm2Zp" * 6,
    "REDFLAG_ALLOWED_HOSTS": "redflag.example.net",
}


def manage(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if not key.startswith(("REDFLAG_", "DJANGO_"))}
    base.pop("DATABASE_URL", None)
    full_env = {**base, "REDFLAG_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "redflag.settings", **env}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_production_settings_pass_check_deploy(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_development_settings_do_not_pass_check_deploy(tmp_path):
    """The check is real: the development defaults (DEBUG on, insecure cookies) fail it."""
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={}, tmp_path=tmp_path)
    assert result.returncode != 0


@pytest.mark.parametrize("variable, value, message", [
    ("REDFLAG_DEBUG", "maybe", "REDFLAG_DEBUG must be true or false"),
    ("REDFLAG_RATE_LIMIT_ENABLED", "ture", "REDFLAG_RATE_LIMIT_ENABLED must be true or false"),
    ("REDFLAG_ACCESS_TOKEN_SECONDS", "1h", "REDFLAG_ACCESS_TOKEN_SECONDS must be a whole number"),
    ("REDFLAG_ACCESS_TOKEN_SECONDS", "5", "REDFLAG_ACCESS_TOKEN_SECONDS must be at least 60"),
    ("REDFLAG_ENV", "prod", "REDFLAG_ENV must be one of development, production"),
    ("DATABASE_URL", "mongodb://nope", "DATABASE_URL must be a postgresql://"),
    ("REDFLAG_PATCH_DEADLINES_DAYS", "urgent=3", "REDFLAG_PATCH_DEADLINES_DAYS must be comma-separated key=days "
                                                 "pairs with keys critical, important, moderate, low, unknown, "
                                                 "not 'urgent=3'"),
    ("REDFLAG_PATCH_DEADLINES_DAYS", "critical=soon", "REDFLAG_PATCH_DEADLINES_DAYS must be comma-separated"),
    ("REDFLAG_PATCH_DEADLINES_DAYS", "critical=0", "REDFLAG_PATCH_DEADLINES_DAYS: critical must be at least 1"),
])
def test_bad_value_stops_start_up_naming_the_variable(tmp_path, variable, value, message):
    result = manage("check", env={variable: value}, tmp_path=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert result.stderr.startswith(f"RedFlag will not start: {message}")


@pytest.mark.parametrize("missing", ["REDFLAG_SECRET_KEY", "REDFLAG_ALLOWED_HOSTS"])
def test_production_requires_secret_key_and_hosts(tmp_path, missing):
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != missing}
    result = manage("check", env=env, tmp_path=tmp_path)
    assert result.returncode != 0 and missing in result.stderr


def test_a_database_url_password_is_never_echoed(tmp_path):
    result = manage("check", env={"DATABASE_URL": "postgresql://redflag:s3cret@db:notaport/redflag"},
                    tmp_path=tmp_path)
    assert result.returncode == 1 and "s3cret" not in result.stderr
    assert result.stderr.strip() == ("RedFlag will not start: DATABASE_URL is not a valid URL (characters such as @, "
                                     ": or / in the password must be percent-encoded)")


def test_weak_production_secret_key_is_refused(tmp_path):
    result = manage("check", env={**PRODUCTION_ENV, "REDFLAG_SECRET_KEY": "short"}, tmp_path=tmp_path)
    assert result.returncode != 0 and "REDFLAG_SECRET_KEY must be at least 50" in result.stderr


def test_sqlite_lives_in_the_data_dir_in_wal_mode(tmp_path):
    result = manage("migrate", env={}, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr

    database = tmp_path / "redflag.sqlite3"
    assert database.exists()
    assert sqlite3.connect(database).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800)])
def test_parse_duration(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "1.5h", "-1h", "1w"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_q_broker_url_moves_the_queue_to_redis(tmp_path):
    show = ("from django.conf import settings;from django_q.brokers import get_broker;"
            "print(settings.Q_CLUSTER.get('orm'), settings.Q_CLUSTER.get('redis'), type(get_broker()).__name__)")
    default = manage("shell", "--no-imports", "-c", show, env={}, tmp_path=tmp_path)
    assert default.returncode == 0, default.stderr
    assert default.stdout.split() == ["default", "None", "ORM"]
    redis = manage("shell", "--no-imports", "-c", show, env={"REDFLAG_Q_BROKER_URL": "redis://127.0.0.1:6379/2"},
                   tmp_path=tmp_path)
    assert redis.returncode == 0, redis.stderr
    assert redis.stdout.split() == ["None", "redis://127.0.0.1:6379/2", "Redis"]


@pytest.mark.parametrize("value, named", [("amqp://guest:s3cret@mq", "not amqp://"),
                                          ("localhost:6379", "not one without a scheme")])
def test_q_broker_url_refuses_anything_but_redis(tmp_path, value, named):
    result = manage("check", env={"REDFLAG_Q_BROKER_URL": value}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert f"REDFLAG_Q_BROKER_URL must be a redis://, rediss:// or unix:// URL, {named}" in result.stderr
    assert "s3cret" not in result.stderr  # a password in the URL is never echoed


def test_cache_url_keeps_rate_limit_counters_in_redis(tmp_path):
    """REDFLAG_CACHE_URL: the throttle's counters go to the real Redis on this machine, not the table."""
    database = f"redis://127.0.0.1:6379/{secrets.randbelow(8) + 8}"
    client = redis.Redis.from_url(database)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    client.flushdb()
    probe = ("from django.core.cache import cache;from django.conf import settings;"
             "cache.set('throttle_checkin_probe', [1.0], 60);"
             "print(settings.CACHES['default']['BACKEND'].rsplit('.', 1)[1], cache.get('throttle_checkin_probe'))")
    result = manage("shell", "--no-imports", "-c", probe, env={"REDFLAG_CACHE_URL": database}, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["RedisCache", "[1.0]"]
    assert [key.decode() for key in client.keys("*")] == [":1:throttle_checkin_probe"]
    client.flushdb()


def test_default_cache_keeps_a_throttle_history_per_agent_of_a_large_fleet():
    assert production.CACHES["default"]["BACKEND"].endswith("DatabaseCache")
    assert production.CACHES["default"]["OPTIONS"]["MAX_ENTRIES"] >= 100_000


def test_cache_url_refuses_anything_but_redis(tmp_path):
    result = manage("check", env={"REDFLAG_CACHE_URL": "memcached://user:s3cret@cache:11211"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "REDFLAG_CACHE_URL must be a redis://, rediss:// or unix:// URL, not memcached://" in result.stderr
    assert "s3cret" not in result.stderr
