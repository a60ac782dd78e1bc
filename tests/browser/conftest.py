"""Browser fixtures: Debian's Chromium driven by Playwright's sync API, and a real django-q2 cluster.

Skipped when /usr/bin/chromium is missing; CI (REDFLAG_REQUIRE_SYSTEM_TOOLS=1) fails instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from playwright.sync_api import sync_playwright

from tests.agent.conftest import require_tools

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the session.

    Playwright's sync API keeps an asyncio event loop running in this thread,
    which makes Django refuse ORM calls from the test body ("async unsafe");
    the test's ORM calls are ordinary synchronous ones, so allow them while
    Playwright is alive, and only then.
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


@pytest.fixture
def page(chromium, live_server):
    context = chromium.new_context(base_url=live_server.url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


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
