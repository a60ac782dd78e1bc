"""Capabilities: a package manager is offered only when it works here, probed at every start and
reported with the first check-in after it.

DNF against the real dnf: a private ``--setopt=reposdir`` with an enabled, a disabled or no
repository (``repolist`` reads only the definitions, so no repository needs to exist on disk).
The run loop and ``run --once`` against the loopback stub server. No Django here: this file also
runs under Python 3.9.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from agent_client import config as config_module
from agent_client.outbox import Outbox
from agent_client.runner import Runner
from agent_client.scanners import build_scanners, capabilities
from agent_client.scanners.dnf import DnfScanner
from agent_client.scanners.docker import DockerScanner
from agent_client.transport import Client, RetryPolicy
from tests.agent.conftest import require_tools
from tests.agent.stub_server import TEST_MACHINE_ID, StubServer, enrolled_config
from tests.agent.test_cli import agent as run_agent
from tests.agent.test_cli import register

REPO = "[{repo_id}]\nname=RedFlag capability test\nbaseurl=file:///nonexistent/redflag\nenabled={enabled}\n"


def dnf_world(tmp_path: Path, *repositories: tuple[str, int]) -> DnfScanner:
    """A DnfScanner confined to a private root and repository directory holding ``repositories``."""
    require_tools("dnf")
    reposdir = tmp_path / "repos.d"
    reposdir.mkdir()
    for repo_id, enabled in repositories:
        (reposdir / f"{repo_id}.repo").write_text(REPO.format(repo_id=repo_id, enabled=enabled))
    (tmp_path / "dnf.conf").write_text("[main]\ngpgcheck=1\n")
    return DnfScanner([f"--config={tmp_path / 'dnf.conf'}", f"--installroot={tmp_path / 'root'}",
                       f"--setopt=reposdir={reposdir}", f"--setopt=cachedir={tmp_path / 'cache'}",
                       "--releasever=12", "--noplugins"])


def test_dnf_with_an_enabled_repository_is_offered(tmp_path):
    assert dnf_world(tmp_path, ("redflag-enabled", 1), ("redflag-disabled", 0)).is_available() is True


def test_dnf_whose_repositories_are_all_disabled_is_not_offered(tmp_path):
    assert dnf_world(tmp_path, ("redflag-disabled", 0)).is_available() is False


def test_dnf_with_no_repository_is_not_offered(tmp_path):
    """Debian's dnf package: /usr/bin/dnf exists, no repository does (the reported bug)."""
    assert dnf_world(tmp_path).is_available() is False


def test_dnf_local_plugin_repository_alone_is_not_offered(tmp_path):
    """dnf-plugins-core's "local" plugin lists "_dnf_local" (a copy of installed packages) on every host."""
    require_tools("dnf")
    if not Path("/etc/dnf/plugins/local.conf").exists():
        pytest.skip("dnf-plugins-core's local plugin is not installed")
    scanner = dnf_world(tmp_path)
    scanner.extra_options.remove("--noplugins")
    listed = subprocess.run(["dnf", *scanner.extra_options, "repolist", "--enabled"], capture_output=True,
                            text=True)
    assert "_dnf_local" in listed.stdout  # the plugin really adds it here
    assert scanner.is_available() is False


def test_capabilities_are_the_working_managers_plus_storage_and_system(tmp_path):
    scanners = {
        "dnf": dnf_world(tmp_path, ("redflag-enabled", 1)),
        "docker": DockerScanner(socket_path=str(tmp_path / "no-daemon.sock")),
    }
    assert capabilities(scanners) == ["dnf", "storage", "system"]
    # register --capabilities is the most the agent offers: what works, within it.
    assert capabilities(scanners, ["docker", "dnf", "system"]) == ["dnf", "system"]


# --- reported at start-up ---------------------------------------------------------------------------


def checkin_capabilities(stub: StubServer) -> list:
    return [call.body.get("capabilities") for call in stub.calls("checkin")]


def test_capabilities_travel_with_check_ins_until_one_succeeds_then_stop(stub, config_path):
    enrolled_config(stub, config_path)
    config = config_module.load(config_path)
    outbox = Outbox.beside(config_path)
    client = Client(config, machine_id_hash=TEST_MACHINE_ID, config_path=config_path,
                    retry=RetryPolicy(max_attempts=1), sleep=lambda seconds: None, on_event=outbox.add_event)
    probes = []

    def probe() -> list:
        probes.append(1)
        return ["system", "apt", "storage"]

    runner = Runner(config=config, config_path=config_path, client=client, outbox=outbox, rng=random.Random(1),
                    metrics=dict, probe_capabilities=probe)
    stub.script("checkin", 503, {"error": {"code": "unavailable", "message": "down"}})

    assert runner.run_once().checked_in is False  # probed at start; the check-in failed
    assert runner.cycle().checked_in is True
    assert runner.cycle().checked_in is True

    sorted_set = ["apt", "storage", "system"]
    assert checkin_capabilities(stub) == [sorted_set, sorted_set, None]
    assert len(probes) == 1


def test_run_once_reports_what_this_host_really_offers(stub, config_path):
    """The real CLI and the real probe: what reaches the server, at registration and again at the start of
    ``run``, is scanners.capabilities() on this host (on Debian with dnf installed: no dnf)."""
    assert register(config_path, stub.url).returncode == 0
    result = run_agent(config_path, "run", "--once")
    assert result.returncode == 0, result.stderr
    (reported,) = checkin_capabilities(stub)
    expected = capabilities(build_scanners(config_module.state_directory(config_path)))
    assert reported == sorted(expected)
    assert sorted(stub.calls("register")[0].body["capabilities"]) == reported
    assert {"storage", "system"} <= set(reported)
