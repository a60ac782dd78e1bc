"""DockerScanner: what a real engine here cannot show, against a real registry and recorded Engine answers.

The scanner's Engine side runs against a real engine (podman's Docker API) in
test_docker_engine.py. What stays here, and why:

- Docker's own answers, which podman gives differently: ``docker pull`` of a
  multi-arch tag records only the index digest as RepoDigest (podman adds the
  platform manifest's); a built image has no RepoDigest (podman records one);
  Docker's pull stream (a ``Digest:`` line, byte-level progress ticks) and its
  refusals (an ``error`` object mid-stream, no space left on device; HTTP 404).
  These are the hand-written Engine API v1.43 fixtures in ``docker_fixtures/``
  (see its README), served by :class:`FakeEngine` on a Unix socket.
- Registries that refuse (429, Bearer-token auth, token services elsewhere):
  scripted loopback HTTP servers whose images no engine can pull, so the
  images are listed by :class:`FakeEngine`.
- Pure helpers (reference normalization, the platform pick).

Registry side: Debian's ``docker-registry`` (distribution 2.8) started by the
test on a free loopback port (:func:`start_registry`), images pushed through
the registry HTTP API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import ipaddress
import json
import os
import socket
import socketserver
import ssl
import string
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Optional

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent_client.executor import CommandExecutor, ExecutedLedger
from agent_client.outbox import Outbox
from agent_client.scanners.docker import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    DockerScanner,
    ImageReference,
    pick_platform_digest,
)
from tests.agent.conftest import require_tools
from tests.agent.test_executor import AGENT_ID, Signer

FIXTURES = Path(__file__).parent / "docker_fixtures"


# --- a real registry ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Registry:
    def __init__(self, host: str) -> None:
        self.host = host
        self.base = f"http://{host}"

    def put_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = requests.post(f"{self.base}/v2/{repo}/blobs/uploads/", timeout=10)
        assert started.status_code == 202, started.text
        location = urllib.parse.urljoin(self.base, started.headers["Location"])
        sep = "&" if "?" in location else "?"
        done = requests.put(
            f"{location}{sep}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=10,
        )
        assert done.status_code == 201, done.text
        return digest

    def put_manifest(self, repo: str, reference: str, manifest: dict, media_type: str) -> str:
        body = json.dumps(manifest).encode()
        response = requests.put(
            f"{self.base}/v2/{repo}/manifests/{reference}",
            data=body,
            headers={"Content-Type": media_type},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        digest = response.headers["Docker-Content-Digest"]
        assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
        return digest

    def push_image(self, repo: str, tag: Optional[str], arch: str, marker: str, oci: bool = False) -> tuple[str, int]:
        """Push a one-layer image; returns (manifest digest, manifest size)."""
        layer = f"layer for {repo} {arch} {marker}".encode()
        config = json.dumps({
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"marker": marker}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        }).encode()
        config_digest = self.put_blob(repo, config)
        layer_digest = self.put_blob(repo, layer)
        media_type = MEDIA_OCI_MANIFEST if oci else MEDIA_DOCKER_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json" if oci
                else "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": config_digest,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar" if oci
                else "application/vnd.docker.image.rootfs.diff.tar",
                "size": len(layer),
                "digest": layer_digest,
            }],
        }
        body_size = len(json.dumps(manifest).encode())
        digest = self.put_manifest(repo, tag or "sha256:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest(),
                                   manifest, media_type)
        return digest, body_size

    def manifest(self, repo: str, digest: str) -> dict:
        response = requests.get(f"{self.base}/v2/{repo}/manifests/{digest}", timeout=5,
                                headers={"Accept": f"{MEDIA_OCI_MANIFEST}, {MEDIA_DOCKER_MANIFEST}"})
        assert response.status_code == 200, response.text
        return response.json()

    def push_index(self, repo: str, tag: str, entries: list[tuple[str, int, dict[str, str]]], oci: bool) -> str:
        media_type = MEDIA_OCI_INDEX if oci else MEDIA_DOCKER_MANIFEST_LIST
        child_type = MEDIA_OCI_MANIFEST if oci else MEDIA_DOCKER_MANIFEST
        index = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                {"mediaType": child_type, "digest": digest, "size": size, "platform": platform}
                for digest, size, platform in entries
            ],
        }
        return self.put_manifest(repo, tag, index, media_type)

    def push_multi(self, repo: str, tag: str, marker: str, oci: bool) -> dict[str, str]:
        amd64 = self.push_image(repo, None, "amd64", marker, oci)
        arm64 = self.push_image(repo, None, "arm64", marker, oci)
        index = self.push_index(repo, tag, [
            (amd64[0], amd64[1], {"architecture": "amd64", "os": "linux"}),
            (arm64[0], arm64[1], {"architecture": "arm64", "os": "linux", "variant": "v8"}),
        ], oci)
        return {"index": index, "amd64": amd64[0], "arm64": arm64[0]}


def start_registry(directory: Path) -> tuple[Registry, Callable[[], None]]:
    """Debian's docker-registry on a free loopback port, storing under ``directory``: (registry, stop)."""
    require_tools("docker-registry")
    port = _free_port()
    storage = directory / "registry-storage"
    storage.mkdir()
    config = directory / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(directory / "registry.log", "wb")
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(f"{base}/v2/", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop()
            pytest.fail("docker-registry did not start: " + (directory / "registry.log").read_text())
        time.sleep(0.1)
    return Registry(f"127.0.0.1:{port}"), stop


@pytest.fixture
def registry(tmp_path, request) -> Registry:
    started, stop = start_registry(tmp_path)
    request.addfinalizer(stop)
    return started


# --- a fake Docker Engine on a Unix socket ------------------------------------


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeEngine:
    """Serves the recorded Engine API responses; records what it was asked."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.images: list = []
        self.pull_status = 200
        self.pull_body = b""
        self.requests: list[tuple[str, str]] = []
        engine = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send_json(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Api-Version", "1.43")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                engine.requests.append(("GET", self.path))
                if self.path == "/_ping":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"OK")
                elif self.path == "/version":
                    self._send_json(200, (FIXTURES / "version.json").read_bytes())
                elif self.path.startswith("/images/json"):
                    self._send_json(200, json.dumps(engine.images).encode())
                elif self.path.startswith("/containers/json"):
                    self._send_json(200, b"[]")  # no container runs: the recreation is test_docker_engine's
                else:
                    self._send_json(404, b'{"message":"page not found"}')

            def do_POST(self) -> None:
                engine.requests.append(("POST", self.path))
                if not self.path.startswith("/images/create"):
                    self._send_json(404, b'{"message":"page not found"}')
                    return
                if engine.pull_status != 200:
                    self._send_json(engine.pull_status, engine.pull_body)
                    return
                # Stream the progress the way the Engine does: chunked, one JSON object a line.
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in engine.pull_body.splitlines(keepends=True):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

        self.server = _UnixHTTPServer(socket_path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def engine(tmp_path, request) -> FakeEngine:
    # AF_UNIX paths are limited to ~107 bytes; tmp_path can be longer.
    sock_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    path = str(sock_dir / f"rf-docker-{os.getpid()}-{abs(hash(str(tmp_path))) % 10**8}.sock")
    if os.path.exists(path):
        os.unlink(path)
    fake = FakeEngine(path)

    def stop() -> None:
        fake.close()
        if os.path.exists(path):
            os.unlink(path)

    request.addfinalizer(stop)
    return fake


def render(name: str, **values: str) -> str:
    return string.Template((FIXTURES / name).read_text()).safe_substitute(**values)


def set_images(engine: FakeEngine, registry: Registry, app_digest: str, multi_digest: str,
               multi_id: str = "sha256:" + "a8" * 32) -> None:
    engine.images = json.loads(render(
        "images_json.template.json", registry=registry.host, app_digest=app_digest, multi_digest=multi_digest,
        multi_id=multi_id,
    ))


def scanner_for(engine: FakeEngine, registry_host: str) -> DockerScanner:
    return DockerScanner(socket_path=engine.socket_path, insecure_registries=[registry_host], registry_timeout=5)


# --- tests: real registry ----------------------------------------------------


def test_up_to_date_images_give_no_update(engine, registry):
    app = registry.push_image("app", "1.0", "amd64", "v1")[0]
    multi = registry.push_multi("multi", "latest", "v1", oci=True)
    set_images(engine, registry, app, multi["amd64"])

    scanner = scanner_for(engine, registry.host)
    assert scanner.is_available()
    assert scanner.scan() == []
    # The locally built image cannot be compared; the dangling one is skipped.
    assert scanner.last_not_checked == [{
        "name": f"{registry.host}/built:dev",
        "reason": "no RepoDigest for this repository (built or loaded locally)",
    }]


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-manifest-list"])
def test_docker_records_only_the_index_digest_yet_only_the_hosts_platform_decides(engine, registry, oci):
    """Issue 14 as Docker shows it: after ``docker pull`` of a multi-arch tag the RepoDigest is the index
    digest only (podman also records the platform manifest's: test_docker_engine shows that side). A new
    index whose amd64 manifest is unchanged is "Image is up to date" for an amd64 pull: no update."""
    app = registry.push_image("app", "1.0", "amd64", "v1")[0]
    first = registry.push_multi("multi", "latest", "v1", oci=oci)
    # The image ID Docker gives a pulled image is its config digest.
    image_id = registry.manifest("multi", first["amd64"])["config"]["digest"]
    set_images(engine, registry, app, first["index"], multi_id=image_id)
    scanner = scanner_for(engine, registry.host)
    assert scanner.scan() == []

    arm64_new = registry.push_image("multi", None, "arm64", "v2", oci)
    amd64_size = len(json.dumps(registry.manifest("multi", first["amd64"])).encode())
    new_index = registry.push_index("multi", "latest", [
        (first["amd64"], amd64_size, {"architecture": "amd64", "os": "linux"}),
        (arm64_new[0], arm64_new[1], {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    ], oci)
    assert new_index != first["index"]
    assert scanner.scan() == []

    second = registry.push_multi("multi", "latest", "v2", oci=oci)
    records = scanner.scan()
    assert [r.name for r in records] == [f"{registry.host}/multi:latest"]
    meta = records[0].metadata
    assert meta["current_digests"] == [first["index"]]
    assert meta["remote_digest"] == second["index"]
    assert meta["remote_platform_digest"] == second["amd64"]
    assert meta["remote_media_type"] == (MEDIA_OCI_INDEX if oci else MEDIA_DOCKER_MANIFEST_LIST)
    assert records[0].available_version == "latest@" + second["index"][7:19]


# --- tests: registries that refuse ---------------------------------------------


class _TinyRegistry:
    """A loopback HTTP server with a scripted handler (429s, token auth)."""

    def __init__(self, handler_factory) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_factory(self))
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _rate_limited_handler(owner):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            owner.seen.append(("HEAD", self.path, dict(self.headers)))
            self.send_response(429)
            self.send_header("Retry-After", "60")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

    return Handler


TOKEN = "anonymous-pull-token"
FAKE_DIGEST = "sha256:" + "ab" * 32
FAKE_CONFIG_DIGEST = "sha256:" + "ef" * 32


def _token_auth_handler(owner, realm=lambda owner: f"http://{owner.host}/token"):
    """A registry that serves its own tokens at /token; ``realm(owner)`` is the token service it names."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            owner.seen.append(("GET", self.path, dict(self.headers)))
            if self.path.startswith("/token"):
                body = json.dumps({"token": TOKEN, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.do_HEAD()

        def do_HEAD(self) -> None:
            if self.command == "HEAD":
                owner.seen.append(("HEAD", self.path, dict(self.headers)))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.send_header(
                    "WWW-Authenticate",
                    f'Bearer realm="{realm(owner)}",service="tiny.registry",'
                    f'scope="repository:team/tool:pull"',
                )
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            # A GET gets the manifest: its config digest is what the scanner compares with the image ID.
            body = json.dumps({"schemaVersion": 2, "config": {"digest": FAKE_CONFIG_DIGEST}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", MEDIA_DOCKER_MANIFEST)
            self.send_header("Docker-Content-Digest", FAKE_DIGEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

    return Handler


@pytest.fixture
def tiny_registry(request):
    servers = []

    def start(handler_factory):
        server = _TinyRegistry(handler_factory)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _image(tag: str, digest: str) -> dict:
    repo = tag.rsplit(":", 1)[0]
    return {
        "Containers": -1, "Created": 1717171717, "Id": "sha256:" + "cd" * 32, "Labels": None,
        "ParentId": "", "RepoDigests": [f"{repo}@{digest}"], "RepoTags": [tag],
        "SharedSize": -1, "Size": 1000, "VirtualSize": 1000,
    }


def test_rate_limited_registry_means_not_checked_never_an_update(engine, tiny_registry):
    limited = tiny_registry(_rate_limited_handler)
    dead_port = _free_port()  # nothing listens here: a network error
    engine.images = [
        _image(f"{limited.host}/app:1.0", "sha256:" + "11" * 32),
        _image(f"127.0.0.1:{dead_port}/other:2", "sha256:" + "22" * 32),
    ]
    scanner = DockerScanner(
        socket_path=engine.socket_path,
        insecure_registries=[limited.host, f"127.0.0.1:{dead_port}"],
        registry_timeout=5,
    )

    assert scanner.scan() == []
    not_checked = {entry["name"]: entry["reason"] for entry in scanner.last_not_checked}
    assert not_checked[f"{limited.host}/app:1.0"] == f"{limited.host} rate limit reached (HTTP 429, Retry-After 60)"
    assert not_checked[f"127.0.0.1:{dead_port}/other:2"].startswith(f"network error talking to 127.0.0.1:{dead_port}")
    assert limited.seen[0][0] == "HEAD"


def test_bearer_challenge_fetches_anonymous_token_and_retries(engine, tiny_registry):
    authed = tiny_registry(_token_auth_handler)
    engine.images = [_image(f"{authed.host}/team/tool:3", "sha256:" + "33" * 32)]
    scanner = DockerScanner(socket_path=engine.socket_path, insecure_registries=[authed.host], registry_timeout=5)

    records = scanner.scan()

    assert scanner.last_not_checked == []
    assert [(r.name, r.metadata["remote_digest"]) for r in records] == [(f"{authed.host}/team/tool:3", FAKE_DIGEST)]
    methods_paths = [(method, path.split("?")[0]) for method, path, _ in authed.seen]
    assert methods_paths == [
        ("HEAD", "/v2/team/tool/manifests/3"),
        ("GET", "/token"),
        ("HEAD", "/v2/team/tool/manifests/3"),
        ("GET", f"/v2/team/tool/manifests/{FAKE_DIGEST}"),  # its config digest is no local image ID
    ]
    token_query = urllib.parse.parse_qs(urllib.parse.urlsplit(authed.seen[1][1]).query)
    assert token_query == {"service": ["tiny.registry"], "scope": ["repository:team/tool:pull"]}
    assert authed.seen[2][2]["Authorization"] == f"Bearer {TOKEN}"
    assert MEDIA_OCI_INDEX in authed.seen[0][2]["Accept"]


def _https_token_service(owner, cert_dir: Path):
    """The token half of _token_auth_handler, over TLS with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (cert_dir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_dir / "cert.pem"), str(cert_dir / "key.pem"))
    owner.server.socket = context.wrap_socket(owner.server.socket, server_side=True)
    return owner


def _only_tokens(owner):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            owner.seen.append(("GET", self.path, dict(self.headers)))
            body = json.dumps({"token": TOKEN, "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.mark.parametrize("realm_of", [
    lambda registry, elsewhere: f"http://{elsewhere.host}/token",  # plain HTTP, another port
    lambda registry, elsewhere: f"http://localhost:{registry.host.rsplit(':', 1)[1]}/token",  # another host name
    lambda registry, elsewhere: f"ftp://{elsewhere.host}/token",
    lambda registry, elsewhere: "/token",  # no origin at all
], ids=["http-other-port", "http-other-host", "ftp", "relative"])
def test_a_token_service_neither_https_nor_the_registrys_own_is_never_asked(engine, tiny_registry, tmp_path,
                                                                             realm_of):
    elsewhere = tiny_registry(_only_tokens)  # would hand out a token to anyone who asks
    registry = tiny_registry(lambda owner: _token_auth_handler(owner, realm=lambda o: realm_of(o, elsewhere)))
    engine.images = [_image(f"{registry.host}/team/tool:3", "sha256:" + "33" * 32)]
    scanner = DockerScanner(socket_path=engine.socket_path, insecure_registries=[registry.host], registry_timeout=5)
    realm = realm_of(registry, elsewhere)

    assert scanner.scan() == []

    reason = f"token service {realm!r} is neither HTTPS nor the registry's own origin; not asked"
    assert scanner.last_not_checked == [{"name": f"{registry.host}/team/tool:3", "reason": reason}]
    assert elsewhere.seen == []
    assert [(method, path) for method, path, _ in registry.seen] == [("HEAD", "/v2/team/tool/manifests/3")]

    # The scan report the executor queues says so, in one line of not_checked.
    signer = Signer()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    executor = CommandExecutor(agent_id=AGENT_ID, signing_keys=[signer.public], outbox=outbox,
                               ledger=ExecutedLedger(tmp_path / "executed.sqlite3"), scanners={"docker": scanner},
                               system_facts=dict, record=lambda event: None)
    assert executor.handle(signer.command("scan_docker", {"package_type": "docker"})) == "succeeded"
    report = outbox.pending()[0].payload
    assert report["updates"] == [] and report["not_checked"] == [f"{registry.host}/team/tool:3: {reason}"]
    assert elsewhere.seen == []


def test_an_https_token_service_on_another_host_is_asked(engine, tiny_registry, tmp_path, monkeypatch):
    # requests lets these override a session's own verify= (psf/requests#3829): trust only the test's certificate.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    tokens = _https_token_service(tiny_registry(_only_tokens), tmp_path)
    registry = tiny_registry(lambda owner: _token_auth_handler(owner, realm=lambda o: f"https://{tokens.host}/token"))
    engine.images = [_image(f"{registry.host}/team/tool:3", "sha256:" + "33" * 32)]
    session = requests.Session()
    session.verify = str(tmp_path / "cert.pem")
    scanner = DockerScanner(socket_path=engine.socket_path, insecure_registries=[registry.host], registry_timeout=5,
                            session=session)

    records = scanner.scan()

    assert scanner.last_not_checked == []
    assert [(r.name, r.metadata["remote_digest"]) for r in records] == [(f"{registry.host}/team/tool:3", FAKE_DIGEST)]
    assert [path.split("?")[0] for _, path, _ in tokens.seen] == ["/token"]


def test_a_token_service_redirect_is_not_followed(engine, tiny_registry):
    elsewhere = tiny_registry(_only_tokens)
    # The realm is the registry's own origin, which answers with a redirect to plain HTTP elsewhere.
    registry = tiny_registry(lambda owner: _token_auth_handler(owner))
    registry_handler = registry.server.RequestHandlerClass

    class Redirecting(registry_handler):
        def do_GET(self) -> None:
            if self.path.startswith("/token"):
                self.send_response(302)
                self.send_header("Location", f"http://{elsewhere.host}/token")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

    registry.server.RequestHandlerClass = Redirecting
    engine.images = [_image(f"{registry.host}/team/tool:3", "sha256:" + "33" * 32)]
    scanner = DockerScanner(socket_path=engine.socket_path, insecure_registries=[registry.host], registry_timeout=5)

    assert scanner.scan() == []
    assert scanner.last_not_checked == [{"name": f"{registry.host}/team/tool:3",
                                         "reason": "token service answered HTTP 302"}]
    assert elsewhere.seen == []


# --- tests: Docker's own pull streams, recorded ----------------------------------


def posts(engine: FakeEngine) -> list[tuple[str, str]]:
    return [request for request in engine.requests if request[0] == "POST"]



def test_install_pulls_via_engine_and_parses_progress(engine):
    engine.pull_body = render("pull_ok.jsonl", registry="127.0.0.1:5999").encode()
    scanner = DockerScanner(socket_path=engine.socket_path)

    result = scanner.install(["127.0.0.1:5999/app:1.0"])

    assert result.succeeded is True
    assert result.exit_code == 0
    assert posts(engine) == [("POST", "/images/create?fromImage=127.0.0.1%3A5999%2Fapp&tag=1.0")]
    assert result.packages == [{
        "name": "127.0.0.1:5999/app:1.0",
        "reference": "127.0.0.1:5999/app:1.0",
        "old_digest": "",
        "digest": "sha256:c5b1261d6d3e43071626931fc004f70149baeba2c8ec672bd4f27761f8e1ad6b",
        "old_image_id": "",
        "image_id": "",
        "containers": "",
    }]
    assert "4abcf2066143: Pull complete" in result.output_tail
    assert "Status: Downloaded newer image for 127.0.0.1:5999/app:1.0" in result.output_tail
    assert "32.77kB/3.409MB" not in result.output_tail  # byte ticks are dropped


def test_install_error_in_stream_is_a_failure(engine):
    engine.pull_body = (FIXTURES / "pull_error.jsonl").read_bytes()
    result = DockerScanner(socket_path=engine.socket_path).install(["nginx:1.25"])

    assert posts(engine) == [("POST", "/images/create?fromImage=nginx&tag=1.25")]
    assert result.succeeded is False
    assert result.exit_code == 1
    assert result.packages == []
    assert "error: failed to register layer" in result.output_tail
    assert "no space left on device" in result.output_tail


def test_install_refused_by_engine_is_a_failure(engine):
    engine.pull_status = 404
    engine.pull_body = render("pull_not_found.json", registry="127.0.0.1:5999").encode()
    result = DockerScanner(socket_path=engine.socket_path).install(["127.0.0.1:5999/app:9.9"])

    assert result.succeeded is False
    assert "HTTP 404: manifest for 127.0.0.1:5999/app:9.9 not found" in result.output_tail


def test_unreachable_socket_is_unavailable(tmp_path):
    assert DockerScanner(socket_path=str(tmp_path / "nothing.sock")).is_available() is False


# --- pure helpers ------------------------------------------------------------------


@pytest.mark.parametrize("text,domain,repository,tag,api_host,engine_name", [
    ("nginx", "docker.io", "library/nginx", "latest", "registry-1.docker.io", "nginx"),
    ("nginx:1.25", "docker.io", "library/nginx", "1.25", "registry-1.docker.io", "nginx"),
    ("docker.io/library/nginx:1", "docker.io", "library/nginx", "1", "registry-1.docker.io", "nginx"),
    ("grafana/grafana:10.2.0", "docker.io", "grafana/grafana", "10.2.0", "registry-1.docker.io", "grafana/grafana"),
    ("ghcr.io/org/app:v1", "ghcr.io", "org/app", "v1", "ghcr.io", "ghcr.io/org/app"),
    ("localhost:5000/app", "localhost:5000", "app", "latest", "localhost:5000", "localhost:5000/app"),
    ("localhost/app:2", "localhost", "app", "2", "localhost", "localhost/app"),
])
def test_reference_normalization(text, domain, repository, tag, api_host, engine_name):
    ref = ImageReference.parse(text)
    assert (ref.domain, ref.repository, ref.tag, ref.api_host, ref.engine_name) == (
        domain, repository, tag, api_host, engine_name,
    )


def test_repo_digest_reference_has_digest_and_no_tag():
    ref = ImageReference.parse("nginx@sha256:" + "0" * 64)
    assert (ref.repo_key, ref.tag, ref.digest) == (("docker.io", "library/nginx"), "", "sha256:" + "0" * 64)


def test_platform_pick_ignores_attestations_and_handles_variants():
    index = {"manifests": [
        {"digest": "sha256:" + "a" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:" + "b" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        {"digest": "sha256:" + "c" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "sha256:" + "d" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:" + "e" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
    ]}
    assert pick_platform_digest(index, "linux", "amd64") == "sha256:" + "a" * 64
    assert pick_platform_digest(index, "linux", "arm", "v7") == "sha256:" + "c" * 64
    assert pick_platform_digest(index, "linux", "arm64", "v8") == "sha256:" + "d" * 64
    assert pick_platform_digest(index, "windows", "amd64") is None
