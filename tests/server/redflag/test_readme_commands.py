"""Every command the README shows works as shown, copied and pasted.

The commands are read from README.md itself (its ``sh`` blocks and the inline ``make …`` and
``.venv/bin/python manage.py …`` spans), so a command added to the README without working fails
here. Each is checked as far as this machine allows, and for real wherever it can run here:

* ``make`` targets: every one the README names exists (``make -n``); ``make token``, ``make
  release``, ``make admin-password`` (through a terminal, as a person types) and ``make run`` (with
  a free port, as ``make run PORT=…`` shows) run for real against a private data folder.
* ``.venv/bin/python manage.py …``: the command exists and takes every option the README gives it;
  the harmless ones (create_registration_token, help, check, migrate) run for real.

Not run here: ``make test`` (this suite is that command) and the production block's uvicorn and
qcluster (run by tests/server/redflag/test_portal_process.py and test_data_dir.py); the installer
one-liner (tests/server/agents_app/api/test_installer*.py run the real script).
"""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.server.processes import ROOT

README = (Path(ROOT) / "README.md").read_text()
VENV_PYTHON = Path(ROOT) / ".venv" / "bin" / "python"
SAFE_MANAGE_COMMANDS = {"create_registration_token", "help", "check", "migrate"}
# What the production block exports, with a real key (check --deploy runs under it).
PRODUCTION_ENV = {"REDFLAG_ENV": "production", "REDFLAG_SECRET_KEY": "k3y-" + "x9Qa7Lm2Zp" * 6,
                  "REDFLAG_ALLOWED_HOSTS": "redflag.example.net"}


def readme_commands() -> list[str]:
    """Shell commands from the README: each line of an ``sh`` block (continuations joined, comments cut),
    and each inline span that starts with ``make `` or ``.venv/bin/python manage.py``."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    prose = re.sub(r"```.*?```", "", README, flags=re.S)  # fences would throw the backtick pairs out
    for span in re.findall(r"`([^`]+)`", prose.replace("\n", " ")):
        span = re.sub(r"\s+", " ", span).strip()
        if span.startswith(("make ", ".venv/bin/python manage.py ")):
            commands.append(span)
    return commands


COMMANDS = readme_commands()
MAKE_COMMANDS = sorted({command for command in COMMANDS if command.startswith("make ")})
MANAGE_COMMANDS = sorted({command for command in COMMANDS if command.startswith(".venv/bin/python manage.py ")})


def private_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDFLAG_", "DJANGO_", "MAKE"))}
    env.pop("DATABASE_URL", None)
    env.update(REDFLAG_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", **extra)
    return env


def run(command: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def migrated_once(tmp_path_factory) -> Path:
    """One data folder migrated by the real `manage.py migrate` (92 migrations take seconds)."""
    folder = tmp_path_factory.mktemp("migrated")
    result = run(f"{VENV_PYTHON} manage.py migrate", private_env(folder))
    assert result.returncode == 0, result.stderr
    return folder / "data"


@pytest.fixture
def migrated(tmp_path, migrated_once) -> dict[str, str]:
    """A private copy of that folder (modes kept: RedFlag refuses a data folder others can read)."""
    shutil.copytree(migrated_once, tmp_path / "data")
    return private_env(tmp_path)


def test_the_readme_shows_the_commands_this_test_checks():
    """The extraction is real: the two set-up commands and the helpers are found."""
    assert {"make run", "make test"} <= set(MAKE_COMMANDS)
    assert "make token LABEL=rack-2 SEATS=5 EXPIRES=24h" in MAKE_COMMANDS
    assert "make release VERSION=0.1.0" in MAKE_COMMANDS
    assert not [command for command in COMMANDS if command.startswith("python manage.py")], \
        "a bare `python manage.py` needs an activated .venv: show `.venv/bin/python manage.py` or a make target"


@pytest.mark.parametrize("command", MAKE_COMMANDS)
def test_every_make_command_in_the_readme_exists(command, tmp_path):
    result = run(command.replace("make ", "make -n ", 1), private_env(tmp_path))
    assert result.returncode == 0, f"{command}: {result.stderr}"


@pytest.mark.parametrize("command", MANAGE_COMMANDS)
def test_every_manage_command_in_the_readme_takes_the_options_it_shows(command, migrated):
    argv = shlex.split(command)[2:]
    name = argv[0]
    usage = run(f"{VENV_PYTHON} manage.py {name} --help", migrated)
    assert usage.returncode == 0, f"{command}: no such command ({usage.stderr.strip()})"
    for option in [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--")]:
        assert option in usage.stdout, f"{command}: {name} has no {option}"
    if name in SAFE_MANAGE_COMMANDS:
        result = run(command, {**migrated, **PRODUCTION_ENV} if "--deploy" in argv else migrated)
        assert result.returncode == 0, f"{command}: {result.stderr}"


def test_make_token_prints_only_a_token_that_registers(migrated):
    result = run("make --no-print-directory token LABEL=rack-2 SEATS=5 EXPIRES=24h", migrated)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"rf_reg_[A-Za-z0-9_-]{20,}\n", result.stdout), result.stdout
    shown = run(f"{VENV_PYTHON} manage.py shell --no-imports -c \"from tokens_app.models import RegistrationToken as T;"
                f"t = T.objects.active().get(label='rack-2'); print(t.max_seats)\"", migrated)
    assert shown.stdout.split() == ["5"], shown.stderr  # active, five seats


def test_make_release_builds_a_signed_release_and_asks_for_a_version(migrated):
    missing = run("make --no-print-directory release", migrated)
    assert missing.returncode != 0
    assert "make release needs a version: make release VERSION=0.1.0" in missing.stderr
    result = run("make --no-print-directory release VERSION=0.1.0", migrated)
    assert result.returncode == 0, result.stderr
    listed = run(f"{VENV_PYTHON} manage.py shell --no-imports -c \"from agents_app.models import AgentRelease as R;"
                 f"print(list(R.objects.values_list('version', flat=True)))\"", migrated)
    assert listed.stdout.strip() == "['0.1.0']", listed.stderr


def test_make_admin_password_sets_a_new_password_typed_at_a_terminal(migrated):
    made = run(f"{VENV_PYTHON} manage.py shell --no-imports -c \"from django.contrib.auth import get_user_model;"
               f"get_user_model().objects.create_superuser('admin', '', 'old-password-1')\"", migrated)
    assert made.returncode == 0, made.stderr
    pid, terminal = pty.fork()
    if pid == 0:  # the child: make, on the terminal
        os.chdir(ROOT)
        os.execvpe("make", ["make", "--no-print-directory", "admin-password"], migrated)
    transcript = b""
    deadline = time.monotonic() + 120
    answered = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(terminal, 1024)
        except OSError:
            break
        if not chunk:
            break
        transcript += chunk
        if transcript.count(b"assword") > answered and transcript.rstrip().endswith(b":"):
            os.write(terminal, b"a-new-Passw0rd-for-redflag\n")
            answered += 1
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, transcript.decode(errors="replace")
    assert b"Password changed successfully for user 'admin'" in transcript
    checked = run(f"{VENV_PYTHON} manage.py shell --no-imports -c \"from django.contrib.auth import get_user_model;"
                  f"print(get_user_model().objects.get(username='admin').check_password('a-new-Passw0rd-for-redflag'))\"",
                  migrated)
    assert checked.stdout.strip() == "True", checked.stderr


def test_make_run_on_another_port_serves_the_admin_and_stops_on_ctrl_c(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    portal = subprocess.Popen(["make", "--no-print-directory", "run", f"PORT={port}"], cwd=ROOT,
                              env=private_env(tmp_path, REDFLAG_ADMIN_PASSWORD="readme-pw"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert portal.poll() is None, portal.stdout.read()
            try:
                if requests.get(f"http://127.0.0.1:{port}/", timeout=2, allow_redirects=True).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        root = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert root.url == f"http://127.0.0.1:{port}/admin/login/?next=/admin/" and root.status_code == 200
    finally:
        os.killpg(portal.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the foreground process group
        output, _ = portal.communicate(timeout=60)
    assert portal.returncode in (0, -signal.SIGINT), output  # make itself also gets the Ctrl-C
    assert f"RedFlag admin: http://127.0.0.1:{port}/admin/" in output
    assert "Forgot the admin password? make admin-password." in output
    assert "At the first sign-in, set up a second factor" in output  # REDFLAG_REQUIRE_MFA is on by default
    assert "readme-pw" not in output
