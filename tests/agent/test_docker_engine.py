"""DockerScanner against a real container engine and a real registry.

The engine is Debian's podman 4.3 (runtime runc) serving the Docker Engine API
on a private Unix socket (``podman system service``), with its own storage,
run, network-config and registries-config under a temporary directory: the
machine's containers are never touched. The registry is Debian's
``docker-registry`` (tests/agent/test_docker.py). Images are a busybox root
filesystem imported into the engine, built on with ``podman build`` and pushed
to the registry; the engine pulls them from there, as the agent asks it to.

Podman schedules health checks with systemd timers, and there is no systemd
here: :class:`HealthScheduler` does what such a timer does, ``podman
healthcheck run <container>`` for each running container with a health check,
every half second. The result of each check is the engine's own.

What this engine cannot show stays against the recorded Engine responses in
test_docker.py: ``docker pull`` recording only the index digest of a
multi-arch image (podman records the platform manifest digest as well), a
built image without any RepoDigest (podman records one), a pull stream that
fails mid-way (no space left on device), and images of the scripted loopback
registries (429, token auth) that cannot be pulled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from agent_client.scanners.docker import MANIFEST_ACCEPT, DockerScanner
from agent_client.scanners.docker_recreate import PREVIOUS_SUFFIX
from tests.agent.conftest import require_root, require_tools
from tests.agent.test_docker import start_registry

BUSYBOX_COMMANDS = ("sh", "sleep", "echo", "true", "false", "cat", "test", "touch", "ls")
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_config_dir = "{network_dir}"
"""
# A container that exits at once on SIGTERM (sh as PID 1 ignores it; a stop would take 10 s).
SERVE = '["/bin/sh", "-c", "trap \\"exit 0\\" TERM; echo started $VERSION; while true; do sleep 0.2; done"]'


class Podman:
    """The podman command line and Engine API socket of one private engine."""

    def __init__(self, root: Path, registry_host: str) -> None:
        self.root = root
        self.socket_path = f"/tmp/rf-podman-{uuid.uuid4().hex[:12]}.sock"
        (root / "networks").mkdir()
        (root / "containers.conf").write_text(CONTAINERS_CONF.format(network_dir=root / "networks"))
        (root / "registries.conf").write_text(f'[[registry]]\nlocation = "{registry_host}"\ninsecure = true\n')
        self.env = dict(os.environ, CONTAINERS_CONF=str(root / "containers.conf"),
                        CONTAINERS_REGISTRIES_CONF=str(root / "registries.conf"))
        self.prefix = ["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
                       "--storage-driver", "vfs", "--tmpdir", str(root / "tmp")]
        self.service = None

    def __call__(self, *args: str, stdin: bytes = b"", check: bool = True) -> str:
        completed = subprocess.run(self.prefix + list(args), input=stdin, capture_output=True, env=self.env,
                                   timeout=300)
        if check and completed.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed: {completed.stderr.decode()}")
        return completed.stdout.decode().strip()

    def start_service(self) -> None:
        log = open(self.root / "service.log", "wb")
        self.service = subprocess.Popen(self.prefix + ["system", "service", "--time=0", f"unix://{self.socket_path}"],
                                        stdout=log, stderr=subprocess.STDOUT, env=self.env)
        scanner = DockerScanner(socket_path=self.socket_path)
        for _ in range(100):
            if os.path.exists(self.socket_path) and scanner.engine.ping():
                return
            if self.service.poll() is not None:
                break
            threading.Event().wait(0.1)
        raise AssertionError("podman system service did not start: " + (self.root / "service.log").read_text())

    def stop(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False)
        if self.service is not None:
            self.service.terminate()
            try:
                self.service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def inspect(self, container: str) -> dict:
        return json.loads(self("container", "inspect", container))[0]

    def image_id(self, image: str) -> str:
        return self("image", "inspect", "--format", "{{.Id}}", image)


class HealthScheduler:
    """What podman's systemd timers do: run each running container's health check, every half second."""

    def __init__(self, podman: Podman) -> None:
        self.podman = podman
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(0.5):
            listed = self.podman("ps", "-q", "--filter", "health=starting", "--filter", "health=healthy",
                                 "--filter", "health=unhealthy", check=False)
            for container_id in listed.split():
                self.podman("healthcheck", "run", container_id, check=False)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


class Lab:
    """One engine, one registry, and the helpers that build, push and run test images."""

    def __init__(self, podman: Podman, registry) -> None:
        self.podman = podman
        self.registry = registry
        self.host = registry.host

    def build(self, local_tag: str, *lines: str) -> str:
        """``podman build`` of a Containerfile FROM the busybox image; returns the image ID."""
        containerfile = "FROM localhost/rf-busybox\nSTOPSIGNAL SIGTERM\n" + "".join(f"{line}\n" for line in lines)
        context = self.podman.root / "context"
        context.mkdir(exist_ok=True)
        self.podman("build", "--format", "docker", "--quiet", "-t", local_tag, "-f", "-", str(context),
                    stdin=containerfile.encode())
        return self.podman.image_id(local_tag)

    def push(self, local_tag: str, remote: str) -> None:
        self.podman("push", "--tls-verify=false", "--format", "v2s2", local_tag, f"docker://{self.host}/{remote}")

    def publish(self, remote: str, version: str, *lines: str) -> str:
        """Build version ``version`` of an image serving forever and push it as ``remote``; its image ID."""
        local_tag = f"localhost/build-{remote.replace(':', '-').replace('/', '-')}:{version}"
        image_id = self.build(local_tag, f"LABEL origin={remote}", f"ENV VERSION={version}", f"CMD {SERVE}", *lines)
        self.push(local_tag, remote)
        return "sha256:" + image_id

    def scanner(self, **options) -> DockerScanner:
        options.setdefault("settle_seconds", 1.5)
        options.setdefault("health_timeout", 30)
        return DockerScanner(socket_path=self.podman.socket_path, insecure_registries=[self.host],
                             registry_timeout=5, **options)

    def manifest_digest(self, repository: str, reference: str) -> str:
        response = requests.head(f"{self.registry.base}/v2/{repository}/manifests/{reference}", timeout=5,
                                 headers={"Accept": MANIFEST_ACCEPT})
        return response.headers["Docker-Content-Digest"]


@contextlib.contextmanager
def running_lab(root: Path) -> Iterator[Lab]:
    """A registry, a podman engine serving the Docker API, the busybox base image, a health scheduler."""
    require_tools("podman", "runc", "docker-registry", "busybox")
    require_root()
    registry, stop_registry = start_registry(root)
    podman = Podman(root, registry.host)
    health = None
    try:
        rootfs = root / "rootfs" / "bin"
        rootfs.mkdir(parents=True)
        shutil.copy(shutil.which("busybox"), rootfs / "busybox")
        for command in BUSYBOX_COMMANDS:
            (rootfs / command).symlink_to("busybox")
        archive = subprocess.run(["tar", "-C", str(root / "rootfs"), "-c", "."], capture_output=True, check=True)
        podman("import", "-", "localhost/rf-busybox", stdin=archive.stdout)
        podman.start_service()
        health = HealthScheduler(podman)
        yield Lab(podman, registry)
    finally:
        if health is not None:
            health.stop()
        podman.stop()
        stop_registry()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("podman")) as started:
        yield started


def engine_pull(lab: Lab, image: str) -> None:
    """Pull through the engine, as ``docker pull`` would."""
    lab.podman("pull", "--tls-verify=false", "--quiet", image)


# --- the scan on the real engine -----------------------------------------------


def test_pulled_image_is_current_until_a_new_one_is_pushed(lab):
    lab.publish("scan/app:1.0", "v1")
    engine_pull(lab, f"{lab.host}/scan/app:1.0")
    scanner = lab.scanner()

    assert scanner.scan() == []
    assert [entry for entry in scanner.last_not_checked if "scan/app" in entry["name"]] == []

    new_image = lab.publish("scan/app:1.0", "v2")
    new_digest = lab.manifest_digest("scan/app", "1.0")
    records = [record for record in scanner.scan() if record.name == f"{lab.host}/scan/app:1.0"]

    assert len(records) == 1
    record = records[0]
    assert record.available_version == "1.0@" + new_digest[7:19]
    assert record.metadata["remote_digest"] == new_digest
    assert record.metadata["image_id"] != new_image
    assert record.metadata["platform"] == "linux/amd64"


def test_docker_host_names_the_engine_and_a_loopback_registry_is_plain_http(lab, monkeypatch):
    """As the Docker CLI and daemon do: DOCKER_HOST=unix://..., and 127.0.0.0/8 registries over HTTP."""
    lab.publish("env/app:1", "v1")
    engine_pull(lab, f"{lab.host}/env/app:1")
    lab.publish("env/app:1", "v2")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{lab.podman.socket_path}")

    scanner = DockerScanner(registry_timeout=5)

    assert scanner.engine.socket_path == lab.podman.socket_path
    assert f"{lab.host}/env/app:1" in [record.name for record in scanner.scan()]


def test_locally_built_image_is_not_an_update_but_named_as_not_checked(lab):
    # podman records a RepoDigest even for a built image; the registry has no such manifest.
    lab.build(f"{lab.host}/scan/built:dev", "LABEL built=here")
    scanner = lab.scanner()

    assert [record for record in scanner.scan() if "scan/built" in record.name] == []
    reasons = {entry["name"]: entry["reason"] for entry in scanner.last_not_checked}
    assert reasons[f"{lab.host}/scan/built:dev"] == f"scan/built:dev not found on {lab.host}"


@pytest.mark.parametrize("manifest_format", ["v2s2", "oci"])
def test_multi_arch_other_platform_change_is_up_to_date_host_platform_change_is_an_update(lab, manifest_format):
    """Issue 14: only the host's platform manifest decides, as a pull does."""
    repository = f"multi-{manifest_format}"
    image = f"{lab.host}/{repository}:latest"

    def push_list(amd64_version: str, arm64_version: str) -> None:
        amd64 = lab.build(f"localhost/{repository}-amd64:{amd64_version}", f"LABEL platform=amd64-{amd64_version}")
        arm64 = lab.build(f"localhost/{repository}-arm64:{arm64_version}", f"LABEL platform=arm64-{arm64_version}")
        listed = f"localhost/{repository}-list:{amd64_version}-{arm64_version}"
        lab.podman("manifest", "create", listed)
        lab.podman("manifest", "add", listed, f"containers-storage:{amd64}")
        lab.podman("manifest", "add", "--arch", "arm64", "--variant", "v8", listed, f"containers-storage:{arm64}")
        lab.podman("manifest", "push", "--all", "--format", manifest_format, "--tls-verify=false", listed,
                   f"docker://{image}")

    push_list("a1", "r1")
    engine_pull(lab, image)
    pulled_id = lab.podman.image_id(image)
    first_index = lab.manifest_digest(repository, "latest")
    scanner = lab.scanner()
    assert [record for record in scanner.scan() if record.name == image] == []

    # Only the arm64 child changes: a new index digest, and still nothing to pull on amd64.
    push_list("a1", "r2")
    assert lab.manifest_digest(repository, "latest") != first_index
    assert [record for record in scanner.scan() if record.name == image] == []
    engine_pull(lab, image)
    assert lab.podman.image_id(image) == pulled_id  # the engine agrees: "up to date"

    # The amd64 child changes: an update, and a pull gives a new image.
    push_list("a2", "r2")
    records = [record for record in scanner.scan() if record.name == image]
    assert len(records) == 1
    assert records[0].metadata["remote_digest"] == lab.manifest_digest(repository, "latest")
    assert records[0].metadata["remote_platform_digest"] not in ("", first_index)
    engine_pull(lab, image)
    assert lab.podman.image_id(image) != pulled_id


def test_install_without_containers_pulls_through_the_engine(lab):
    lab.publish("pull/app:1.0", "v1")
    result = lab.scanner().install([f"{lab.host}/pull/app:1.0"])

    assert result.succeeded is True, result.output_tail
    assert result.packages[0]["name"] == f"{lab.host}/pull/app:1.0"
    assert result.packages[0]["digest"] == lab.manifest_digest("pull/app", "1.0")
    assert result.packages[0]["containers"] == ""
    assert f"$ pull {lab.host}/pull/app:1.0" in result.output_tail
    assert "no container used a previous image" in result.output_tail
    assert lab.podman.image_id(f"{lab.host}/pull/app:1.0")


def test_dry_run_names_digests_and_changes_nothing(lab):
    lab.publish("dry/app:1.0", "v1")
    image = f"{lab.host}/dry/app:1.0"
    scanner = lab.scanner()

    result = scanner.dry_run([image, f"{lab.host}/dry/missing:1"])

    digest = lab.manifest_digest("dry/app", "1.0")
    assert result.succeeded is False  # the missing image is an honest failure
    assert result.packages == [{
        "name": image,
        "reference": image,
        "available_version": "1.0@" + digest[7:19],
        "remote_digest": digest,
        "remote_platform_digest": "",
        "containers": "",
    }]
    assert f"would pull {image} ({digest})" in result.output_tail
    assert "no running container uses this image: only the pull" in result.output_tail
    assert "dry/missing:1 not found" in result.output_tail
    assert lab.podman("images", "-q", image) == ""  # nothing was pulled


def test_install_of_a_missing_tag_is_a_failure_with_the_engines_reason(lab):
    result = lab.scanner().install([f"{lab.host}/pull/missing:9.9"])

    assert result.succeeded is False
    assert result.exit_code == 1
    assert "manifest unknown" in result.output_tail
    assert "pull FAILED" in result.output_tail


# --- updates that update ----------------------------------------------------------


def run_container(lab: Lab, name: str, image: str, *options: str) -> str:
    return lab.podman("run", "-d", "--name", name, *options, image)


def test_update_recreates_a_running_container_keeping_its_configuration(lab, tmp_path):
    image = f"{lab.host}/web/app:1.0"
    old_image = lab.publish("web/app:1.0", "v1", "VOLUME /cache")
    engine_pull(lab, image)
    lab.podman("network", "create", "webnet")
    bound = tmp_path / "bound"
    bound.mkdir()
    run_container(lab, "web", image, "--network", "webnet", "--network-alias", "frontend",
                  "-p", "127.0.0.1::8080", "-e", "GREETING=hello", "-v", "webdata:/data",
                  "-v", f"{bound}:/bound:ro", "--restart", "unless-stopped", "-l", "team=blue")
    lab.podman("exec", "web", "touch", "/data/kept", "/cache/kept-too")
    before = lab.podman.inspect("web")
    new_image = lab.publish("web/app:1.0", "v2", "VOLUME /cache")
    scanner = lab.scanner()

    dry = scanner.dry_run([image])
    assert dry.succeeded is True, dry.output_tail
    assert dry.packages[0]["containers"] == "web"
    assert "would recreate web on the new image" in dry.output_tail
    assert lab.podman.inspect("web")["Id"] == before["Id"]  # the dry-run changed nothing

    result = scanner.install([image])

    assert result.succeeded is True, result.output_tail
    after = lab.podman.inspect("web")
    assert after["Id"] != before["Id"]
    assert after["Image"] == new_image[len("sha256:"):]
    assert after["State"]["Running"] is True
    assert "GREETING=hello" in after["Config"]["Env"]
    assert "VERSION=v2" in after["Config"]["Env"]  # the new image's own environment, not the old one's
    assert after["Config"]["Labels"]["team"] == "blue"
    assert after["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert after["HostConfig"]["PortBindings"] == before["HostConfig"]["PortBindings"]
    assert sorted(after["NetworkSettings"]["Networks"]) == ["webnet"]
    assert "frontend" in after["NetworkSettings"]["Networks"]["webnet"]["Aliases"]
    anonymous = next(mount["Name"] for mount in before["Mounts"] if mount["Destination"] == "/cache")
    assert {(mount["Destination"], mount.get("Name") or mount["Source"], mount["RW"]) for mount in after["Mounts"]} \
        == {("/data", "webdata", True), ("/bound", str(bound), False), ("/cache", anonymous, True)}
    assert lab.podman("exec", "web", "ls", "/data", "/cache") == "/cache:\nkept-too\n\n/data:\nkept"
    assert "started v2" in lab.podman("logs", "web")
    assert lab.podman("ps", "-a", "--filter", f"name=web{PREVIOUS_SUFFIX}", "-q") == ""
    entry = result.packages[0]
    assert entry["containers"] == "web"
    assert entry["old_image_id"] == old_image and entry["image_id"] == new_image
    assert entry["digest"] == lab.manifest_digest("web/app", "1.0") != entry["old_digest"] != ""
    assert "web: recreated as" in result.output_tail
    assert image not in [record.name for record in scanner.scan()]


def test_compose_project_is_recreated_as_its_services_keeping_compose_labels(lab):
    image = f"{lab.host}/shop/app:2"
    lab.publish("shop/app:2", "v1")
    engine_pull(lab, image)
    lab.podman("network", "create", "shop_default")
    for service in ("api", "worker"):
        run_container(lab, f"shop-{service}-1", image, "--network", "shop_default", "--network-alias", service,
                      "-l", "com.docker.compose.project=shop", "-l", f"com.docker.compose.service={service}",
                      "-l", "com.docker.compose.container-number=1", "-e", f"ROLE={service}")
    new_image = lab.publish("shop/app:2", "v2")

    scanner = lab.scanner()

    dry = scanner.dry_run([image])
    assert ("would recreate shop-api-1 (compose project shop, service api) on the new image through the Engine API"
            in dry.output_tail)
    result = scanner.install([image])

    assert result.succeeded is True, result.output_tail
    assert ("compose project shop: recreated through the Engine API keeping its compose labels "
            "(no working directory or compose file in its labels)") in result.output_tail
    assert result.packages[0]["containers"] == "shop-api-1, shop-worker-1"
    for service in ("api", "worker"):
        after = lab.podman.inspect(f"shop-{service}-1")
        assert after["Image"] == new_image[len("sha256:"):]
        assert after["State"]["Running"] is True
        labels = after["Config"]["Labels"]
        assert (labels["com.docker.compose.project"], labels["com.docker.compose.service"]) == ("shop", service)
        assert f"ROLE={service}" in after["Config"]["Env"]
        assert service in after["NetworkSettings"]["Networks"]["shop_default"]["Aliases"]


COMPOSE_FILE = """\
services:
  api:
    image: {image}
    environment:
      ROLE: api
  worker:
    image: {image}
    environment:
      ROLE: worker
"""


def compose_project(lab: Lab, directory: Path, image: str) -> None:
    """``docker-compose up -d`` of a two-service project of ``image``, as its user started it."""
    require_tools("docker-compose")
    (directory / "docker-compose.yml").write_text(COMPOSE_FILE.format(image=image))
    up = subprocess.run(["docker-compose", "-p", directory.name, "up", "-d"], cwd=directory, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, DOCKER_HOST=f"unix://{lab.podman.socket_path}"))
    assert up.returncode == 0, up.stderr


def test_the_compose_tool_recreates_the_projects_services(lab, tmp_path):
    project = tmp_path / "tooled"
    project.mkdir()
    image = f"{lab.host}/tooled/app:1"
    lab.publish("tooled/app:1", "v1")
    engine_pull(lab, image)
    compose_project(lab, project, image)
    new_image = lab.publish("tooled/app:1", "v2")
    scanner = lab.scanner()
    compose_up = f"-p tooled --project-directory {project} -f {project}/docker-compose.yml up -d --no-deps api worker"

    dry = scanner.dry_run([image])
    assert dry.succeeded is True, dry.output_tail
    assert "would recreate tooled_api_1, tooled_worker_1 (compose project tooled) with: " in dry.output_tail
    assert compose_up in dry.output_tail

    result = scanner.install([image])

    assert result.succeeded is True, result.output_tail
    assert compose_up in result.output_tail
    assert result.packages[0]["containers"] == "tooled_api_1, tooled_worker_1"
    for service in ("api", "worker"):
        after = lab.podman.inspect(f"tooled_{service}_1")
        assert after["Image"] == new_image[len("sha256:"):]
        assert after["State"]["Running"] is True
        assert f"ROLE={service}" in after["Config"]["Env"]
        assert after["Config"]["Labels"]["com.docker.compose.project"] == "tooled"


def test_the_compose_tool_rolls_the_project_back_when_a_service_fails(lab, tmp_path):
    project = tmp_path / "rolled"
    project.mkdir()
    image = f"{lab.host}/rolled/app:1"
    old_image = lab.publish("rolled/app:1", "v1")
    engine_pull(lab, image)
    compose_project(lab, project, image)
    lab.publish("rolled/app:1", "v2", 'CMD ["/bin/sh", "-c", "echo v2 cannot start; exit 4"]')

    result = lab.scanner().install([image])

    assert result.succeeded is False
    assert "new container stopped (exit code 4)" in result.output_tail
    assert "  | v2 cannot start" in result.output_tail
    assert "compose project rolled: rolled back to the previous image" in result.output_tail
    assert lab.podman.image_id(image) == old_image[len("sha256:"):]
    for service in ("api", "worker"):
        after = lab.podman.inspect(f"rolled_{service}_1")
        assert after["Image"] == old_image[len("sha256:"):]
        assert after["State"]["Running"] is True


def test_failing_health_check_rolls_back_and_reports_the_logs(lab):
    image = f"{lab.host}/sick/app:1"
    old_image = lab.publish("sick/app:1", "v1", "HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD /bin/true")
    engine_pull(lab, image)
    run_container(lab, "sick", image, "-e", "KEEP=me")
    before = lab.podman.inspect("sick")
    lab.publish("sick/app:1", "v2", "HEALTHCHECK --interval=1s --timeout=2s --retries=2 "
                "CMD /bin/sh -c 'echo broken v2 >&2; exit 1'")

    result = lab.scanner().install([image])

    assert result.succeeded is False
    assert result.exit_code == 1
    assert "sick: health check failed: unhealthy" in result.output_tail
    assert "  | started v2" in result.output_tail  # the new container's last log lines
    assert "sick: rolled back to previous container " + before["Id"][:12] in result.output_tail
    after = lab.podman.inspect("sick")
    assert after["Id"] == before["Id"]
    assert after["State"]["Running"] is True
    assert "KEEP=me" in after["Config"]["Env"]
    assert lab.podman.image_id(image) == old_image[len("sha256:"):]  # the tag names what runs again
    assert lab.podman("ps", "-a", "-q", "--filter", "name=sick").count("\n") == 0
    assert result.packages[0]["containers"] == "sick"


def test_container_that_exits_is_rolled_back(lab):
    image = f"{lab.host}/crash/app:1"
    lab.publish("crash/app:1", "v1")
    engine_pull(lab, image)
    run_container(lab, "crash", image)
    before = lab.podman.inspect("crash")
    lab.publish("crash/app:1", "v2", 'CMD ["/bin/sh", "-c", "echo cannot start v2; exit 3"]')

    result = lab.scanner().install([image])

    assert result.succeeded is False
    assert "crash: new container stopped (exit code 3)" in result.output_tail
    assert "  | cannot start v2" in result.output_tail
    assert lab.podman.inspect("crash")["Id"] == before["Id"]
    assert lab.podman.inspect("crash")["State"]["Running"] is True


@pytest.mark.parametrize("labels,expected", [
    (("-l", "io.redflag.update=notify"), "policy notify (label io.redflag.update=notify)"),
    (("-l", "io.redflag.role=server"), "policy never (default rule: the RedFlag server's container"),
])
def test_held_containers_stop_the_pull_and_say_why(lab, labels, expected):
    image = f"{lab.host}/held/app:1"
    lab.publish("held/app:1", "v1")
    engine_pull(lab, image)
    old_id = lab.podman.image_id(image)
    name = f"held-{uuid.uuid4().hex[:6]}"
    run_container(lab, name, image, *labels)
    lab.publish("held/app:1", "v2")
    scanner = lab.scanner()
    try:
        dry = scanner.dry_run([image])
        assert dry.succeeded is False
        assert f"{name}: {expected}" in dry.output_tail
        result = scanner.install([image])
        assert result.succeeded is False
        assert f"{name}: {expected}" in result.output_tail
        assert "$ pull" not in result.output_tail
        assert lab.podman.image_id(image) == old_id
        names = [record.name for record in scanner.scan()]
        if "never" in expected:
            assert image not in names
            assert any(entry["name"] == image and "policy never" in entry["reason"]
                       for entry in scanner.last_not_checked)
        else:
            assert image in names
    finally:
        lab.podman("rm", "--force", "--time", "0", name)


def test_database_images_are_never_updated_by_default(lab):
    image = f"{lab.host}/library/postgres:16"
    lab.publish("library/postgres:16", "v1")
    engine_pull(lab, image)
    run_container(lab, "db", image)
    lab.publish("library/postgres:16", "v2")
    scanner = lab.scanner()

    assert image not in [record.name for record in scanner.scan()]
    reasons = {entry["name"]: entry["reason"] for entry in scanner.last_not_checked}
    assert reasons[image] == "not checked: db: policy never (default rule: database image (postgres))"
    # The label overrides the default rule.
    lab.podman("rm", "--force", "--time", "0", "db")
    run_container(lab, "db", image, "-l", "io.redflag.update=update")
    assert image in [record.name for record in scanner.scan()]


def test_a_container_created_by_another_name_of_the_image_is_left_alone(lab):
    image = f"{lab.host}/named/app:1"
    lab.publish("named/app:1", "v1")
    engine_pull(lab, image)
    lab.podman("tag", image, "localhost/other-name:kept")
    run_container(lab, "follows", image)
    run_container(lab, "elsewhere", "localhost/other-name:kept")
    elsewhere = lab.podman.inspect("elsewhere")
    new_image = lab.publish("named/app:1", "v2")

    result = lab.scanner().install([image])

    assert result.succeeded is True, result.output_tail
    assert result.packages[0]["containers"] == "follows"
    assert lab.podman.inspect("follows")["Image"] == new_image[len("sha256:"):]
    assert lab.podman.inspect("elsewhere")["Id"] == elsewhere["Id"]  # it follows its own name, not this one
