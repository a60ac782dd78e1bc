"""The installers: rendered from templates with the configured public URL, checked, and linux.sh run for real.

The Windows script is only rendered and statically checked here: there is no PowerShell on this machine.
The real Linux run uses REDFLAG_PREFIX (no systemd, no system user, no OS packages: the venv's python3
already imports requests, psutil and cryptography, so the script skips the package step and says so).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from agents_app.models import Agent, AgentRelease
from agents_app.services.releases import release_build, release_create_from_upload, release_revoke
from redflag.models import ServerSettings
from tokens_app.services import token_create

PUBLIC_URL = "https://redflag.example.net"
SCRIPTS = ["linux.sh", "uninstall.sh", "windows.ps1"]


@pytest.fixture(autouse=True)
def _release_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


def set_public_url(url: str) -> None:
    server_settings = ServerSettings.current()
    server_settings.public_url = url
    server_settings.save()


@pytest.mark.django_db
class TestRendering:
    @pytest.mark.parametrize("script", SCRIPTS)
    def test_public_url_used_and_host_header_ignored(self, client, script, settings):
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "host-header.example"]  # an allowed, yet ignored, Host
        set_public_url(PUBLIC_URL + "/")
        response = client.get(f"/install/{script}", HTTP_HOST="host-header.example",
                              HTTP_X_FORWARDED_HOST="evil.example")
        assert response.status_code == 200
        body = response.content.decode()
        assert f"'{PUBLIC_URL}'" in body
        assert "host-header.example" not in body and "evil.example" not in body and "testserver" not in body
        assert "{{" not in body and "{%" not in body and "&#" not in body and "&amp;" not in body

    @pytest.mark.parametrize("script", SCRIPTS)
    @pytest.mark.parametrize("url", ["", "https://x.example/'; rm -rf / #", "ftp://x.example"])
    def test_unset_or_unsafe_public_url_is_503(self, client, script, url):
        set_public_url(url) if "'" not in url else _force_public_url(url)
        response = client.get(f"/install/{script}")
        assert response.status_code == 503
        assert "public URL is not configured" in response.content.decode()

    def test_unknown_script_404(self, client):
        set_public_url(PUBLIC_URL)
        response = client.get("/install/macos.sh")
        assert response.status_code == 404
        assert response.content == b"No such installer.\n"  # plain text, no template rendered

    @pytest.mark.parametrize("script", ["linux.sh", "uninstall.sh"])
    def test_bash_syntax_and_shellcheck(self, client, tmp_path, script):
        set_public_url(PUBLIC_URL)
        path = tmp_path / script
        path.write_bytes(client.get(f"/install/{script}").content)
        assert path.read_text().startswith("#!/usr/bin/env bash\n")
        subprocess.run(["bash", "-n", str(path)], check=True)
        if shutil.which("shellcheck") is None:
            pytest.skip("shellcheck is not installed (bash -n passed)")
        result = subprocess.run(["shellcheck", "--severity=style", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout

    def test_windows_static_checks(self, client):
        """No pwsh here: render and check the structure and the steps the issue asks for."""
        set_public_url(PUBLIC_URL)
        body = client.get("/install/windows.ps1").content.decode()
        code = body.split("#>", 1)[1]
        assert code.lstrip().startswith("param(")
        for opening, closing in ("{}", "()", "[]"):
            assert code.count(opening) == code.count(closing), opening
        assert code.count("@'") == code.count("'@") == 1
        for step in ("$env:ProgramFiles", "$env:ProgramData", "sys.version_info >= (3, 9)", "Get-FileHash",
                     "release_manifest_bytes", "Ed25519PublicKey", "-AtStartup", "-UserId 'SYSTEM'",
                     "already registered", "Copy-Item $Config $backup", "/install/redflag-agent.pyz"):
            assert step in body, step


def _force_public_url(url: str) -> None:
    """A value the URLField validator would refuse, stored anyway: the view must still refuse to render it."""
    ServerSettings.current()
    ServerSettings.objects.filter(pk=1).update(public_url=url)
    ServerSettings.forget()


@pytest.mark.django_db
class TestInstallerDownloads:
    def test_public_artifact_is_the_latest_non_revoked(self, client):
        for url in ("/install/redflag-agent.pyz", "/install/manifest.json"):
            response = client.get(url)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found", url
        first = release_build(version="0.1.23")
        second = release_create_from_upload(upload=io.BytesIO(b"#!/usr/bin/env python3\n"), version="0.1.23.5",
                                            actor="admin")
        response = client.get("/install/redflag-agent.pyz")
        assert response["X-Content-SHA256"] == second.sha256
        assert client.get("/install/manifest.json").json()["version"] == "0.1.23.5"
        release_revoke(release=second, actor="admin")
        response = client.get("/install/redflag-agent.pyz?platform=any")
        assert hashlib.sha256(b"".join(response.streaming_content)).hexdigest() == first.sha256
        response = client.get("/install/manifest.json?platform=plan9")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


# --- the real run -------------------------------------------------------------------------------


def variant_of(pyz: bytes, marker: str) -> bytes:
    """The same working zipapp with one extra member: different bytes, same behaviour."""
    shebang, _, archive = pyz.partition(b"\n")
    buffer = io.BytesIO(archive)
    with zipfile.ZipFile(buffer, "a") as zipped:
        zipped.writestr("RELEASE", marker)
    return shebang + b"\n" + buffer.getvalue()


def installer_environment(prefix: Path, token: str | None = None) -> dict[str, str]:
    """What the one-liner gives the script: the token in the environment (export + sudo --preserve-env)."""
    environment = {**os.environ, "REDFLAG_PREFIX": str(prefix),
                   # python3 is the venv's, which has requests, psutil and cryptography.
                   "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    environment.pop("REDFLAG_REGISTRATION_TOKEN", None)
    if token:
        environment["REDFLAG_REGISTRATION_TOKEN"] = token
    return environment


def run_script(path: Path, prefix: Path, *args: str, token: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(path), *args], env=installer_environment(prefix, token),
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # no terminal to ask for a token on
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


class ProcessTableWatcher(threading.Thread):
    """Reads every process's command line (/proc/*/cmdline, which any local user may read) until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    self.seen.add(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass  # the process ended meanwhile

    def stop(self) -> set[str]:
        self.done.set()
        self.join(timeout=10)
        return self.seen


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer needs root")
@pytest.mark.django_db(transaction=True)
def test_linux_installer_for_real_twice_then_uninstall(live_server, tmp_path):
    set_public_url(live_server.url)
    first = release_build(version="0.1.23")
    first_bytes = first.artifact.read()
    first.artifact.close()
    _, token = token_create(label="installer", max_seats=5, expires_in=timedelta(hours=1))
    prefix = tmp_path / "root"
    config = prefix / "etc/redflag/agent/config.json"
    agent_file = prefix / "usr/local/lib/redflag/redflag-agent.pyz"
    installer = tmp_path / "linux.sh"
    installer.write_text(requests.get(f"{live_server.url}/install/linux.sh", timeout=10).text)

    # First run: a fresh install that registers, the token read from the environment.
    output = run_script(installer, prefix, token=token).stdout
    assert "fresh install" in output and "skipping OS packages" in output
    assert "systemd is not available" in output
    agent_id = json.loads(config.read_text())["agent_id"]
    assert Agent.objects.filter(pk=agent_id).count() == 1
    assert sha256_of(agent_file) == first.sha256
    unit = (prefix / "etc/systemd/system/redflag-agent.service").read_text()
    assert f"ExecStart=/usr/bin/env python3 {agent_file} --config {config} run" in unit
    assert "ProtectKernelModules=yes" in unit
    assert oct(config.stat().st_mode & 0o777) == "0o600"

    # A newer release (different bytes), then the second run: an in-place upgrade, no new agent.
    second = release_create_from_upload(upload=io.BytesIO(variant_of(first_bytes, "0.1.23.5")), version="0.1.23.5",
                                        actor="admin")
    output = run_script(installer, prefix, token=token).stdout
    assert "upgrading in place" in output and "already registered" in output
    assert json.loads(config.read_text())["agent_id"] == agent_id
    assert Agent.objects.count() == 1
    backups = list((prefix / "etc/redflag/agent/backups").glob("config-*.json"))
    assert len(backups) == 1 and json.loads(backups[0].read_text())["agent_id"] == agent_id
    assert sha256_of(agent_file) == second.sha256 != first.sha256
    assert sha256_of(agent_file.with_name("redflag-agent.pyz.previous")) == first.sha256
    # The installed agent works: it answers from the config the installer wrote.
    status = subprocess.run([sys.executable, str(agent_file), "--config", str(config), "status", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert agent_id in status.stdout

    # Uninstall: removes what the installer added and says what it kept.
    uninstaller = tmp_path / "uninstall.sh"
    uninstaller.write_text(requests.get(f"{live_server.url}/install/uninstall.sh", timeout=10).text)
    output = run_script(uninstaller, prefix).stdout
    assert not agent_file.parent.exists()
    assert not (prefix / "etc/systemd/system/redflag-agent.service").exists()
    assert config.exists() and "kept" in output and "--purge" in output
    run_script(uninstaller, prefix, "--purge")
    assert not config.parent.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer needs root")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("tamper, complaint", [
    ("flip_byte", "SHA-256"), ("unknown_key", "unknown key"), ("bad_signature", "signature does not verify"),
])
def test_linux_installer_refuses_a_tampered_release(live_server, tmp_path, tamper, complaint):
    """A flipped byte, a manifest signed by an unknown key, a wrong signature: the installer stops before it
    installs or registers anything."""
    set_public_url(live_server.url)
    release = release_build(version="0.1.23")
    if tamper == "flip_byte":
        path = Path(release.artifact.path)
        data = bytearray(path.read_bytes())
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))
    elif tamper == "unknown_key":
        AgentRelease.objects.filter(pk=release.pk).update(key_id="0123456789abcdef")
    else:
        other = release_build(version="0.1.22")  # a valid signature, but over other bytes
        AgentRelease.objects.filter(pk=release.pk).update(signature=other.signature)
    _, token = token_create(label="installer", max_seats=5, expires_in=timedelta(hours=1))
    installer = tmp_path / "linux.sh"
    installer.write_text(requests.get(f"{live_server.url}/install/linux.sh", timeout=10).text)
    prefix = tmp_path / "root"
    result = run_script(installer, prefix, token=token, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr and "nothing was installed" in result.stderr
    assert not (prefix / "usr/local/lib/redflag/redflag-agent.pyz").exists()
    assert not (prefix / "etc/redflag/agent/config.json").exists()
    assert Agent.objects.count() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer needs root")
@pytest.mark.django_db(transaction=True)
def test_linux_installer_leaves_a_legacy_install_to_the_agents_migration(live_server, tmp_path):
    """An old /etc/aggregator install: backed up, the new agent installed, no second registration
    ('run' migrates the legacy config and keeps its agent id)."""
    set_public_url(live_server.url)
    release_build(version="0.1.23")
    prefix = tmp_path / "root"
    legacy = prefix / "etc/aggregator/config.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"agent_id": "5c1f0c56-7d0e-4a43-9f55-0f1d2f0e7a11", "version": "0.0.9"}))
    installer = tmp_path / "linux.sh"
    installer.write_text(requests.get(f"{live_server.url}/install/linux.sh", timeout=10).text)
    output = run_script(installer, prefix).stdout  # no token needed
    assert "legacy agent" in output and "version 0.0.9" in output and "not registering" in output
    assert list((prefix / "etc/redflag/agent/backups").glob("legacy-config-*.json"))
    assert legacy.exists() and (prefix / "usr/local/lib/redflag/redflag-agent.pyz").exists()
    assert Agent.objects.count() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer needs root")
@pytest.mark.django_db(transaction=True)
def test_no_process_ever_holds_the_token_in_its_command_line(live_server, tmp_path):
    """A real install, watched through the process table as any local user could: the token appears in no
    process's arguments, while the watcher does see the installer's own processes (the registration too)."""
    set_public_url(live_server.url)
    release_build(version="0.1.23")
    _, token = token_create(label="watched", max_seats=1, expires_in=timedelta(hours=1))
    installer = tmp_path / "linux.sh"
    installer.write_text(requests.get(f"{live_server.url}/install/linux.sh", timeout=10).text)
    watcher = ProcessTableWatcher()
    watcher.start()
    try:
        run_script(installer, tmp_path / "root", token=token)
    finally:
        seen = watcher.stop()
    assert Agent.objects.count() == 1
    assert any("register --server" in cmdline for cmdline in seen), "the watcher missed the registration"
    assert not [cmdline for cmdline in seen if token in cmdline or token[:20] in cmdline]


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer needs root")
@pytest.mark.django_db(transaction=True)
def test_a_token_given_as_an_argument_is_refused_before_anything_happens(live_server, tmp_path):
    set_public_url(live_server.url)
    release_build(version="0.1.23")
    _, token = token_create(label="argv", max_seats=1, expires_in=timedelta(hours=1))
    installer = tmp_path / "linux.sh"
    installer.write_text(requests.get(f"{live_server.url}/install/linux.sh", timeout=10).text)
    result = run_script(installer, tmp_path / "root", token, check=False)
    assert result.returncode != 0
    assert "do not pass the registration token as an argument" in result.stderr
    assert "REDFLAG_REGISTRATION_TOKEN" in result.stderr and token not in result.stderr + result.stdout
    assert not (tmp_path / "root").exists() and Agent.objects.count() == 0


@pytest.mark.django_db
def test_a_plain_http_server_is_refused_unless_insecure_is_given(client, tmp_path):
    """http:// to another machine: refused before any download; with --insecure it warns and goes on (the
    download then goes to a recording curl here, so nothing leaves this machine)."""
    _force_public_url("http://redflag.example.net")
    installer = tmp_path / "linux.sh"
    installer.write_bytes(client.get("/install/linux.sh").content)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "curl").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/curl.log\nexit 7\n")
    (tools / "curl").chmod(0o755)
    environment = {**installer_environment(tmp_path / "root"),
                   "PATH": f"{tools}:{Path(sys.executable).parent}:/usr/bin:/bin"}
    refused = subprocess.run(["bash", str(installer)], env=environment, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "plain http" in refused.stderr and "--insecure" in refused.stderr
    assert not (tmp_path / "curl.log").exists()
    allowed = subprocess.run(["bash", str(installer), "--insecure"], env=environment, capture_output=True,
                             text=True, timeout=60)
    assert "WARNING: installing from plain http" in allowed.stdout
    assert "http://redflag.example.net/install/manifest.json" in (tmp_path / "curl.log").read_text()
