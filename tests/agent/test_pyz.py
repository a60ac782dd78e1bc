"""The agent as one file (redflag-agent.pyz) runs on the interpreter running these tests (3.9 in CI)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile

from agent_client.pyz import build
from tests.agent.stub_server import StubServer


def run(pyz, *args, timeout=60):
    return subprocess.run([sys.executable, str(pyz), *args], capture_output=True, text=True, timeout=timeout)


def test_the_zipapp_holds_only_the_agent_and_is_reproducible(tmp_path):
    first, second = build(tmp_path / "a.pyz"), build(tmp_path / "b.pyz")
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    names = zipfile.ZipFile(first).namelist()
    assert "__main__.py" in names and "agent_client/executor.py" in names
    assert all(name == "__main__.py" or name.startswith("agent_client/") for name in names)
    assert not any("__pycache__" in name for name in names)
    assert first.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_the_zipapp_registers_and_runs(tmp_path):
    pyz = build(tmp_path / "redflag-agent.pyz")
    config = tmp_path / "agent" / "config.json"
    help_text = run(pyz, "--help")
    assert help_text.returncode == 0 and "register" in help_text.stdout and "migrate" in help_text.stdout
    missing = run(pyz, "--config", str(config), "status")
    assert missing.returncode == 3 and "registered:    no" in missing.stdout
    not_registered = run(pyz, "--config", str(config), "run", "--once")
    assert not_registered.returncode == 3  # exit codes survive the zipapp
    with StubServer() as stub:
        registered = run(pyz, "--config", str(config), "register", "--server", stub.url, "--token",
                         stub.registration_token, "--capabilities", "system")
        assert registered.returncode == 0, registered.stderr
        stub.commands.append(stub.sign_command("scan_system"))
        ran = run(pyz, "--config", str(config), "run", "--once")
        assert ran.returncode == 0, ran.stderr
        (result,) = [bodies[0] for bodies in stub.results.values()]
        assert result["status"] == "succeeded"
    status = run(pyz, "--config", str(config), "status", "--json")
    assert json.loads(status.stdout)["agent_id"] == stub.agent_id
