"""A Docker update end to end: live server, the real agent as a subprocess, a real engine and registry.

The engine is podman serving the Docker Engine API, the registry Debian's
docker-registry (tests/agent/test_docker_engine.py sets both up). The agent
finds the engine through ``DOCKER_HOST``, as the Docker CLI does, and talks
plain HTTP to the loopback registry, as the Docker daemon does. The server
approves the update; the agent's dry-run names the container it would
recreate, the install recreates it on the new image, and the package is
installed on the server with the image, digests and container in the result.
"""

from __future__ import annotations

import pytest

from agents_app.models import Command, PackageUpdate
from agents_app.services.commands import command_create
from agents_app.services.package_updates import updates_install
from events_app.models import SystemEvent
from tests.agent.test_docker_engine import engine_pull, running_lab
from tests.server.end_to_end.test_agent import enroll_for_commands, run_agent


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("podman")) as started:
        yield started


def run_cycles(config_path, cycles: int) -> None:
    """``run --once`` a few times: each answer may make the server queue the next step."""
    for _ in range(cycles):
        ran = run_agent(config_path, "run", "--once", timeout=300)
        assert ran.returncode == 0, ran.stderr


def test_an_approved_docker_update_recreates_the_container_on_the_new_image(lab, live_server, tmp_path,
                                                                           transactional_db, monkeypatch):
    image = f"{lab.host}/e2e/app:1"
    lab.publish("e2e/app:1", "v1")
    engine_pull(lab, image)
    old_container = lab.podman("run", "-d", "--name", "e2e-web", "-e", "KEEP=yes", image)
    new_image = lab.publish("e2e/app:1", "v2")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{lab.podman.socket_path}")
    agent, config_path = enroll_for_commands(live_server.url, tmp_path, "docker")

    command_create(agent=agent, command_type="scan_docker", params={"package_type": "docker"}, source="api")
    run_cycles(config_path, 1)
    update = PackageUpdate.objects.get(agent=agent, package_type="docker", name=image)
    assert update.available_version == "1@" + lab.manifest_digest("e2e/app", "1")[7:19]

    updates_install(updates=PackageUpdate.objects.filter(pk=update.pk), actor="test")
    run_cycles(config_path, 2)  # the dry-run, then the install the server queues after it

    update.refresh_from_db()
    assert update.status == "installed"
    dry_run = Command.objects.get(agent=agent, command_type="dry_run_update")
    assert "would recreate e2e-web on the new image" in dry_run.output
    install = Command.objects.get(agent=agent, command_type="install_updates")
    assert install.status == "succeeded", install.output
    entry = install.result["packages"][0]
    assert (entry["name"], entry["containers"], entry["image_id"]) == (image, "e2e-web", new_image)
    assert entry["digest"] == lab.manifest_digest("e2e/app", "1") and entry["old_digest"]
    after = lab.podman.inspect("e2e-web")
    assert after["Id"] != old_container and after["Image"] == new_image[len("sha256:"):]
    assert "KEEP=yes" in after["Config"]["Env"]
    installed = SystemEvent.objects.get(agent=agent, event_type="agent_install")
    assert installed.metadata["packages"][0]["name"] == image
    # The event names the image, both digests and the container recreated.
    (reported,) = installed.metadata["reported"]
    assert (reported["name"], reported["containers"], reported["digest"]) == (
        image, "e2e-web", lab.manifest_digest("e2e/app", "1"))
    assert reported["old_digest"] == entry["old_digest"]
