"""A real OpenID Connect provider for the single sign-on tests: panva's ``oidc-provider`` (npm), run by node.

Why this one: it is the provider library behind many production identity services, OpenID Certified for
the Basic, Config and other profiles, released often and kept by one maintainer for years. The PyPI
alternatives are either whole Django projects (django-oidc-provider) or mocks. It runs as its own
process (``server.mjs``) on 127.0.0.1 and RedFlag talks to it over real HTTP: discovery, the authorization
redirect, its login and consent pages, the code exchange, the signed ID token (checked against its JWKS)
and userinfo.

The exact version is pinned by ``package-lock.json``. It is installed with ``npm ci`` into a cache folder
(``$REDFLAG_TEST_CACHE`` or ``~/.cache/redflag-tests``) once, keyed by the hash of the files here, under
a lock so that parallel test runs install it once. Needs node (20+) and npm: missing, the tests are
skipped, or fail in CI (REDFLAG_REQUIRE_SYSTEM_TOOLS=1).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import requests

from tests.agent.conftest import require_tools
from tests.server.processes import free_port, wait_until

HERE = Path(__file__).resolve().parent
FILES = ("package.json", "package-lock.json", "server.mjs")


def cache_root() -> Path:
    return Path(os.environ.get("REDFLAG_TEST_CACHE") or Path.home() / ".cache" / "redflag-tests")


def installed_provider() -> Path:
    """The folder holding server.mjs and its node_modules, installed if missing."""
    require_tools("node", "npm")
    digest = hashlib.sha256(b"".join((HERE / name).read_bytes() for name in FILES)).hexdigest()[:16]
    folder = cache_root() / f"oidc-provider-{digest}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / "oidc-provider.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be installing the same version
        if not (folder / "node_modules" / "oidc-provider" / "package.json").exists():
            staging = folder.with_name(folder.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for name in FILES:
                shutil.copy(HERE / name, staging / name)
            result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=staging,
                                    capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"npm ci of oidc-provider failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
    return folder


class OidcProvider:
    """One provider process: ``issuer``, ``client_id``, ``client_secret``; ``stop()`` kills its process group."""

    def __init__(self, *, redirect_uris: list[str], accounts: dict[str, dict], log_path: Path):
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client_id = "redflag-test"
        self.client_secret = hashlib.sha256(os.urandom(32)).hexdigest()
        env = {**os.environ, "OIDC_PORT": str(self.port), "OIDC_ACCOUNTS": json.dumps(accounts),
               "OIDC_CLIENT": json.dumps({"client_id": self.client_id, "client_secret": self.client_secret,
                                          "redirect_uris": redirect_uris})}
        self.log_path = log_path
        folder = installed_provider()
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(["node", "server.mjs"], cwd=folder, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._answers, 30, f"the OIDC provider on {self.issuer} answers")
        except AssertionError:
            self.stop()
            raise AssertionError(f"the OIDC provider did not start:\n{self.output()}") from None

    def _answers(self) -> bool:
        assert self.process.poll() is None, f"the OIDC provider exited:\n{self.output()}"
        try:
            return requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
