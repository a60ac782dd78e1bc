"""Data at rest (redflag/settings.py): the data folder is 0700 and everything RedFlag creates in it 0600,
whatever the umask it was started with; start-up refuses a folder other users can open, in one line.

Real processes, each started with the loose umask of a typical shell or service manager (022): migrate,
a Django shell that keeps its SQLite connection open (so -wal and -shm exist), run_portal with its web
server and cluster, and every entry point a refused start-up must stop: manage.py commands, qcluster,
run_portal, redflag/wsgi.py, redflag/asgi.py and uvicorn.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.server.processes import ROOT

LOOSE_UMASK = 0o022
SQLITE_FILES = ("redflag.sqlite3", "redflag.sqlite3-wal", "redflag.sqlite3-shm")
# The refusal comes before any database is opened: a PostgreSQL URL that nothing listens on will do.
POSTGRESQL_NEVER_CONNECTED = "postgresql://redflag@127.0.0.1:9/redflag"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(data_dir: Path, *, database_url: str | None, **extra: str) -> dict[str, str]:
    """The real settings with this data folder, and SQLite in it unless ``database_url`` says otherwise."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDFLAG_", "DJANGO_"))}
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(DJANGO_SETTINGS_MODULE="redflag.settings", REDFLAG_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1",
               **extra)
    return env


def run(*argv: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run to the end in a session of its own: a server that did start (a regression) is killed with its children."""
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, umask=LOOSE_UMASK, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def modes(root: Path) -> dict[str, str]:
    """Every path under ``root`` (and root itself, as '.') with its permission bits, as octal text."""
    found = {".": f"{stat.S_IMODE(root.stat().st_mode):04o}"}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = f"{stat.S_IMODE(path.lstat().st_mode):04o}"
    return found


def assert_private(root: Path) -> None:
    found = modes(root)
    loose = {name: mode for name, mode in found.items()
             if mode != ("0700" if (root / name).is_dir() else "0600")}
    assert not loose, f"open to other users under {root}: {loose}"


# A Django shell that writes (WAL activity), creates the signing key and saves a release artifact, then
# holds its connection open until its stdin closes: while it does, -wal and -shm exist.
HOLD_OPEN = """
import sys
from django.core.cache import cache
from django.core.files.base import ContentFile
from agents_app.models import ReleaseStorage
from tokens_app.signing import primary_key
cache.set("data-at-rest-probe", "x" * 4096, 60)
primary_key()
ReleaseStorage().save("redflag-agent-9.9.9.pyz", ContentFile(b"PK\\x05\\x06" + bytes(18)))
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_fresh_data_dir_and_everything_in_it_are_private_under_a_loose_umask(tmp_path):
    data_dir = tmp_path / "var"
    env = server_env(data_dir, database_url=None)
    migrated = run("manage.py", "migrate", "--verbosity", "0", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert modes(data_dir)["."] == "0700"
    assert modes(data_dir)["redflag.sqlite3"] == "0600"

    holder = subprocess.Popen([sys.executable, "manage.py", "shell", "--no-imports", "-c", HOLD_OPEN], cwd=ROOT,
                              env=env, umask=LOOSE_UMASK, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
        found = modes(data_dir)
        assert {*SQLITE_FILES, "secret_key", "signing_key.pem", "static", "releases",
                "releases/redflag-agent-9.9.9.pyz"} <= set(found), found
        assert_private(data_dir)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0, holder.stderr.read()
    assert_private(data_dir)


def test_run_portal_keeps_the_data_dir_private_while_it_serves(tmp_path):
    """`make run`: migrate, the admin account, runserver and qcluster, all started under umask 022."""
    data_dir = tmp_path / "var"
    port = free_port()
    portal = subprocess.Popen(
        [sys.executable, "manage.py", "run_portal", "--addr", f"127.0.0.1:{port}"], cwd=ROOT,
        env=server_env(data_dir, database_url=None, REDFLAG_ADMIN_PASSWORD="data-at-rest-pw"), umask=LOOSE_UMASK,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert portal.poll() is None, "run_portal exited early"
            try:
                if requests.get(f"http://127.0.0.1:{port}/admin/login/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "run_portal did not answer within 90 s"
            time.sleep(0.3)
        assert set(SQLITE_FILES) <= set(modes(data_dir))  # the web server and the cluster hold connections
        assert_private(data_dir)
    finally:
        os.killpg(portal.pid, signal.SIGINT)
        try:
            portal.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(portal.pid, signal.SIGKILL)  # never leave a web server or cluster behind
            portal.communicate()
            raise
    assert_private(data_dir)


def test_collected_static_files_are_private_in_production(tmp_path):
    """The README's collectstatic: hashed copies (Django's storage) and compressed ones (WhiteNoise) alike."""
    data_dir = tmp_path / "var"
    env = server_env(data_dir, database_url=POSTGRESQL_NEVER_CONNECTED, REDFLAG_ENV="production",
                     REDFLAG_SECRET_KEY="k3y-" + "x9Qa7Lm2Zp" * 6, REDFLAG_ALLOWED_HOSTS="redflag.example.net")
    collected = run("manage.py", "collectstatic", "--noinput", "--verbosity", "0", env=env)
    assert collected.returncode == 0, collected.stderr
    assert any(name.endswith(".gz") for name in modes(data_dir / "static"))
    assert_private(data_dir)


def test_a_fresh_data_dir_is_private_on_postgresql_too(tmp_path):
    """With DATABASE_URL there is no SQLite file, but the keys still live in the folder. (No connection is made.)"""
    data_dir = tmp_path / "var"
    checked = run("manage.py", "check", env=server_env(data_dir, database_url=POSTGRESQL_NEVER_CONNECTED))
    assert checked.returncode == 0, checked.stderr
    assert "redflag.sqlite3" not in modes(data_dir)
    assert_private(data_dir)


def refusal(data_dir: Path, mode: int) -> str:
    return (f"RedFlag will not start: the data directory {data_dir} is open to other users (mode {mode:04o}). "
            f"Run: chmod 700 {data_dir}")


def assert_refused_in_one_line(result: subprocess.CompletedProcess, data_dir: Path, mode: int) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [refusal(data_dir, mode)]
    # Refused before anything was created in it, and left as it was.
    assert modes(data_dir) == {".": f"{mode:04o}"}


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o711, 0o770, 0o705, 0o701])
def test_a_data_dir_others_can_open_stops_start_up_in_one_line(tmp_path, mode):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(mode)
    result = run("manage.py", "check", env=server_env(data_dir, database_url=os.environ.get("DATABASE_URL")))
    assert_refused_in_one_line(result, data_dir, mode)


ENTRY_POINTS = {
    "migrate": ("manage.py", "migrate"),
    "run_portal": ("manage.py", "run_portal", "--addr", "127.0.0.1:{port}"),
    "qcluster": ("manage.py", "qcluster"),
    "wsgi": ("-c", "import redflag.wsgi"),
    "asgi": ("-c", "import redflag.asgi"),
    "uvicorn": ("-m", "uvicorn", "redflag.asgi:application", "--host", "127.0.0.1", "--port", "{port}"),
}


@pytest.mark.parametrize("database_url", [None, POSTGRESQL_NEVER_CONNECTED], ids=["sqlite", "postgresql"])
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_refuses_an_open_data_dir(tmp_path, entry_point, database_url):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    argv = [part.format(port=free_port()) for part in ENTRY_POINTS[entry_point]]
    result = run(*argv, env=server_env(data_dir, database_url=database_url), timeout=60)
    assert_refused_in_one_line(result, data_dir, 0o755)


def test_an_existing_private_data_dir_works(tmp_path):
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    result = run("manage.py", "check", env=server_env(data_dir, database_url=os.environ.get("DATABASE_URL")))
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
    assert modes(data_dir)["."] == "0700"


def test_sqlite_files_an_older_version_left_open_are_made_private(tmp_path):
    """An install from before this check: the folder now 0700 (the fix the refusal gives), files still 0644."""
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    database = sqlite3.connect(data_dir / "redflag.sqlite3")
    try:
        database.execute("PRAGMA journal_mode=WAL")
        database.execute("CREATE TABLE older (x)")
        database.commit()
        for name in SQLITE_FILES:
            (data_dir / name).chmod(0o644)
        result = run("manage.py", "check", env=server_env(data_dir, database_url=None))
        assert result.returncode == 0, result.stderr
        assert {name: modes(data_dir)[name] for name in SQLITE_FILES} == dict.fromkeys(SQLITE_FILES, "0600")
    finally:
        database.close()
