"""A RedFlag server process for the benchmarks: a free port, manage.py, start, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 20 s."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass


def start_server(env: dict, log_path: Path, argv: Callable[[int], list[str]],
                 timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start ``argv(port)`` in its own process group; return once /api/v1/health answers 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        server = subprocess.Popen(argv(port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.monotonic() + timeout  # generous: the machine may be busy
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return server, url
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_group(server)
    raise RuntimeError(f"the server did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")


def uvicorn_argv(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "redflag.asgi:application", "--host", "127.0.0.1", "--port", str(port),
            *extra]
