"""Recreating the containers of an updated image, through the Docker Engine API.

Pulling a new image changes nothing a user cares about: every container keeps
running the image it was created from. An approved Docker update therefore
recreates each running container of the old image, the way ``docker compose up``
and Watchtower do:

1. Inspect the container; keep what the user gave it (environment, mounts,
   ports, networks and aliases, restart policy, labels, every HostConfig
   setting) and drop what came from the old image's own config, so that the new
   image's defaults (command, health check, PATH...) take effect.
2. Stop it and rename it ``<name>-redflag-previous``; create the new container
   under the original name from the kept config and the new image; start it.
3. Wait: until the health check says healthy, or, without a health check,
   until it has kept running for ``settle_seconds``.
4. Success: remove the previous container. Failure (unhealthy, exited,
   restarted, not healthy in time, or any Engine refusal): remove the new
   container, give the previous one its name back and start it again, and
   report the new container's last log lines. The caller then tags the old
   image again, so the reference names the image that runs.

Compose projects (labels ``com.docker.compose.project`` / ``.service``) are
one unit, never broken apart: when one of its containers fails, all of them go
back. With the compose tool on this host (the ``docker compose`` plugin, else
``docker-compose``) and the project's working directory and files still there
(the ``.project.working_dir`` / ``.project.config_files`` labels), the tool
recreates the project's services of the image (``up -d --no-deps <services>``);
a failure is rolled back by tagging the previous image again and running the
same ``up`` once more. Otherwise each container is recreated through the Engine
API as above, keeping every compose label, so the tool still sees the
project's services; the output says which way was taken and why.

Policy, per container, from the label ``io.redflag.update``:
``update`` (recreate), ``notify`` (report the update, never install it) or
``never`` (not even reported). Without the label, default rules say
``never`` for the RedFlag server's own container (label
``io.redflag.role=server``, or an image repository named ``redflag...``) and
for database images (:data:`DATABASE_IMAGES`, matched on the last path
component of the repository), and ``update`` for everything else. An image
with any container held by ``notify`` or ``never`` is not pulled at all: the
pull would move the tag under that container, and its next restart by compose
would run the new image.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from agent_client.scanners.base import ScanError, run_command, tail
from agent_client.scanners.docker_reference import ImageReference

if TYPE_CHECKING:
    from agent_client.scanners.docker import EngineClient

POLICY_LABEL = "io.redflag.update"
ROLE_LABEL = "io.redflag.role"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
COMPOSE_CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"
# Compose's own grammar for project and service names: nothing an argv could mistake for an option.
COMPOSE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
PREVIOUS_SUFFIX = "-redflag-previous"

UPDATE = "update"
NOTIFY = "notify"
NEVER = "never"
POLICIES = (UPDATE, NOTIFY, NEVER)

# Recreating a database container on an upstream push can start a data migration nobody chose.
DATABASE_IMAGES = frozenset({
    "postgres", "postgis", "timescaledb", "mysql", "mariadb", "percona-server", "mongo", "mongodb",
    "redis", "valkey", "keydb", "memcached", "couchdb", "cassandra", "elasticsearch", "opensearch",
    "influxdb", "clickhouse-server", "cockroach", "neo4j", "etcd",
})

# Config keys whose container value is the image's unless the user set one: dropped when equal to
# the old image's (or empty), so the new image's value applies.
IMAGE_DEFAULTED_KEYS = ("Cmd", "Entrypoint", "Healthcheck", "WorkingDir", "User", "ExposedPorts", "Volumes",
                        "StopSignal", "Shell", "OnBuild")
DEFAULT_STOP_SIGNALS = ("", "15", "SIGTERM", "TERM")
LOG_LINES = 20
POLL_SECONDS = 0.5


@dataclasses.dataclass
class Container:
    """A running container of the image, as the update plan sees it."""

    id: str
    name: str
    policy: str
    rule: str
    project: str = ""
    service: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def unit(self) -> str:
        """What is recreated together: a compose project, or the container alone."""
        return f"compose project {self.project}" if self.project else f"container {self.name}"

    def describe(self) -> str:
        where = f" (compose project {self.project}, service {self.service})" if self.project else ""
        return f"{self.name}{where}"


def container_policy(labels: dict[str, str], reference: ImageReference) -> tuple[str, str]:
    """(policy, the rule that chose it) for a container with these labels running this image."""
    labelled = (labels.get(POLICY_LABEL) or "").strip().lower()
    if labelled in POLICIES:
        return labelled, f"label {POLICY_LABEL}={labelled}"
    if labels.get(ROLE_LABEL) == "server":
        return NEVER, f"default rule: the RedFlag server's container (label {ROLE_LABEL}=server)"
    last_component = reference.repository.rsplit("/", 1)[-1]
    if last_component.startswith("redflag"):
        return NEVER, f"default rule: the RedFlag server's image ({reference.repository})"
    if last_component in DATABASE_IMAGES:
        return NEVER, f"default rule: database image ({last_component})"
    return UPDATE, "default rule: update"


def running_containers(engine: EngineClient, image_id: str, reference: ImageReference) -> list[Container]:
    """The running containers of ``image_id`` created by this reference's repository name, with their policy.

    One image may carry several names; a container created by another name (or by the image ID)
    does not follow this one, and is left alone.
    """
    listed = engine.expect("GET", "/containers/json", (200,)) or []
    containers = []
    for entry in listed:
        if entry.get("ImageID") != image_id or not _created_by(entry.get("Image") or "", reference):
            continue
        labels = entry.get("Labels") or {}
        policy, rule = container_policy(labels, reference)
        containers.append(Container(
            id=entry["Id"],
            name=(entry.get("Names") or ["/" + entry["Id"][:12]])[0].lstrip("/"),
            policy=policy,
            rule=rule,
            project=labels.get(COMPOSE_PROJECT_LABEL, ""),
            service=labels.get(COMPOSE_SERVICE_LABEL, ""),
            labels=labels,
        ))
    return sorted(containers, key=lambda container: container.name)


def _created_by(image_name: str, reference: ImageReference) -> bool:
    try:
        return ImageReference.parse(image_name).repo_key == reference.repo_key
    except ValueError:
        return False


def held_back(containers: Sequence[Container]) -> list[str]:
    """One line per container whose policy forbids recreating it (the image is then not pulled)."""
    return [f"{container.describe()}: policy {container.policy} ({container.rule})"
            for container in containers if container.policy != UPDATE]


def plan_lines(unit: Sequence[Container], compose_argv: Optional[list[str]], why_not_compose: str) -> list[str]:
    """What an install would do to one unit, as the dry-run prints it: which containers, and how."""
    if compose_argv is not None:
        names = ", ".join(container.name for container in unit)
        return [f"would recreate {names} ({unit[0].unit}) with: {' '.join(compose_argv)}; health checks (or "
                f"running state) awaited, the previous image restored with the same command on failure"]
    reason = f" ({why_not_compose})" if unit[0].project else ""
    return [f"would recreate {container.describe()} on the new image through the Engine API, keeping its "
            f"configuration{reason}; health check (or running state) awaited, rolled back on failure"
            for container in unit]


def units(containers: Sequence[Container]) -> list[list[Container]]:
    """The containers grouped into what is recreated and rolled back together, in a stable order."""
    grouped: dict[str, list[Container]] = {}
    for container in containers:
        grouped.setdefault(container.unit, []).append(container)
    return list(grouped.values())


# --- the compose tool ------------------------------------------------------------


def compose_tool() -> Optional[list[str]]:
    """The compose tool on this host: the ``docker compose`` plugin, else ``docker-compose``; None without."""
    docker = shutil.which("docker")
    if docker and run_command([docker, "compose", "version"], timeout=60).exit_code == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def compose_up_argv(tool: Sequence[str], unit: Sequence[Container]) -> tuple[Optional[list[str]], str]:
    """(argv that recreates the unit's services with the tool, "") or (None, why the tool cannot be used).

    The names and paths come from the containers' labels: the project and services must be compose
    names, the working directory and every compose file must exist (absolute paths: no argv option).
    """
    labels = unit[0].labels
    working_dir = labels.get(COMPOSE_WORKING_DIR_LABEL, "")
    files = [name.strip() for name in labels.get(COMPOSE_CONFIG_FILES_LABEL, "").split(",") if name.strip()]
    services = sorted({container.service for container in unit})
    if not working_dir or not files:
        return None, "no working directory or compose file in its labels"
    if not all(COMPOSE_NAME.match(name) for name in [unit[0].project, *services]):
        return None, "a project or service name compose would not give"
    paths = [os.path.join(working_dir, name) for name in files]
    if not os.path.isabs(working_dir) or not os.path.isdir(working_dir) or not all(map(os.path.isfile, paths)):
        return None, f"its compose files are no longer in {working_dir}"
    argv = [*tool, "-p", unit[0].project, "--project-directory", working_dir]
    for path in paths:
        argv += ["-f", path]
    return argv + ["up", "-d", "--no-deps", *services], ""


# --- creating the new container from the old one's config ------------------------


def image_defaults(engine: EngineClient, image: dict[str, Any]) -> dict[str, Any]:
    """The config a container of ``image`` inherited unless its user set otherwise.

    Podman's Docker API leaves the health check out of an image's ``Config`` (Docker omits the key
    only when there is none); podman's own API has it, at the top level of the image. Without it, the
    old image's health check would look like the user's and be carried over the new image's own.
    """
    config = dict(image.get("Config") or {})
    if "Healthcheck" not in config:
        status, body = engine.call("GET", f"/v4.0.0/libpod/images/{image['Id'].split(':')[-1]}/json")
        if status == 200:
            config["Healthcheck"] = json.loads(body.decode("utf-8")).get("Healthcheck")
    return config


def creation_body(inspected: dict[str, Any], image_config: dict[str, Any], image_name: str) -> dict[str, Any]:
    """The ``POST /containers/create`` body that recreates ``inspected`` on ``image_name``."""
    config = dict(inspected.get("Config") or {})
    for key in IMAGE_DEFAULTED_KEYS:
        value = config.get(key)
        if not value or value == image_config.get(key) or (key == "StopSignal" and value in DEFAULT_STOP_SIGNALS):
            config.pop(key, None)
    hostname = config.get("Hostname", "")
    if hostname and inspected.get("Id", "").startswith(hostname):
        config.pop("Hostname")  # the engine's default, the old container's short id
    image_env = set(image_config.get("Env") or [])
    config["Env"] = [entry for entry in config.get("Env") or []
                     if entry not in image_env and entry != f"HOSTNAME={hostname}"]
    image_labels = image_config.get("Labels") or {}
    config["Labels"] = {key: value for key, value in (config.get("Labels") or {}).items()
                        if image_labels.get(key) != value}
    config["Image"] = image_name
    host_config = dict(inspected.get("HostConfig") or {})
    host_config["Binds"] = list(host_config.get("Binds") or []) + _anonymous_volume_binds(inspected, host_config)
    networks = _networks(inspected)
    if networks and host_config.get("NetworkMode") in ("bridge", "default", "") and \
            host_config.get("NetworkMode") not in networks:
        host_config["NetworkMode"] = next(iter(networks))
    config["HostConfig"] = host_config
    if networks:
        primary = host_config.get("NetworkMode")
        endpoint = networks.get(primary) or next(iter(networks.values()))
        config["NetworkingConfig"] = {"EndpointsConfig": {primary: endpoint}}
    return config


def _anonymous_volume_binds(inspected: dict[str, Any], host_config: dict[str, Any]) -> list[str]:
    """Binds for volumes the container got without naming them (an image VOLUME): its data goes along."""
    named = " ".join(host_config.get("Binds") or [])
    return [f"{mount['Name']}:{mount['Destination']}" for mount in inspected.get("Mounts") or []
            if mount.get("Type") == "volume" and mount.get("Name") and f"{mount['Name']}:" not in named]


def _networks(inspected: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Network name -> the endpoint config to connect the new container with (aliases, static addresses)."""
    container_id = inspected.get("Id", "")
    networks = {}
    for name, endpoint in ((inspected.get("NetworkSettings") or {}).get("Networks") or {}).items():
        aliases = [alias for alias in endpoint.get("Aliases") or [] if not container_id.startswith(alias)]
        kept: dict[str, Any] = {"Aliases": aliases}
        if endpoint.get("IPAMConfig"):
            kept["IPAMConfig"] = endpoint["IPAMConfig"]
        networks[name] = kept
    return networks


# --- the recreation -------------------------------------------------------------


@dataclasses.dataclass
class Swap:
    """One container being recreated: the previous one (renamed) and the new one."""

    container: Container
    was_running: bool
    new_id: str = ""
    renamed: bool = False


class Recreator:
    """Recreates the units of one image and rolls a unit back when it does not come up."""

    def __init__(self, engine: EngineClient, settle_seconds: float, health_timeout: float) -> None:
        self.engine = engine
        self.settle_seconds = settle_seconds
        self.health_timeout = health_timeout

    def recreate_unit(self, unit: Sequence[Container], image_config: dict[str, Any], image_name: str,
                      lines: list[str]) -> bool:
        """Recreate every container of ``unit``; on any failure put them all back. True when all came up."""
        swaps: list[Swap] = []
        problem = None
        try:
            for container in unit:
                swap = self._swap(container, image_config, image_name, swaps)
                lines.append(f"{container.describe()}: recreated as {swap.new_id[:12]}")
            for swap in swaps:
                problem = self._wait(swap.new_id)
                if problem:
                    lines.append(f"{swap.container.describe()}: {problem}")
                    lines.extend(f"  | {line}" for line in self._last_log_lines(swap.new_id))
                    break
        except ScanError as exc:
            problem = str(exc)
            lines.append(f"{unit[0].unit}: {problem}")
        if problem:
            self._roll_back(swaps, lines)
            return False
        for swap in swaps:
            self.engine.expect("DELETE", f"/containers/{swap.container.id}", (204, 200))
            lines.append(f"{swap.container.describe()}: previous container {swap.container.id[:12]} removed")
        return True

    def recreate_with_compose(self, unit: Sequence[Container], argv: list[str],
                              restore_previous_image: Callable[[], None], lines: list[str]) -> bool:
        """Let the compose tool recreate the unit's services; on failure tag the previous image and run it again."""
        problem = self._compose_up(argv, lines)
        if problem is None:
            for container_id, described in self._compose_containers(unit):
                problem = self._wait(container_id)
                if problem:
                    lines.append(f"{described}: {problem}")
                    lines.extend(f"  | {line}" for line in self._last_log_lines(container_id))
                    break
        if problem is None:
            return True
        lines.append(f"{unit[0].unit}: rolling back: the previous image tagged again, the same compose up run again")
        restore_previous_image()
        again = self._compose_up(argv, lines)
        lines.append(f"{unit[0].unit}: " + ("rolled back to the previous image" if again is None
                                            else f"ROLLBACK FAILED: {again}"))
        return False

    def _compose_up(self, argv: list[str], lines: list[str]) -> Optional[str]:
        lines.append("$ " + " ".join(argv))
        ran = run_command(argv, env={"DOCKER_HOST": f"unix://{self.engine.socket_path}"}, timeout=1800)
        lines.extend(tail(ran.stdout + ran.stderr, 2000).splitlines())
        return None if ran.exit_code == 0 else f"compose exited with {ran.exit_code}"

    def _compose_containers(self, unit: Sequence[Container]) -> list[tuple[str, str]]:
        """(id, description) of the containers of the unit's project and services, after the tool ran."""
        services = {container.service for container in unit}
        project_filter = json.dumps({"label": [f"{COMPOSE_PROJECT_LABEL}={unit[0].project}"]})
        query = urllib.parse.urlencode({"all": "1", "filters": project_filter})  # one that already exited too
        listed = self.engine.expect("GET", f"/containers/json?{query}", (200,)) or []
        found = []
        for entry in listed:
            labels = entry.get("Labels") or {}
            if labels.get(COMPOSE_SERVICE_LABEL) in services:
                name = (entry.get("Names") or ["/" + entry["Id"][:12]])[0].lstrip("/")
                found.append((entry["Id"], f"{name} (compose project {unit[0].project}, "
                                           f"service {labels[COMPOSE_SERVICE_LABEL]})"))
        return sorted(found, key=lambda item: item[1])

    def _swap(self, container: Container, image_config: dict[str, Any], image_name: str,
              swaps: list[Swap]) -> Swap:
        inspected = self.engine.expect("GET", f"/containers/{container.id}/json", (200,))
        swap = Swap(container, was_running=bool((inspected.get("State") or {}).get("Running")))
        swaps.append(swap)
        body = creation_body(inspected, image_config, image_name)
        stop_timeout = (inspected.get("Config") or {}).get("StopTimeout") or 10
        self.engine.expect("POST", f"/containers/{container.id}/stop?t={int(stop_timeout)}", (204, 304),
                           timeout=stop_timeout + 30)
        previous_name = urllib.parse.quote(container.name + PREVIOUS_SUFFIX)
        self.engine.expect("POST", f"/containers/{container.id}/rename?name={previous_name}", (204, 200))
        swap.renamed = True
        created = self.engine.expect("POST", f"/containers/create?name={urllib.parse.quote(container.name)}",
                                     (201, 200), payload=body)
        swap.new_id = created["Id"]
        self._connect_other_networks(swap.new_id, inspected, body)
        self.engine.expect("POST", f"/containers/{swap.new_id}/start", (204, 304))
        return swap

    def _connect_other_networks(self, new_id: str, inspected: dict[str, Any], body: dict[str, Any]) -> None:
        primary = body["HostConfig"].get("NetworkMode")
        for name, endpoint in _networks(inspected).items():
            if name != primary:
                self.engine.expect("POST", f"/networks/{urllib.parse.quote(name)}/connect", (200, 204),
                                   payload={"Container": new_id, "EndpointConfig": endpoint})

    def _wait(self, container_id: str) -> Optional[str]:
        """None once the new container is healthy (or running for settle_seconds), else why not."""
        started = time.monotonic()
        while True:
            inspected = self.engine.expect("GET", f"/containers/{container_id}/json", (200,))
            state = inspected.get("State") or {}
            health = (state.get("Health") or {}).get("Status") or ""
            waited = time.monotonic() - started
            if not state.get("Running") or state.get("Restarting"):
                return f"new container stopped (exit code {state.get('ExitCode')})"
            if inspected.get("RestartCount"):
                return f"new container restarted {inspected['RestartCount']} time(s)"
            if health == "unhealthy":
                return "health check failed: unhealthy"
            if health == "healthy" or (not health and waited >= self.settle_seconds):
                return None
            if waited >= self.health_timeout:
                return f"not healthy within {self.health_timeout:.0f} s (health: {health or 'none'})"
            time.sleep(POLL_SECONDS)

    def _last_log_lines(self, container_id: str) -> list[str]:
        status, body = self.engine.call(
            "GET", f"/containers/{container_id}/logs?stdout=1&stderr=1&tail={LOG_LINES}")
        if status != 200:
            return [f"(logs unavailable: HTTP {status})"]
        return demultiplex(body).splitlines()[-LOG_LINES:]

    def _roll_back(self, swaps: Sequence[Swap], lines: list[str]) -> None:
        """Remove the new containers and bring the previous ones back under their names, last first."""
        for swap in reversed(swaps):
            name = swap.container.describe()
            try:
                if swap.new_id:
                    self.engine.expect("DELETE", f"/containers/{swap.new_id}?force=1", (204, 200))
                if swap.renamed:
                    original_name = urllib.parse.quote(swap.container.name)
                    self.engine.expect("POST", f"/containers/{swap.container.id}/rename?name={original_name}",
                                       (204, 200))
                if swap.was_running:
                    self.engine.expect("POST", f"/containers/{swap.container.id}/start", (204, 304))
                lines.append(f"{name}: rolled back to previous container {swap.container.id[:12]}")
            except ScanError as exc:
                lines.append(f"{name}: ROLLBACK FAILED: {exc}")


def demultiplex(body: bytes) -> str:
    """The text of a non-TTY log stream: 8-byte frame headers (stream, size) stripped; plain text as is."""
    if len(body) < 8 or body[0] not in (0, 1, 2) or body[1:4] != b"\0\0\0":
        return body.decode("utf-8", "replace")
    chunks = []
    offset = 0
    while offset + 8 <= len(body):
        size = int.from_bytes(body[offset + 4:offset + 8], "big")
        chunks.append(body[offset + 8:offset + 8 + size])
        offset += 8 + size
    return b"".join(chunks).decode("utf-8", "replace")
