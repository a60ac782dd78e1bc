"""Test settings: the real settings, a private data folder and a fast password hasher."""

import os
import tempfile

os.environ.setdefault("REDFLAG_DATA_DIR", tempfile.mkdtemp(prefix="redflag-test-"))

from redflag.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Rate-limit counters in process memory, cleared between tests (tests/server/conftest.py).
# Production uses the shared database table from redflag.settings.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Most tests sign in with force_login and no second factor; the sign-in tests (tests/server/accounts_app/
# signin/, tests/browser/test_signin_browser.py) turn the requirement back on, as production has it.
REDFLAG_REQUIRE_MFA = False
