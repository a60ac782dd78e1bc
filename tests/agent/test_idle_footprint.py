"""What keeps the agent small at rest (issue 16, goal 7; the figures are bench/agent.py's).

- Signatures: the ``openssl`` backend (the libcrypto Python's ssl already loaded, through ctypes)
  and the ``cryptography`` one answer alike on good, altered and malformed input, and an agent
  that verified a command has not loaded cryptography's Rust extension.
- Scanner modules load at first use; a manager outside ``register --capabilities`` is not probed.
- The check-in does not rewrite the config file when only the time of the check-in changed.
- The APT scan gives its apt processes one private cache file when apt keeps none.

No Django here: this file also runs under Python 3.9.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent_client import config as config_module
from agent_client import signatures
from agent_client.outbox import Outbox
from agent_client.runner import CHECKIN_STAMP_SAVE_SECONDS, Runner
from agent_client.scanners import LazyScanner, build_scanners, capabilities
from agent_client.scanners import apt as apt_module
from agent_client.scanners.base import CommandOutput
from agent_client.transport import Client, RetryPolicy
from tests.agent.stub_server import TEST_MACHINE_ID, enrolled_config

ROOT = Path(__file__).resolve().parents[2]
L = 2 ** 252 + 27742317777372353535851937790883648493  # the order of Ed25519's base point


def raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def signature_cases() -> list[tuple[str, bytes, bytes, bytes]]:
    """(what, public key, signature, message): good ones and every way of spoiling one."""
    private, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    message = b'{"id":"c1","type":"scan_updates"}'
    signature = private.sign(message)
    r, s = signature[:32], int.from_bytes(signature[32:], "little")
    return [
        ("good", raw_public(private), signature, message),
        ("good, empty message", raw_public(private), private.sign(b""), b""),
        ("good, long message", raw_public(private), private.sign(b"x" * 100_000), b"x" * 100_000),
        ("message changed", raw_public(private), signature, message + b" "),
        ("signature bit flipped", raw_public(private), signature[:10] + bytes([signature[10] ^ 4]) + signature[11:],
         message),
        ("another key", raw_public(other), signature, message),
        ("S + L (not canonical)", raw_public(private), r + (s + L).to_bytes(32, "little"), message),
        ("all zeros", raw_public(private), bytes(64), message),
        ("key of zeros", bytes(32), signature, message),
    ]


@pytest.fixture(scope="module")
def backends() -> list:
    found = [signatures._Cryptography()]
    openssl = signatures.openssl_backend()
    if sys.platform.startswith("linux"):
        assert openssl is not None, "Python's ssl links a libcrypto with Ed25519 on every Linux we support"
    if openssl is not None:
        found.append(openssl)
    return found


def test_both_backends_give_the_same_answer_to_every_case(backends):
    for what, public, signature, message in signature_cases():
        answers = {backend.name: backend.verify(public, signature, message) for backend in backends}
        assert len(set(answers.values())) == 1, (what, answers)
        assert answers["cryptography"] is what.startswith("good"), what


def test_public_key_refuses_what_is_not_a_key_or_a_signature():
    with pytest.raises(ValueError):
        signatures.PublicKey(b"\x01" * 31)
    key = signatures.PublicKey(raw_public(Ed25519PrivateKey.generate()))
    with pytest.raises(signatures.InvalidSignature):
        key.verify(b"\x00" * 63, b"message")
    with pytest.raises(signatures.InvalidSignature):
        key.verify(b"\x00" * 64, b"message")


def test_the_known_answer_test_rejects_a_backend_that_accepts_everything():
    class Lenient:
        name = "lenient"

        def verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
            return True

    assert signatures.passes_known_answers(Lenient()) is False
    assert signatures.passes_known_answers(signatures._Cryptography()) is True


def test_verifying_a_command_does_not_load_cryptographys_extension():
    """The agent's import graph and a real verification, in a fresh interpreter."""
    private = Ed25519PrivateKey.generate()
    script = (
        "import sys\n"
        "import agent_client.cli\n"
        "from agent_client import signatures\n"
        f"key = signatures.PublicKey(bytes.fromhex({raw_public(private).hex()!r}))\n"
        f"key.verify(bytes.fromhex({private.sign(b'command').hex()!r}), b'command')\n"
        "print(signatures.backend().name, 'cryptography.hazmat.bindings._rust' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    if sys.platform.startswith("linux"):
        assert result.stdout.split() == ["openssl", "False"]


# --- scanners -------------------------------------------------------------------------------------


def test_scanner_modules_load_at_first_use_and_not_for_a_capability_outside_the_limit(tmp_path):
    script = (
        "import sys\n"
        "from agent_client.scanners import build_scanners, capabilities\n"
        f"scanners = build_scanners({str(tmp_path)!r})\n"
        "offered = capabilities(scanners, ['system', 'storage'])\n"
        "loaded = sorted(name for name in sys.modules if name.startswith('agent_client.scanners.')\n"
        "                and name.rsplit('.', 1)[1] not in ('base',))\n"
        "print(offered, loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['storage', 'system'] []"


def test_a_lazy_scanner_is_the_scanner_it_stands_for(tmp_path):
    scanners = build_scanners(tmp_path)
    apt = scanners["apt"]
    assert isinstance(apt, LazyScanner) and apt.package_type == "apt"
    assert isinstance(apt.scanner, apt_module.AptScanner)
    assert apt.state_dir == str(tmp_path) and apt.scanner is apt.scanner  # built once, with its arguments
    assert apt.name_problem("-o") is not None and apt.name_problem("libssl3") is None


def test_capabilities_probe_nothing_outside_the_limit():
    class Probed:
        def __init__(self) -> None:
            self.probes = 0

        def is_available(self) -> bool:
            self.probes += 1
            return True

    scanners = {"apt": Probed(), "docker": Probed()}
    assert capabilities(scanners, ["apt", "system"]) == ["apt", "system"]  # type: ignore[arg-type]
    assert (scanners["apt"].probes, scanners["docker"].probes) == (1, 0)


# --- the config file after a check-in ----------------------------------------------------------------


def test_a_check_in_that_changes_nothing_does_not_rewrite_the_config(stub, config_path, monkeypatch):
    enrolled_config(stub, config_path)
    config = config_module.load(config_path)
    outbox = Outbox.beside(config_path)
    client = Client(config, machine_id_hash=TEST_MACHINE_ID, config_path=config_path,
                    retry=RetryPolicy(max_attempts=1), sleep=lambda seconds: None, on_event=outbox.add_event)
    runner = Runner(config=config, config_path=config_path, client=client, outbox=outbox, rng=random.Random(1),
                    metrics=dict)
    saved: list[str] = []
    real_save = config_module.save
    monkeypatch.setattr(config_module, "save", lambda config, path: (saved.append(config.last_checkin_at),
                                                                    real_save(config, path)))

    assert runner.cycle().checked_in  # the first check-in since the start is saved
    assert runner.cycle().checked_in  # nothing changed, a second later: not saved
    assert len(saved) == 1
    stub.poll_interval_seconds = 120  # the server changes something: saved at once
    assert runner.cycle().checked_in
    assert len(saved) == 2 and json.loads(config_path.read_text())["poll_interval_seconds"] == 120
    runner._checkin_saved_at -= CHECKIN_STAMP_SAVE_SECONDS  # only the time moved, but the last save is a minute old
    assert runner.cycle().checked_in
    assert len(saved) == 3
    assert config_module.load(config_path).last_checkin_at == runner.config.last_checkin_at


# --- APT: one cache for the scan's apt processes -------------------------------------------------------------


SIMULATION = (
    "Inst zlib1g [1:1.2.13-1] (1:1.2.13-2 Debian:12.5/stable [amd64])\n"
    "Inst bash [5.2.15-2+b2] (5.2.15-2+b7 Debian-Security:12/stable-security [amd64])\n"
)


def fake_apt(apt_config_answer: str, started: list[list[str]], caches: list[Path]):
    def run(argv, **kwargs):
        started.append(list(argv))
        stdout = ""
        if argv[0] == "apt-config":
            stdout = apt_config_answer
        elif "dist-upgrade" in argv:
            stdout = SIMULATION
        for value in argv:
            if value.startswith("Dir::Cache::pkgcache="):
                cache = Path(value.split("=", 1)[1])
                assert cache.parent.is_dir() and (cache.parent.stat().st_mode & 0o777) == 0o700
                caches.append(cache)
        return CommandOutput(argv=list(argv), exit_code=0, stdout=stdout, stderr="", duration_seconds=0.0)
    return run


def fresh_scanner(tmp_path: Path) -> apt_module.AptScanner:
    scanner = apt_module.AptScanner(state_dir=str(tmp_path), refresh_interval_seconds=10 ** 9)
    Path(scanner.refresh_stamp_path).write_text("0\n")
    os.utime(scanner.refresh_stamp_path)
    return scanner


def test_without_an_apt_cache_file_the_scan_shares_a_private_one(tmp_path, monkeypatch):
    started: list[list[str]] = []
    caches: list[Path] = []
    monkeypatch.setattr(apt_module, "run_command", fake_apt("PKGCACHE=''\n", started, caches))
    records = fresh_scanner(tmp_path).scan()
    assert [record.name for record in records] == ["zlib1g", "bash"]
    tools = [argv[0] for argv in started]
    assert tools == ["apt-config", "apt-get", "apt-mark", "apt-cache"]
    assert len(caches) == 3 and len(set(caches)) == 1  # every apt process of the scan, one file
    assert all("Dir::Cache::srcpkgcache=" in argv for argv in started[1:])
    assert not caches[0].parent.exists()  # removed with the scan
    show = started[-1]
    assert show[show.index("--") + 1:] == ["bash", "zlib1g"]  # sorted: the lists are read forward


def test_with_an_apt_cache_file_the_scan_uses_apts_own(tmp_path, monkeypatch):
    started: list[list[str]] = []
    caches: list[Path] = []
    monkeypatch.setattr(apt_module, "run_command",
                        fake_apt("PKGCACHE='/var/cache/apt/pkgcache.bin'\n", started, caches))
    fresh_scanner(tmp_path).scan()
    assert [argv[0] for argv in started] == ["apt-config", "apt-get", "apt-mark", "apt-cache"]
    assert caches == [] and not any("Dir::Cache::srcpkgcache=" in argv for argv in started)
