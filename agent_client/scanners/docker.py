"""Docker image scanner and installer.

Local images come from the Docker Engine API over its Unix socket (plain
HTTP over AF_UNIX, ``http.client`` only: no Docker SDK). Remote digests come
from the registry HTTP API v2 with anonymous Bearer-token auth; the token
service a registry names is asked only over HTTPS or on the registry's own
origin (see :func:`realm_problem`), otherwise the image is not checked.

How an update is decided, per tagged local image:

1. ``HEAD /v2/<repo>/manifests/<tag>`` (Accept: manifest list, OCI index, v2
   manifest, OCI manifest) gives the remote digest (``Docker-Content-Digest``).
2. When the remote is an index / manifest list, it is fetched and the digest of
   the entry for this host's os/architecture(/variant) is picked as well.
3. The image is current when the remote digest or that platform digest is
   among the image's local ``RepoDigests`` for the same repository (a local
   RepoDigest may be the index digest - ``docker pull`` - or the platform
   manifest digest - podman, pulls by digest).
4. Otherwise the manifest this host would pull is fetched: its config digest
   is the image ID the pull would produce. An equal local image ID is current
   too, as ``docker pull`` says "Image is up to date": an index whose other
   platforms changed is no update. Anything else is one.

An image the scanner could not check (registry answered 429, network error,
auth needed, no local RepoDigest to compare with...) is never reported as an
update: it goes to ``last_not_checked`` with the reason, and so does an image
that a container with policy ``never`` runs (see ``docker_recreate``).

An install pulls and then recreates the image's running containers, health
checked and rolled back on failure: ``docker_recreate`` says how.

Versions are shown as ``<tag>@<first 12 hex digits of the digest>``:
``current_version`` uses the local RepoDigest of that repository,
``available_version`` the remote (index or manifest) digest. Full digests are
in the record's metadata. Severity is always "unknown": a registry says
nothing about security.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import ipaddress
import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import requests

from agent_client.protocol import PackageType
from agent_client.scanners.base import OperationResult, ScanError, Scanner, UpdateRecord, tail
from agent_client.scanners.docker_recreate import (
    NEVER,
    Container,
    Recreator,
    compose_tool,
    compose_up_argv,
    held_back,
    image_defaults,
    plan_lines,
    running_containers,
    units,
)
from agent_client.scanners.docker_reference import ImageReference

DEFAULT_SOCKET_PATH = "/var/run/docker.sock"
LOOPBACK_REGISTRIES = ipaddress.ip_network("127.0.0.0/8")

MEDIA_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPES = (MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_INDEX)
MANIFEST_ACCEPT = ", ".join(
    (MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_MANIFEST)
)

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class RegistryUnavailable(Exception):
    """The registry could not be asked right now (429, network, auth): not an update."""


def short_digest(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


# --- Docker Engine API over a Unix socket ------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class EngineClient:
    """The Docker Engine API calls the scanner and the container recreation need."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET_PATH, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _request(self, method: str, path: str, timeout: Optional[float] = None, payload: Any = None):
        conn = _UnixHTTPConnection(self.socket_path, timeout or self.timeout)
        headers = {"Host": "docker"}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=body, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException):
            conn.close()
            raise

    def call(self, method: str, path: str, payload: Any = None, timeout: Optional[float] = None) -> tuple[int, bytes]:
        """(HTTP status, body) of one Engine API call; ScanError when the Engine does not answer."""
        try:
            conn, response = self._request(method, path, timeout, payload)
        except (OSError, http.client.HTTPException) as exc:
            raise ScanError(f"Docker Engine at {self.socket_path} did not answer: {exc}") from exc
        try:
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ScanError(f"Docker Engine {method} {path} broke off: {exc}") from exc
        finally:
            conn.close()

    def expect(self, method: str, path: str, statuses: Sequence[int], payload: Any = None,
               timeout: Optional[float] = None) -> Any:
        """The decoded JSON body (None when empty) of a call answered with one of ``statuses``, else ScanError."""
        status, body = self.call(method, path, payload, timeout)
        if status not in statuses:
            raise ScanError(f"Docker Engine {method} {path.split('?')[0]} answered {status}: {_engine_message(body)}")
        if not body.strip():
            return None
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError as exc:
            raise ScanError(f"Docker Engine {method} {path} returned invalid JSON") from exc

    def image(self, name: str) -> Optional[dict[str, Any]]:
        """``GET /images/{name}/json``, or None when the Engine has no such image."""
        status, body = self.call("GET", f"/images/{urllib.parse.quote(name, safe='/:@')}/json")
        if status == 404:
            return None
        if status != 200:
            raise ScanError(f"Docker Engine GET /images/{name}/json answered {status}: {_engine_message(body)}")
        return json.loads(body.decode("utf-8"))

    def get_json(self, path: str) -> Any:
        return self.expect("GET", path, (200,))

    def ping(self) -> bool:
        try:
            conn, response = self._request("GET", "/_ping", timeout=5.0)
        except (OSError, http.client.HTTPException):
            return False
        try:
            response.read()
        finally:
            conn.close()
        return response.status == 200

    def pull(self, name: str, tag: str) -> tuple[bool, list[str]]:
        """``POST /images/create``; returns (succeeded, progress lines).

        The Engine streams one JSON object per line; an object with ``error``
        (or ``errorDetail``) means the pull failed even though the HTTP status
        was 200.
        """
        query = urllib.parse.urlencode({"fromImage": name, "tag": tag})
        try:
            conn, response = self._request("POST", f"/images/create?{query}", timeout=3600)
        except (OSError, http.client.HTTPException) as exc:
            return False, [f"Docker Engine at {self.socket_path} did not answer: {exc}"]
        lines: list[str] = []
        failed = response.status != 200
        try:
            if failed:
                lines.append(f"HTTP {response.status}: {_engine_message(response.read())}")
                return False, lines
            for raw in _iter_json_lines(response):
                try:
                    event = json.loads(raw)
                except ValueError:
                    lines.append(raw)
                    continue
                if not isinstance(event, dict):
                    continue
                error = event.get("error") or (event.get("errorDetail") or {}).get("message")
                if error:
                    failed = True
                    lines.append(f"error: {error}")
                    continue
                status = event.get("status", "")
                if event.get("id"):
                    status = f"{event['id']}: {status}"
                # Byte-level "Downloading"/"Extracting" ticks would drown the tail.
                if event.get("progressDetail") and event.get("progress"):
                    continue
                if status:
                    lines.append(status)
        except (OSError, http.client.HTTPException) as exc:
            failed = True
            lines.append(f"pull stream broke off: {exc}")
        finally:
            conn.close()
        return not failed, lines


def _iter_json_lines(response: http.client.HTTPResponse) -> Iterable[str]:
    buffer = b""
    while True:
        chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line.decode("utf-8", "replace").strip()
    if buffer.strip():
        yield buffer.decode("utf-8", "replace").strip()


def _engine_message(body: bytes) -> str:
    try:
        return str(json.loads(body.decode("utf-8")).get("message", "")) or body.decode("utf-8", "replace")
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace").strip()


# --- registry API v2 ----------------------------------------------------------


def _parse_bearer_challenge(header: str) -> Optional[dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return {key.lower(): value for key, value in re.findall(r'(\w+)="([^"]*)"', params)}


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> Optional[tuple[str, str, int]]:
    """(scheme, host, port) of a URL, the port made explicit; None when it has no usable host."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def realm_problem(realm: str, registry_url: str) -> Optional[str]:
    """Why the agent will not ask this token service; None when it may.

    A registry's 401 names the token service (``WWW-Authenticate: Bearer realm=...``) and the agent
    would then send a request there on the registry's word. It does so only over HTTPS, or to the
    registry's own origin (same scheme, host and port: a plain-HTTP registry the admin listed as
    insecure may serve its own tokens). Anything else - plain HTTP to another host or port, another
    scheme - could point the agent at any service on its network, unencrypted.
    """
    origin = _origin(realm)
    if origin is not None and (origin[0] == "https" or origin == _origin(registry_url)):
        return None
    shown = realm if len(realm) <= 100 else realm[:97] + "..."
    return f"token service {shown!r} is neither HTTPS nor the registry's own origin; not asked"


class RegistryClient:
    """Anonymous, read-only registry v2 client: manifest digests and indexes."""

    def __init__(
        self,
        insecure_registries: Sequence[str] = (),
        timeout: float = 20.0,
        session: Optional[requests.Session] = None,
    ) -> None:
        self.insecure_registries = {host.lower() for host in insecure_registries}
        self.timeout = timeout
        self.session = session or requests.Session()
        self._tokens: dict[tuple[str, str, str], str] = {}

    def _base_url(self, ref: ImageReference) -> str:
        host = ref.api_host
        scheme = "http" if host.lower() in self.insecure_registries or _is_loopback(host) else "https"
        return f"{scheme}://{host}"

    def _request(self, method: str, ref: ImageReference, reference: str) -> requests.Response:
        url = f"{self._base_url(ref)}/v2/{ref.repository}/manifests/{reference}"
        headers = {"Accept": MANIFEST_ACCEPT}
        token_key = (ref.api_host, ref.repository, "pull")
        if token_key in self._tokens:
            headers["Authorization"] = f"Bearer {self._tokens[token_key]}"
        response = self._send(method, url, headers)
        if response.status_code == 401:
            challenge = _parse_bearer_challenge(response.headers.get("WWW-Authenticate", ""))
            if challenge is None or "realm" not in challenge:
                raise RegistryUnavailable(f"{ref.api_host} requires credentials (HTTP 401)")
            problem = realm_problem(challenge["realm"], self._base_url(ref))
            if problem is not None:
                raise RegistryUnavailable(problem)
            self._tokens[token_key] = self._fetch_token(challenge, ref)
            headers["Authorization"] = f"Bearer {self._tokens[token_key]}"
            response = self._send(method, url, headers)
        if response.status_code == 429:
            retry_after = response.headers.get("Retry-After", "")
            raise RegistryUnavailable(
                f"{ref.api_host} rate limit reached (HTTP 429"
                + (f", Retry-After {retry_after}" if retry_after else "") + ")"
            )
        if response.status_code in (401, 403):
            raise RegistryUnavailable(f"{ref.api_host} refused anonymous access (HTTP {response.status_code})")
        if response.status_code == 404:
            raise RegistryUnavailable(f"{ref.repository}:{reference} not found on {ref.api_host}")
        if response.status_code != 200:
            raise RegistryUnavailable(f"{ref.api_host} answered HTTP {response.status_code}")
        return response

    def _send(self, method: str, url: str, headers: dict[str, str]) -> requests.Response:
        try:
            return self.session.request(method, url, headers=headers, timeout=self.timeout, allow_redirects=True)
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"network error talking to {urllib.parse.urlsplit(url).netloc}: {exc}") from exc

    def _fetch_token(self, challenge: dict[str, str], ref: ImageReference) -> str:
        params = {}
        if challenge.get("service"):
            params["service"] = challenge["service"]
        params["scope"] = challenge.get("scope") or f"repository:{ref.repository}:pull"
        try:
            # No redirects: a redirect could lead from the checked realm anywhere (plain HTTP too).
            response = self.session.get(challenge["realm"], params=params, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"token service {challenge['realm']} unreachable: {exc}") from exc
        if response.status_code == 429:
            raise RegistryUnavailable("token service rate limit reached (HTTP 429)")
        if response.status_code != 200:
            raise RegistryUnavailable(f"token service answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise RegistryUnavailable("token service returned invalid JSON") from exc
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not token:
            raise RegistryUnavailable("token service returned no token")
        return str(token)

    def head_manifest(self, ref: ImageReference) -> tuple[str, str]:
        """(digest, media type) of the manifest a tag points at."""
        reference = ref.digest or ref.tag
        response = self._request("HEAD", ref, reference)
        digest = response.headers.get("Docker-Content-Digest", "")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if not _DIGEST_RE.match(digest):
            # Some registries omit the header on HEAD: GET and hash the bytes.
            response = self._request("GET", ref, reference)
            digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip() or media_type
        return digest, media_type

    def config_digest(self, ref: ImageReference, manifest_digest: str) -> str:
        """The config blob digest of an image manifest: the image ID a pull of it produces."""
        response = self._request("GET", ref, manifest_digest)
        try:
            digest = response.json()["config"]["digest"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryUnavailable(f"manifest {manifest_digest} names no config") from exc
        return str(digest)

    def get_index(self, ref: ImageReference, digest: str) -> dict[str, Any]:
        response = self._request("GET", ref, digest)
        try:
            body = response.json()
        except ValueError as exc:
            raise RegistryUnavailable(f"index {digest} is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("manifests"), list):
            raise RegistryUnavailable(f"index {digest} has no manifests list")
        return body


def _is_loopback(host: str) -> bool:
    """A registry on 127.0.0.0/8, which the Docker daemon itself talks to over plain HTTP (as insecure)."""
    try:
        return ipaddress.ip_address(host.rsplit(":", 1)[0]) in LOOPBACK_REGISTRIES
    except ValueError:
        return False


def pick_platform_digest(index: dict[str, Any], os_name: str, arch: str, variant: str = "") -> Optional[str]:
    """Digest of the index entry for this platform, or None when there is none.

    A missing variant on either side matches (Docker defaults arm64 to v8);
    attestation manifests (platform unknown/unknown) never match.
    """
    candidates = []
    for entry in index.get("manifests", []):
        platform = entry.get("platform") or {}
        if platform.get("os") != os_name or platform.get("architecture") != arch:
            continue
        entry_variant = platform.get("variant", "")
        if variant and entry_variant and _normal_variant(arch, entry_variant) != _normal_variant(arch, variant):
            continue
        candidates.append((entry_variant == variant, entry.get("digest", "")))
    candidates.sort(key=lambda item: not item[0])
    for _exact, digest in candidates:
        if _DIGEST_RE.match(digest):
            return digest
    return None


def _normal_variant(arch: str, variant: str) -> str:
    if arch == "arm64" and variant in ("", "v8"):
        return "v8"
    return variant


# --- the scanner ---------------------------------------------------------------


def engine_socket_path() -> str:
    """The Engine socket the Docker CLI would use: ``DOCKER_HOST`` when it names a unix:// socket."""
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://"):] if host.startswith("unix://") else DEFAULT_SOCKET_PATH


class DockerScanner(Scanner):
    package_type = PackageType.DOCKER

    def __init__(
        self,
        socket_path: Optional[str] = None,
        insecure_registries: Sequence[str] = (),
        registry_timeout: float = 20.0,
        engine_timeout: float = 30.0,
        session: Optional[requests.Session] = None,
        settle_seconds: float = 10.0,
        health_timeout: float = 120.0,
    ) -> None:
        self.engine = EngineClient(socket_path or engine_socket_path(), engine_timeout)
        self.registry = RegistryClient(insecure_registries, registry_timeout, session)
        # A recreated container without a health check must keep running settle_seconds.
        self.recreator = Recreator(self.engine, settle_seconds, health_timeout)
        # Images the last scan could not check, with the reason: never updates.
        self.last_not_checked: list[dict[str, str]] = []

    def is_available(self) -> bool:
        return self.engine.ping()

    def _host_platform(self) -> tuple[str, str, str]:
        version = self.engine.get_json("/version")
        os_name = str(version.get("Os") or "linux")
        arch = str(version.get("Arch") or "amd64")
        variant = "v8" if arch == "arm64" else ("v7" if arch == "arm" else "")
        return os_name, arch, variant

    def _local_images(self) -> list[dict[str, Any]]:
        images = self.engine.get_json("/images/json")
        if not isinstance(images, list):
            raise ScanError("Docker Engine /images/json did not return a list")
        return images

    def scan(self) -> list[UpdateRecord]:
        platform = self._host_platform()
        records: list[UpdateRecord] = []
        self.last_not_checked = []
        for image in self._local_images():
            digests_by_repo = _repo_digests(image.get("RepoDigests") or [])
            for tagged in image.get("RepoTags") or []:
                if tagged == "<none>:<none>" or tagged.endswith(":<none>"):
                    continue
                # A tag the server would refuse as a name is not worth a registry request either.
                problem = self.name_problem(tagged)
                if problem is not None:
                    self.last_not_checked.append({"name": tagged, "reason": f"not a reportable image name: {problem}"})
                    continue
                ref = ImageReference.parse(tagged)
                local_digests = digests_by_repo.get(ref.repo_key, [])
                if not local_digests:
                    self.last_not_checked.append({
                        "name": tagged,
                        "reason": "no RepoDigest for this repository (built or loaded locally)",
                    })
                    continue
                never = [container for container in running_containers(self.engine, image.get("Id", ""), ref)
                         if container.policy == NEVER]
                if never:
                    self.last_not_checked.append({"name": tagged, "reason": "not checked: " + held_back(never)[0]})
                    continue
                try:
                    remote = self._resolve_remote(ref, platform)
                    if self._is_current(ref, image, local_digests, remote):
                        continue
                except RegistryUnavailable as exc:
                    self.last_not_checked.append({"name": tagged, "reason": str(exc)})
                    continue
                records.append(self._record(tagged, ref, image, local_digests, remote, platform))
        return records

    def _is_current(self, ref: ImageReference, image: dict[str, Any], local_digests: list[str],
                    remote: dict[str, Any]) -> bool:
        """Whether a pull would leave this image as it is, the Engine's way of deciding.

        A local RepoDigest equal to the remote digest or to this platform's manifest digest settles
        it. Otherwise the manifest this host would pull is fetched: its config digest is the image
        ID the pull would produce, so an equal local image ID means "Image is up to date" - the
        case of an index whose other platforms changed (``docker pull`` records only the index
        digest, which then differs).
        """
        manifest_digest = remote["platform_digest"] or remote["digest"]
        if remote["digest"] in local_digests or manifest_digest in local_digests:
            return True
        return self.registry.config_digest(ref, manifest_digest) == image.get("Id")

    def _resolve_remote(self, ref: ImageReference, platform: tuple[str, str, str]) -> dict[str, Any]:
        digest, media_type = self.registry.head_manifest(ref)
        platform_digest = None
        if media_type in INDEX_MEDIA_TYPES:
            index = self.registry.get_index(ref, digest)
            platform_digest = pick_platform_digest(index, *platform)
            if platform_digest is None:
                raise RegistryUnavailable(
                    f"{ref} has no manifest for {'/'.join(p for p in platform if p)}"
                )
        return {"digest": digest, "media_type": media_type, "platform_digest": platform_digest}

    def _record(
        self,
        tagged: str,
        ref: ImageReference,
        image: dict[str, Any],
        local_digests: list[str],
        remote: dict[str, Any],
        platform: tuple[str, str, str],
    ) -> UpdateRecord:
        return UpdateRecord(
            package_type=self.package_type,
            name=tagged,
            current_version=f"{ref.tag}@{short_digest(local_digests[0])}",
            available_version=f"{ref.tag}@{short_digest(remote['digest'])}",
            severity="unknown",
            is_security=False,
            repository=ref.domain,
            size_bytes=image.get("Size") if isinstance(image.get("Size"), int) else None,
            metadata={
                "image_id": image.get("Id", ""),
                "current_digests": list(local_digests),
                "remote_digest": remote["digest"],
                "remote_media_type": remote["media_type"],
                "remote_platform_digest": remote["platform_digest"] or "",
                "platform": "/".join(p for p in platform if p),
                "reference": str(ref),
            },
        )

    def extra_name_problem(self, name: str) -> Optional[str]:
        """Stricter than the grammar: the reference must parse the way Docker reads it. "MyHost/app"
        passes the grammar (an upper-case registry host) but, without a "." or ":" in it, Docker reads
        MyHost as part of the repository path, which must be lower case.

        No "--" applies here: a name never reaches a command line, only the Engine API's
        ``fromImage`` query parameter (URL-encoded) and the registry URL's path.
        """
        try:
            ImageReference.parse(name)
        except ValueError as exc:
            return str(exc)
        return None

    def _dry_run(self, names: list[str]) -> OperationResult:
        started = time.monotonic()
        platform = self._host_platform()
        packages: list[dict[str, str]] = []
        lines: list[str] = []
        ok = True
        for name in names:
            ref = ImageReference.parse(name)
            try:
                remote = self._resolve_remote(ref, platform)
            except RegistryUnavailable as exc:
                ok = False
                lines.append(f"{name}: cannot check: {exc}")
                continue
            local = self.engine.image(str(ref))
            containers = running_containers(self.engine, local["Id"], ref) if local else []
            held = held_back(containers)
            if held:
                ok = False
                lines.append(f"{name}: would NOT pull, containers held by policy:")
                lines.extend(f"  {line}" for line in held)
                continue
            packages.append({
                "name": name,
                "reference": str(ref),
                "available_version": f"{ref.tag}@{short_digest(remote['digest'])}",
                "remote_digest": remote["digest"],
                "remote_platform_digest": remote["platform_digest"] or "",
                "containers": ", ".join(container.name for container in containers),
            })
            lines.append(f"would pull {ref} ({remote['digest']})")
            for unit in units(containers):
                lines.extend(f"  {line}" for line in plan_lines(unit, *self._compose_argv(unit)))
            if not containers:
                lines.append("  no running container uses this image: only the pull")
        return OperationResult(
            succeeded=ok,
            exit_code=0 if ok else 1,
            output_tail=tail("\n".join(lines)),
            duration_seconds=time.monotonic() - started,
            packages=packages,
        )

    def _install(self, names: list[str]) -> OperationResult:
        started = time.monotonic()
        packages: list[dict[str, str]] = []
        lines: list[str] = []
        ok = True
        for name in names:
            try:
                succeeded, entry = self._update_image(ImageReference.parse(name), name, lines)
            except ScanError as exc:
                succeeded, entry = False, None
                lines.append(f"{name}: FAILED: {exc}")
            ok = ok and succeeded
            if entry is not None:
                packages.append(entry)
        return OperationResult(
            succeeded=ok,
            exit_code=0 if ok else 1,
            output_tail=tail("\n".join(lines)),
            duration_seconds=time.monotonic() - started,
            packages=packages,
        )

    @functools.cached_property
    def compose_tool(self) -> Optional[list[str]]:
        """The compose tool's argv prefix, looked for once, when a compose project is first updated."""
        return compose_tool()

    def _recreate(self, containers: list[Container], old: dict[str, Any], ref: ImageReference,
                  lines: list[str]) -> bool:
        """Recreate the containers of the previous image, unit by unit; True when every unit came up."""
        defaults = image_defaults(self.engine, old)
        succeeded = True
        for unit in units(containers):
            argv, why_not = self._compose_argv(unit)
            if argv is not None:
                restore = functools.partial(self._tag, old["Id"], ref)
                unit_succeeded = self.recreator.recreate_with_compose(unit, argv, restore, lines)
            else:
                if unit[0].project:
                    lines.append(f"{unit[0].unit}: recreated through the Engine API keeping its compose labels "
                                 f"({why_not})")
                unit_succeeded = self.recreator.recreate_unit(unit, defaults, str(ref), lines)
            succeeded = unit_succeeded and succeeded
        return succeeded

    def _tag(self, image_id: str, ref: ImageReference) -> None:
        """Point the reference's tag at ``image_id`` (the previous image, after a failed update)."""
        self.engine.expect("POST", f"/images/{image_id}/tag?" + urllib.parse.urlencode(
            {"repo": ref.engine_name, "tag": ref.tag}), (201, 200))

    def _compose_argv(self, unit: list[Container]) -> tuple[Optional[list[str]], str]:
        """(the compose tool's argv for a compose unit, "") or (None, why not: the Engine API recreates it)."""
        if not unit[0].project:
            return None, ""
        if not self.compose_tool:
            return None, "the compose tool is not on this host"
        return compose_up_argv(self.compose_tool, unit)

    def _registry_digest(self, ref: ImageReference) -> str:
        """The digest the registry names for the tag now ("" when the anonymous client cannot ask it).

        Docker's pull stream says which digest it pulled; podman's does not, and its RepoDigests
        list one digest per manifest the image was ever stored under.
        """
        try:
            return self.registry.head_manifest(ref)[0]
        except RegistryUnavailable:
            return ""

    def _update_image(self, ref: ImageReference, name: str, lines: list[str]) -> tuple[bool, Optional[dict[str, str]]]:
        """Pull one image and recreate its running containers: (succeeded, the result's package entry).

        1. Containers held by policy (notify, never): nothing is pulled, the update fails.
        2. Pull; the image ID unchanged means nothing to recreate.
        3. Recreate unit by unit (docker_recreate); a unit that does not come up is rolled back and
           the tag is moved back to the previous image, so the reference names what runs.
        """
        image_name = str(ref)
        old = self.engine.image(image_name)
        containers = running_containers(self.engine, old["Id"], ref) if old else []
        held = held_back(containers)
        if held:
            lines.append(f"{name}: not pulled, containers held by policy:")
            lines.extend(f"  {line}" for line in held)
            return False, None
        pulled, progress = self.engine.pull(ref.engine_name, ref.digest or ref.tag)
        lines.append(f"$ pull {ref}")
        lines.extend(progress)
        if not pulled:
            lines.append(f"{name}: pull FAILED")
            return False, None
        new = self.engine.image(image_name) or {}
        entry = {
            "name": name,
            "reference": image_name,
            "old_digest": ", ".join(_repo_digests((old or {}).get("RepoDigests") or []).get(ref.repo_key, [])),
            "digest": _pulled_digest(progress) or self._registry_digest(ref),
            "old_image_id": (old or {}).get("Id", ""),
            "image_id": new.get("Id", ""),
            "containers": "",
        }
        if old is None or new.get("Id") == old["Id"]:
            lines.append(f"{name}: image unchanged, no container recreated" if old else
                         f"{name}: pulled, no container used a previous image")
            return True, entry
        succeeded = self._recreate(containers, old, ref, lines)
        entry["containers"] = ", ".join(container.name for container in containers)
        if not succeeded:
            self._tag(old["Id"], ref)
            lines.append(f"{name}: tag moved back to the previous image {old['Id']}")
        return succeeded, entry


def _pulled_digest(progress: Sequence[str]) -> str:
    """The digest a pull stream names on its ``Digest:`` line ("" when it names none)."""
    for line in progress:
        if line.startswith("Digest: "):
            return line[len("Digest: "):].strip()
    return ""


def _repo_digests(repo_digests: Sequence[str]) -> dict[tuple[str, str], list[str]]:
    by_repo: dict[tuple[str, str], list[str]] = {}
    for entry in repo_digests:
        try:
            ref = ImageReference.parse(entry)
        except ValueError:
            continue
        if ref.digest:
            by_repo.setdefault(ref.repo_key, []).append(ref.digest)
    return by_repo
