"""A newcomer's first hour at 1366×768 (issue 13): log in, create a registration token, copy the Python-only
agent command with its button, run that command (the real agent, downloaded from this server as its
redflag-agent.pyz release) to enrol, see the agent's updates, start an install, and read the history
filtered by the agent picker.

What the copied command needs the network for is left out, and said so where it happens: its virtual
environment and ``pip install`` of the three dependencies (this test's interpreter already holds them), and
the foreground ``run``, replaced by ``run --once`` with the scans switched off (a scan of this machine's real
package managers is the scanner tests' business, in private roots). The agent reports its updates through its
own client and credentials; it does not execute the install here, which would change this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from agent_client.config import load as load_agent_config
from agent_client.transport import Client, RetryPolicy
from agents_app.models import Agent, AgentSubsystem, Command, PackageUpdate
from agents_app.services.releases import release_build
from redflag.models import ServerSettings
from tests.browser.conftest import leave_and_wait_for_streams, log_in, screenshot
from tests.browser.test_layout_browser import columns_out_of_view, header_texts

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "first-hour-pw"
TOKEN_VARIABLE = "REDFLAG_REGISTRATION_TOKEN"
STREAM_SECONDS = 4  # the history page's stream ends (and EventSource reconnects) this soon
NEEDS_NETWORK = (" -m venv ", "/bin/pip\" install ")  # the copied lines this test cannot run offline


@pytest.fixture
def newcomer(django_user_model, live_server, settings):
    """A fresh server: one admin, its public URL (what the commands name), one agent release to download."""
    ServerSettings.forget()
    settings.REDFLAG_EVENT_STREAM_SECONDS = STREAM_SECONDS
    django_user_model.objects.create_superuser("admin", "admin@example.net", PASSWORD)
    row = ServerSettings.current()
    row.public_url = live_server.url
    row.heartbeat_before_operations = False
    row.save()
    ServerSettings.forget()
    release_build(version="0.1.23", actor="test")


def copied_text(page, button_target: str) -> str:
    page.click(f'button[data-copy="{button_target}"]')
    expect(page.locator(f'[data-copy="{button_target}"] + .rf-copy-status')).to_have_text("Copied")
    return page.evaluate("navigator.clipboard.readText()")


def runnable_lines(command: str, home: Path) -> str:
    """The copied command as this test runs it: the network lines out (their result, a Python with the three
    dependencies, stands in at the same path), the foreground ``run`` as one cycle."""
    directory = home / "redflag-agent"
    (directory / "venv" / "bin").mkdir(parents=True)
    stand_in = directory / "venv" / "bin" / "python"
    stand_in.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    stand_in.chmod(0o755)
    lines = [line for line in command.splitlines() if not any(part in line for part in NEEDS_NETWORK)]
    assert lines[-1].endswith(" run"), lines[-1]
    return "\n".join(lines[:-1])


def agent_environment(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDFLAG_"))}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
    return env


def agent_run_once(config_path: Path, home: Path) -> subprocess.CompletedProcess:
    agent = [str(config_path.parent / "venv" / "bin" / "python"), str(config_path.parent / "redflag-agent.pyz")]
    return subprocess.run([*agent, "--config", str(config_path), "run", "--once"], env=agent_environment(home),
                          capture_output=True, text=True, timeout=120)


def report_updates(config_path: Path, updates: list[dict]) -> None:
    """What the agent's next scan would send, through its own client and credentials."""
    config = load_agent_config(config_path)
    client = Client(config, machine_id_hash=config.machine_id_hash, config_path=config_path,
                    retry=RetryPolicy(max_attempts=1))
    client.request("POST", client.agent_path("reports/updates"),
                   {"report_id": "first-hour-0001", "package_type": "apt", "not_checked": [], "updates": updates})


def update(name: str, **extra) -> dict:
    return {"name": name, "current_version": "3.0.11-1~deb12u2", "available_version": "3.0.15-1~deb12u1",
            "severity": "unknown", "is_security": False, "repository": "bookworm-security/main", "size_bytes": 2048,
            "cve_ids": [], "kb_ids": [], "metadata": {"arch": "amd64"}, **extra}


def test_first_hour(laptop_page, live_server, newcomer, tmp_path, stream_requests):
    page = laptop_page
    log_in(page, "admin", PASSWORD)
    expect(page.locator("#rf-agents .rf-number")).to_have_text("0")
    screenshot(page, "first_hour_1_dashboard")

    # A registration token, from the navigation bar.
    page.click(".rf-nav >> text=Registration tokens")
    page.click(".object-tools a.addlink")
    page.fill("#id_label", "first machines")
    page.fill("#id_max_seats", "2")
    page.click("input[name=_save]")
    expect(page.locator("h1")).to_have_text("Registration token created")
    secret = page.locator("#registration-token").inner_text().strip()
    screenshot(page, "first_hour_2_token")

    # Every command has a copy button; the Python-only one names its config and keeps the token off argv.
    for target in ("registration-token", "install-linux", "install-python", "install-windows", "install-agent"):
        expect(page.locator(f'button[data-copy="{target}"]')).to_be_visible()
    command = copied_text(page, "install-python")
    assert command == page.locator("#install-python").inner_text()
    assert command.splitlines()[0] == f"export {TOKEN_VARIABLE}='{secret}'"
    assert secret not in "\n".join(command.splitlines()[1:]), "the token is in the environment only, never an argument"
    assert all("--config" in line for line in command.splitlines() if " register " in line or line.endswith(" run"))
    assert f"{live_server.url}/install/redflag-agent.pyz" in command
    for target in ("install-linux", "install-agent", "install-windows"):
        shown = page.locator(f"#{target}").inner_text()
        assert shown.count(secret) == 1, target
        assert shown.startswith((f"export {TOKEN_VARIABLE}='{secret}';", f"$env:{TOKEN_VARIABLE}='{secret}';")), target
    assert "--config /etc/redflag/agent/config.json register" in page.locator("#install-agent").inner_text()

    # Enrol: the copied command, run by bash, downloads this server's release and registers with its config.
    home = tmp_path / "home"
    enrolled = subprocess.run(["bash", "-euo", "pipefail", "-c", runnable_lines(command, home)],
                              env=agent_environment(home), capture_output=True, text=True, timeout=180)
    assert enrolled.returncode == 0, enrolled.stderr
    config_path = home / "redflag-agent" / "config.json"
    agent = Agent.objects.get(pk=json.loads(config_path.read_text())["agent_id"])
    AgentSubsystem.objects.filter(agent=agent).update(auto_run=False)  # no scan of this machine's packages
    checked_in = agent_run_once(config_path, home)
    assert checked_in.returncode == 0, checked_in.stderr

    page.click(".rf-nav >> text=Agents")
    row = page.locator("#result_list tbody tr", has_text=agent.hostname)
    expect(row.locator(".field-status_badge")).to_have_text("Online")
    assert columns_out_of_view(page) == []
    screenshot(page, "first_hour_3_agents")

    # Tags are a line of comma-separated words (stored as the list the model keeps), checked before saving.
    row.locator("th a").click()
    expect(page.locator("#id_tags")).to_have_value("")
    page.fill("#id_tags", "production, " + "x" * 65)
    page.click("input[name=_continue]")
    expect(page.locator(".errorlist")).to_contain_text("longer than 64 characters")
    page.fill("#id_tags", " production, eu-west,, production ")
    page.click("input[name=_continue]")
    expect(page.locator("#id_tags")).to_have_value("production, eu-west")
    agent.refresh_from_db()
    assert agent.tags == ["production", "eu-west"]
    screenshot(page, "first_hour_3b_agent")

    # Its updates, every column on screen; install the security one (the dry-run goes first).
    report_updates(config_path, [update("openssl", severity="important", is_security=True), update("curl")])
    page.click(".rf-nav >> text=Updates")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    assert columns_out_of_view(page) == []
    assert {"severity", "security", "status", "changed"} <= set(header_texts(page))
    screenshot(page, "first_hour_4_updates")
    rows.filter(has_text="openssl").locator("input.action-select").check()
    page.select_option("select[name=action]", "install")
    page.click("button[name=index]")
    expect(page.locator("ul.messagelist")).to_contain_text("Started 1 dry-run(s)")
    dry_run = Command.objects.get(agent=agent, command_type="dry_run_update")
    assert "openssl" in json.dumps(dry_run.params)
    assert PackageUpdate.objects.get(agent=agent, name="openssl").status != "pending"

    # The history, narrowed with the agent picker (a hostname search, not a pasted id).
    page.click("#rf-nav-history")
    page.click("label[for=id_agent] .select2-selection")
    page.fill(".select2-search__field", agent.hostname[:4])
    page.click(f".select2-results__option >> text={agent.hostname}")
    page.click("form.rf-filters button[type=submit]")
    page.wait_for_url(re.compile(rf"agent={agent.pk}"))
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    events = page.locator("#event-rows tr")
    expect(events.first).to_be_visible()
    hosts = set(page.locator("#event-rows tr td:nth-child(5)").all_inner_texts())
    assert hosts == {agent.hostname}, hosts
    expect(page.locator("#event-rows")).to_contain_text(f"Agent {agent.hostname} registered")
    assert columns_out_of_view(page) == []
    screenshot(page, "first_hour_5_history")
    leave_and_wait_for_streams(page, stream_requests, 3 * STREAM_SECONDS)


def test_copy_without_a_secure_context_selects_the_text(laptop_page, live_server, newcomer):
    """On plain http (no navigator.clipboard) the button selects the command and copies the selection."""
    page = laptop_page
    page.add_init_script("Object.defineProperty(navigator, 'clipboard', {value: undefined})")
    log_in(page, "admin", PASSWORD)
    page.goto("/admin/tokens_app/registrationtoken/add/")
    page.fill("#id_label", "plain http")
    page.click("input[name=_save]")
    page.click('button[data-copy="install-linux"]')
    expect(page.locator('[data-copy="install-linux"] + .rf-copy-status')).to_have_text(
        re.compile(r"^(Copied|Selected: press Ctrl\+C to copy)$"))
    assert page.evaluate("window.getSelection().toString()") == page.locator("#install-linux").inner_text()
