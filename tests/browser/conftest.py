"""Browser fixtures: Debian's Chromium driven by Playwright's sync API, and a real django-q2 cluster.

Skipped when /usr/bin/chromium is missing; CI (REDFLAG_REQUIRE_SYSTEM_TOOLS=1) fails instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.signals import request_finished, request_started
from django.db import connection
from django.urls import reverse
from playwright.sync_api import sync_playwright

from tests.agent.conftest import require_tools

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The smallest screen the admin is built for (issue 13): every list must fit it without horizontal scrolling.
LAPTOP = {"width": 1366, "height": 768}
# What the browser saw, kept as test artifacts (git-ignored); REDFLAG_BROWSER_SCREENSHOTS moves them.
SCREENSHOT_DIR = Path(os.environ.get("REDFLAG_BROWSER_SCREENSHOTS") or ROOT / "artifacts" / "browser")


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium per test module.

    Playwright's sync API keeps an asyncio event loop running in this thread,
    which makes Django refuse ORM calls from the test body ("async unsafe");
    the test's ORM calls are ordinary synchronous ones, so allow them while
    Playwright is alive, and only then. Per module, not per session: the
    tests after the browser tests (an asyncio.run() of an ASGI endpoint,
    Django's async-safety checks) must run with no loop left in this thread.
    """
    require_tools(CHROMIUM)
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def new_page(chromium, live_server, viewport: dict):
    context = chromium.new_context(base_url=live_server.url, viewport=viewport)
    context.set_default_timeout(15_000)
    return context.new_page()


@pytest.fixture
def page(chromium, live_server):
    page = new_page(chromium, live_server, {"width": 1400, "height": 1000})
    yield page
    page.context.close()


@pytest.fixture
def laptop_page(chromium, live_server):
    """A page at 1366×768 that may use the clipboard (the copy buttons are tested through it)."""
    page = new_page(chromium, live_server, LAPTOP)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    yield page
    page.context.close()


def screenshot(page, name: str) -> None:
    """Save what the browser saw under SCREENSHOT_DIR (a test artifact, never committed)."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"{name}.png"), full_page=True)


def log_in(page, username: str, password: str, next_url: str = "/admin/") -> None:
    page.goto(f"/admin/login/?next={next_url}")
    page.fill("#id_login", username)
    page.fill("#id_password", password)
    page.click("[type=submit]")
    page.wait_for_url(f"**{next_url}")


@pytest.fixture
def qcluster(live_server, tmp_path):
    """A real `manage.py qcluster` on the live server's test database.

    The admin's bulk actions enqueue their task on commit into django-q2's ORM
    broker; this cluster picks it up exactly as production does, so the test
    exercises enqueue → worker → progress rows → the auto-refreshing page.
    Stopped (SIGTERM to its own process group, then SIGKILL) before the test
    database is flushed.
    """
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(DJANGO_SETTINGS_MODULE="tests.browser.qcluster_settings", PYTHONUNBUFFERED="1",
               REDFLAG_DATA_DIR=str(settings.DATA_DIR),  # the same signing key file as the live server
               REDFLAG_QCLUSTER_DATABASE_NAME=str(connection.settings_dict["NAME"]))
    log_path = tmp_path / "qcluster.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        for stop_signal, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, stop_signal)  # the cluster and its worker processes
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=grace)  # returns as soon as the cluster has exited
            except subprocess.TimeoutExpired:
                pass  # still running: on to the next, harder signal
        process.wait(timeout=5)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # any worker of this cluster that outlived it
        except ProcessLookupError:
            pass
        output = log_path.read_text(errors="replace")
        if "Traceback" in output:
            print(output[-5000:])


def wait_until(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition()`` until it returns something truthy (returned); fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)  # the polling interval, not a wait for the condition


class StreamRequests:
    """The event-stream requests of the live server (threads of this process): how many started, and the
    threads serving one right now.

    Django sends request_started and, when the server closes the response (its body ended or the client
    went away), request_finished, both from the thread that serves the request.
    """

    def __init__(self):
        self.path = reverse("events:stream")
        self.lock = threading.Lock()
        self.started = 0
        self.serving: set[int] = set()

    def on_started(self, sender, environ, **kwargs):
        if environ.get("PATH_INFO") == self.path:
            with self.lock:
                self.started += 1
                self.serving.add(threading.get_ident())

    def on_finished(self, sender, **kwargs):
        with self.lock:
            self.serving.discard(threading.get_ident())


@pytest.fixture
def stream_requests():
    requests = StreamRequests()
    request_started.connect(requests.on_started, dispatch_uid="browser-stream-requests")
    request_finished.connect(requests.on_finished, dispatch_uid="browser-stream-requests")
    try:
        yield requests
    finally:
        request_started.disconnect(dispatch_uid="browser-stream-requests")
        request_finished.disconnect(dispatch_uid="browser-stream-requests")


def leave_and_wait_for_streams(page, stream_requests, timeout: float) -> None:
    """Leave the page; every event stream it opened (a live-server thread) ends before the test database goes."""
    page.goto("about:blank")
    wait_until(lambda: not stream_requests.serving, timeout, "the live server's event streams end")
