"""RedFlag settings, read from the environment (see README, "Configuration").

Every variable is parsed strictly by redflag.env: a bad value stops start-up
with a message naming it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import stat
from pathlib import Path

import dj_database_url

from redflag.env import (
    StartupRefused,
    env_bool,
    env_choice,
    env_database_url,
    env_int,
    env_list,
    env_redis_url,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

REDFLAG_ENV = env_choice("REDFLAG_ENV", "development", ("development", "production"))
PRODUCTION = REDFLAG_ENV == "production"

# --- data at rest -------------------------------------------------------------
# The data folder holds the SQLite database (sessions included), the keys and the release
# artifacts: nobody but the account RedFlag runs as may read it. Two layers:
# 1. The folder is 0700 (created so; an existing one with any group or other bit stops start-up).
# 2. Everything created in it is 0600 whatever umask the service manager, shell or ASGI server
#    handed us: this process (and the web server and workers it starts) runs with umask 077, which
#    covers what SQLite, Django and libraries create (the test database, lock files, compressed
#    static files). Where a file's mode must not depend on the umask we set it explicitly: the
#    SQLite database is created 0600 before SQLite opens it -- SQLite gives -wal the database
#    file's mode and -shm at most that mode -- and uploads get FILE_UPLOAD_PERMISSIONS below
#    (Django's default chmods them to 0644).
# The check runs here, at settings import, so every way in gets it: manage.py (any command,
# run_portal, qcluster), redflag/asgi.py and redflag/wsgi.py. It exits with one line, no traceback.
os.umask(0o077)
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700

DATA_DIR = Path(env_str("REDFLAG_DATA_DIR", str(BASE_DIR / "var")))


def _private_data_dir(path: Path) -> None:
    """Create the data folder 0700, or refuse one that other users can read, write or enter."""
    if not path.exists():
        try:
            path.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupRefused(f"cannot create the data directory {path}: {exc.strerror}")
    if not path.is_dir():
        raise StartupRefused(f"the data directory {path} is not a directory")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise StartupRefused(f"the data directory {path} is open to other users "
                         f"(mode {mode:04o}). Run: chmod 700 {shlex.quote(str(path))}")


def _private_sqlite_files(database: Path) -> None:
    """Create the SQLite database 0600 before SQLite does, and tighten files an older version left 0644.

    SQLite creates -wal with the database file's mode and -shm with at most that mode, so these
    stay 0600 even if something resets the umask after this point.
    """
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass
    except FileNotFoundError:  # its folder is missing: SQLite itself says so on first use
        return
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.geteuid():
            path.chmod(PRIVATE_FILE_MODE)


_private_data_dir(DATA_DIR)

# Prometheus: each web process counts API requests into its own files here and /metrics sums them
# (prometheus-client's multi-process mode). Read by the client library when it is first imported, so it is
# set here, before any app loads; every process started with these settings shares the folder.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(DATA_DIR / "metrics"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(mode=PRIVATE_DIRECTORY_MODE, exist_ok=True)


def _development_secret_key() -> str:
    """A per-install key kept in the data folder, so restarts keep sessions valid."""
    path = DATA_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(50)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key


if PRODUCTION:
    SECRET_KEY = env_str("REDFLAG_SECRET_KEY", required=True)
    if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
        raise StartupRefused("REDFLAG_SECRET_KEY must be at least 50 varied characters")
    ALLOWED_HOSTS = env_list("REDFLAG_ALLOWED_HOSTS", [])
    if not ALLOWED_HOSTS:
        raise StartupRefused("REDFLAG_ALLOWED_HOSTS must be set in production")
else:
    SECRET_KEY = env_str("REDFLAG_SECRET_KEY") or _development_secret_key()
    ALLOWED_HOSTS = env_list("REDFLAG_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])

DEBUG = env_bool("REDFLAG_DEBUG", not PRODUCTION)
CSRF_TRUSTED_ORIGINS = env_list("REDFLAG_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "redflag.apps.RedFlagAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_q",
    "redflag",
    "events_app",
    "tokens_app",
    "agents_app",
    "advisories_app",
    "policies_app",
    "notifications_app",
    "reports_app",
    "accounts_app",
]

MIDDLEWARE = [
    # First, so that it times and counts every API request, refused ones included.
    "reports_app.metrics.ApiMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "redflag.middleware.ApiGuardMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "redflag.urls"
WSGI_APPLICATION = "redflag.wsgi.application"
ASGI_APPLICATION = "redflag.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite (WAL) is the embedded default; DATABASE_URL switches to PostgreSQL.
DATABASE_URL = env_database_url("DATABASE_URL")
# A connection pool per web process (psycopg_pool): under ASGI each request runs in a thread of
# its own, so persistent connections would pile up. redflag/asgi.py switches it on; forking
# processes (django-q2) keep plain persistent connections. A request that waits longer than
# the pool timeout for a connection gets 503 with Retry-After: the server sheds load.
DB_POOL = env_bool("REDFLAG_DB_POOL", False)
if DATABASE_URL:
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0 if DB_POOL else 60,
                                                      conn_health_checks=True)}
    except ValueError:
        raise StartupRefused("DATABASE_URL is not a valid URL (characters such as @, : or / in the password "
                             "must be percent-encoded)") from None
    if DB_POOL and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # With health checks on, Django checks each pooled connection on checkout: after a
        # PostgreSQL restart no request gets a dead one.
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": env_int("REDFLAG_DB_POOL_SIZE", 8, minimum=1),
            "timeout": env_int("REDFLAG_DB_POOL_TIMEOUT", 5, minimum=1),
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "redflag.sqlite3",
            "OPTIONS": {
                # WAL lets readers proceed while one writer commits; IMMEDIATE
                # takes the write lock up front instead of failing mid-transaction.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            # A file (not :memory:) so threaded and live-server tests share it.
            "TEST": {"NAME": str(DATA_DIR / "test-redflag.sqlite3")},
        }
    }
    _private_sqlite_files(DATABASES["default"]["NAME"])
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Shared by every web process and worker (rate-limit counters live here): a database table by
# default, Redis with REDFLAG_CACHE_URL (for large fleets: no table scan on every write).
CACHE_URL = env_redis_url("REDFLAG_CACHE_URL")
if CACHE_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "redflag_cache",
            # One throttle history per agent and bucket: Django's default of 300 entries would
            # cull them (and rate limits with them) as soon as a fleet passes 300 agents.
            "OPTIONS": {"MAX_ENTRIES": 1_000_000},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(mode=PRIVATE_DIRECTORY_MODE, exist_ok=True)
# Release artifacts and collected static files are saved through FileSystemStorage, which chmods
# each file to FILE_UPLOAD_PERMISSIONS (Django's default, 0644, would override the umask).
FILE_UPLOAD_PERMISSIONS = PRIVATE_FILE_MODE
FILE_UPLOAD_DIRECTORY_PERMISSIONS = PRIVATE_DIRECTORY_MODE
# Development serves admin assets straight from the apps; production runs collectstatic.
WHITENOISE_USE_FINDERS = not PRODUCTION
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- security ---------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("REDFLAG_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("REDFLAG_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("REDFLAG_HSTS_PRELOAD", True)
    if env_bool("REDFLAG_BEHIND_TLS_PROXY", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- RedFlag ----------------------------------------------------------------
REDFLAG_SIGNING_KEY_FILE = Path(env_str("REDFLAG_SIGNING_KEY_FILE", str(DATA_DIR / "signing_key.pem")))
REDFLAG_RATE_LIMIT_ENABLED = env_bool("REDFLAG_RATE_LIMIT_ENABLED", True)
# Largest agent request body (bytes); scan reports are the biggest.
REDFLAG_MAX_BODY_BYTES = env_int("REDFLAG_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REDFLAG_MAX_BODY_BYTES  # Django's own body limit agrees with ours
REDFLAG_ACCESS_TOKEN_SECONDS = env_int("REDFLAG_ACCESS_TOKEN_SECONDS", 3600, minimum=60)
REDFLAG_REFRESH_TOKEN_DAYS = 90
REDFLAG_NONCE_SKEW_SECONDS = 300
# How long one live event stream stays open before the browser reconnects (resuming by Last-Event-ID).
# The bearer token a Prometheus scraper sends to /metrics; unset, /metrics does not exist (404).
REDFLAG_METRICS_TOKEN = env_str("REDFLAG_METRICS_TOKEN", "")
if REDFLAG_METRICS_TOKEN and len(REDFLAG_METRICS_TOKEN) < 24:
    raise StartupRefused("REDFLAG_METRICS_TOKEN must be at least 24 characters (make one with: "
                         "python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
REDFLAG_EVENT_STREAM_SECONDS = env_int("REDFLAG_EVENT_STREAM_SECONDS", 300, minimum=5)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["redflag.api.parsers.StrictJSONParser"],
    "NUM_PROXIES": env_int("REDFLAG_NUM_PROXIES", 0, minimum=0),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "redflag.api.errors.exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "redflag.api.negotiation.JSONFallbackNegotiation",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "RedFlag agent API",
    "DESCRIPTION": "The server-agent protocol (v1). Agents only ever connect out.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
}

Q_CLUSTER = {
    "name": "redflag",
    "orm": "default",
    "workers": env_int("REDFLAG_Q_WORKERS", 2, minimum=1),
    "timeout": 600,
    "retry": 720,
    "max_attempts": 3,
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 1000,
    "poll": 1,
}
# The queue lives in the database by default (no other service to run). REDFLAG_Q_BROKER_URL moves
# it to Redis, for many clusters or a busy queue; results and schedules stay in the database.
Q_BROKER_URL = env_redis_url("REDFLAG_Q_BROKER_URL")
if Q_BROKER_URL:
    del Q_CLUSTER["orm"]
    Q_CLUSTER["redis"] = Q_BROKER_URL

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"],
             "level": env_choice("REDFLAG_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))},
}
