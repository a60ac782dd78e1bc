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
    env_int_map,
    env_json_object,
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
    # Sign-in (accounts_app/signin): allauth's log-in flow, second factors and OpenID Connect.
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    # allauth's security-key list ({% load humanize %}) answered 500 without it (found by the roles URL walk).
    "django.contrib.humanize",
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
    "allauth.account.middleware.AccountMiddleware",
    # A person who can change anything and has no second factor is sent to set one up (REDFLAG_REQUIRE_MFA).
    "accounts_app.signin.middleware.SecondFactorRequiredMiddleware",
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

# Who holds which permission: Django's own (superusers, groups such as Auditors), then the role grants
# (accounts_app/roles.py). Where those roles apply (which agents) is REDFLAG_ACCESS_POLICY's answer.
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "accounts_app.backends.RoleBackend",
    # allauth's log-in (username + password, then the second factor; OpenID Connect).
    "allauth.account.auth_backends.AuthenticationBackend",
]
REDFLAG_ACCESS_POLICY = "accounts_app.scoping.GrantAccessPolicy"

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
# Compliance (reports_app.compliance): how many days a security update of each severity may stay outstanding
# before its machine counts as non-compliant, e.g. REDFLAG_PATCH_DEADLINES_DAYS="critical=3,important=10".
REDFLAG_PATCH_DEADLINES_DAYS = env_int_map(
    "REDFLAG_PATCH_DEADLINES_DAYS", {"critical": 7, "important": 14, "moderate": 30, "low": 90, "unknown": 30})
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
# How long GET /api/v1/agents/{id}/wait (the fast channel) holds one request before the agent opens
# the next; a blank line every 20 s keeps proxies from timing it out in between (README, fast channel).
REDFLAG_WAKE_HOLD_SECONDS = env_int("REDFLAG_WAKE_HOLD_SECONDS", 600, minimum=5)

# --- sign-in (accounts_app/signin; README "Signing in") ---------------------------------------------
# A second factor (TOTP, security key/passkey) is required of everyone who can change anything: a
# superuser, or staff holding any add/change/delete permission. On unless switched off.
REDFLAG_REQUIRE_MFA = env_bool("REDFLAG_REQUIRE_MFA", True)
# Single sign-on through one OpenID Connect provider: all three set, or none.
REDFLAG_OIDC_ISSUER = env_str("REDFLAG_OIDC_ISSUER")
REDFLAG_OIDC_CLIENT_ID = env_str("REDFLAG_OIDC_CLIENT_ID")
REDFLAG_OIDC_CLIENT_SECRET = env_str("REDFLAG_OIDC_CLIENT_SECRET")
_oidc_settings = {"REDFLAG_OIDC_ISSUER": REDFLAG_OIDC_ISSUER, "REDFLAG_OIDC_CLIENT_ID": REDFLAG_OIDC_CLIENT_ID,
                  "REDFLAG_OIDC_CLIENT_SECRET": REDFLAG_OIDC_CLIENT_SECRET}
if any(_oidc_settings.values()) and not all(_oidc_settings.values()):
    raise StartupRefused("single sign-on needs all of REDFLAG_OIDC_ISSUER, REDFLAG_OIDC_CLIENT_ID and "
                         "REDFLAG_OIDC_CLIENT_SECRET; missing: "
                         + ", ".join(name for name, value in _oidc_settings.items() if not value))
if REDFLAG_OIDC_ISSUER and not REDFLAG_OIDC_ISSUER.startswith(("https://", "http://127.0.0.1", "http://localhost")):
    raise StartupRefused("REDFLAG_OIDC_ISSUER must be an https:// URL (plain http only on this machine)")
REDFLAG_OIDC_NAME = env_str("REDFLAG_OIDC_NAME", "single sign-on")
REDFLAG_OIDC_SCOPES = (env_str("REDFLAG_OIDC_SCOPES", "openid profile email") or "").split()
# The claim whose values pick roles, and what each value grants: {"<value>": {"role": "approver",
# "groups": ["web"]}} (no groups: the whole fleet). Checked against the roles at start-up
# (accounts_app/signin/checks.py) and applied at every single sign-on.
REDFLAG_OIDC_ROLE_CLAIM = env_str("REDFLAG_OIDC_ROLE_CLAIM", "groups")
REDFLAG_OIDC_ROLE_MAP = env_json_object("REDFLAG_OIDC_ROLE_MAP")
# A second factor done at the provider counts (its "amr" claim names one: mfa, otp, hwk, swk...).
REDFLAG_OIDC_TRUST_PROVIDER_MFA = env_bool("REDFLAG_OIDC_TRUST_PROVIDER_MFA", False)
# SSO only: password sign-in is refused except for break-glass accounts (superusers and these names).
REDFLAG_SSO_ONLY = env_bool("REDFLAG_SSO_ONLY", False)
REDFLAG_BREAK_GLASS_USERS = env_list("REDFLAG_BREAK_GLASS_USERS", [])
if REDFLAG_SSO_ONLY and not REDFLAG_OIDC_ISSUER:
    raise StartupRefused("REDFLAG_SSO_ONLY needs single sign-on configured (REDFLAG_OIDC_ISSUER and the rest)")

LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"
ACCOUNT_ADAPTER = "accounts_app.signin.adapters.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "accounts_app.signin.adapters.SocialAccountAdapter"
ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_SIGNUP_FIELDS = ["username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"  # accounts are made by admins or by single sign-on, never by sign-up
ACCOUNT_SESSION_REMEMBER = False  # a session ends with the browser
ACCOUNT_LOGOUT_REDIRECT_URL = "admin:login"
# A signed-in person sent to the sign-in page (a page their roles do not open) sees it, not a redirect loop.
ACCOUNT_AUTHENTICATED_LOGIN_REDIRECTS = False
# Wrong passwords count per address and per account: five per account in five minutes lock that
# account's password sign-in for the rest of the window (recorded as user_lockout).
REDFLAG_LOCKOUT_SECONDS = 300
ACCOUNT_RATE_LIMITS = {"login_failed": f"10/m/ip,5/{REDFLAG_LOCKOUT_SECONDS}s/key"}
MFA_SUPPORTED_TYPES = ["totp", "webauthn", "recovery_codes"]
MFA_TOTP_ISSUER = "RedFlag"
MFA_FORMS = {"authenticate": "accounts_app.signin.forms.RecordedAuthenticateForm"}  # lock-outs recorded
# Passkeys are second factors here, not a way around the password (and around SSO only).
MFA_PASSKEY_LOGIN_ENABLED = False
# Browsers allow WebAuthn on http://localhost; a deployment serves https (SECURE_SSL_REDIRECT).
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = not PRODUCTION
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False  # an address at the provider never takes over a local account
SOCIALACCOUNT_STORE_TOKENS = False
SOCIALACCOUNT_PROVIDERS = {"openid_connect": {"OAUTH_PKCE_ENABLED": True, "SCOPE": REDFLAG_OIDC_SCOPES, "APPS": [
    {"provider_id": "sso", "name": REDFLAG_OIDC_NAME, "client_id": REDFLAG_OIDC_CLIENT_ID,
     "secret": REDFLAG_OIDC_CLIENT_SECRET, "settings": {"server_url": REDFLAG_OIDC_ISSUER}},
] if REDFLAG_OIDC_ISSUER else []}}

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
