"""Running a bench script as its smoke test does: a subprocess with the test's PostgreSQL URL and none of
the test settings, which must exit 0 and print its JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.server.processes import ROOT


def run_bench(script: str, *args: str, timeout: float = 300) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDFLAG_"))}
    result = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
