#!/usr/bin/env python3
"""Agent footprint: idle memory and CPU of ``python -m agent_client run``, and one APT scan (JSON on stdout).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/agent.py
    .venv/bin/python bench/agent.py --seconds 8 --apt-runs 0     # smoke run (tests/server/bench/test_agent.py)

1. Create a scratch database, migrate it, set the server's default poll interval to ``--poll``
   seconds (5 by default, the agent's minimum, so it really polls), create a one-seat registration
   token with ``manage.py create_registration_token`` and start uvicorn on it (a subprocess in its
   own session, with its access log in a file).
2. Register the real agent (``register --capabilities system,storage``) into a temporary config
   folder and start ``python -m agent_client run``. At the same moment start the baseline: a bare
   ``python -c "import requests, psutil, cryptography; time.sleep(...)"`` (the interpreter and the
   agent's three dependencies, doing nothing).
3. After a warm-up (imports, registration events, the first due system and storage scans), sample
   both once a second for ``--seconds``: RSS, USS, CPU time (user + system). Count the agent's
   check-ins from the server's access log (``POST …/checkin`` answered 200). At the end, the
   resident memory of both processes per mapping (/proc/PID/smaps): where the difference is.
4. APT: under the lock the APT tests take (/tmp/redflag-apt-tests.lock), time the agent's
   AptScanner.scan() on this machine's real apt state against ``apt-get -s upgrade`` itself,
   ``--apt-runs`` times each, alternating, medians of the wall time and of the CPU time of the
   processes each side started. Read-only: the scanner's list refresh is skipped by a fresh
   refresh stamp in a temporary state folder (never ``apt-get update``); everything is a simulation.
5. Stop everything (process groups), drop the scratch database, print the figures, each with its
   baseline and ratio, and the issue's goals (#16, goal 7): RSS within 4 MiB of the baseline, at
   most 2 CPU-seconds per idle hour, the APT scan within 1.25x ``apt-get -s upgrade``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from events import drop_database, scratch_database  # bench/events.py: scratch DB helpers
from serving import manage, start_server, stop_group, uvicorn_argv

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"  # as bench/events.py documents

ROOT = Path(__file__).resolve().parents[1]
APT_LOCK = Path(tempfile.gettempdir()) / "redflag-apt-tests.lock"
GOAL_RSS_ABOVE_BASELINE_MIB = 4.0
GOAL_CPU_SECONDS_PER_HOUR = 2.0
GOAL_APT_RATIO = 1.25
CHECKIN_LINE = re.compile(r'"POST /api/v1/agents/[0-9a-f-]+/checkin HTTP/[0-9.]+" 200')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180, help="how long to sample the idle agent")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before sampling starts (default: a quarter of --seconds, at most 15)")
    parser.add_argument("--poll", type=int, default=5, help="the server's default poll interval (seconds)")
    parser.add_argument("--apt-runs", type=int, default=5, help="APT scans and apt-get runs to time (0: skip)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_SERVER),
                        help="any database on the PostgreSQL server to use (a scratch database is created)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args()


def clean_env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDFLAG_", "DJANGO_"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)
    return env


class Sampler:
    """RSS, USS and CPU time of one process, sampled by the caller."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.rss: list[int] = []
        self.uss: list[int] = []
        self.cpu_start = self.cpu_now()

    def cpu_now(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def restart_cpu(self) -> None:
        self.cpu_start = self.cpu_now()

    def sample(self) -> None:
        info = self.process.memory_full_info()
        self.rss.append(info.rss)
        self.uss.append(info.uss)

    def figures(self, seconds: float) -> dict:
        cpu = self.cpu_now() - self.cpu_start
        mib = 1024 * 1024
        return {
            "rss_mib_median": round(statistics.median(self.rss) / mib, 2),
            "rss_mib_max": round(max(self.rss) / mib, 2),
            "uss_mib_median": round(statistics.median(self.uss) / mib, 2),
            "cpu_seconds": round(cpu, 3),
            "cpu_seconds_per_hour": round(cpu * 3600 / seconds, 2),
            "cpu_percent_of_one_core": round(100 * cpu / seconds, 3),
            "samples": len(self.rss),
        }


def rss_by_mapping(pid: int) -> dict[str, int]:
    """Resident KiB per mapped file (its base name), ``[heap]`` and ``[anon]``, from /proc/PID/smaps."""
    sizes: dict[str, int] = {}
    name = "[anon]"
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                name = fields[5].rsplit("/", 1)[-1] if len(fields) > 5 else "[anon]"
            elif fields and fields[0] == "Rss:":
                sizes[name] = sizes.get(name, 0) + int(fields[1])
    return sizes


def mapping_difference(agent_pid: int, baseline_pid: int) -> dict[str, int]:
    """Where the agent's resident memory exceeds the baseline's, KiB per mapping (64 KiB or more)."""
    agent, baseline = rss_by_mapping(agent_pid), rss_by_mapping(baseline_pid)
    difference = {name: agent.get(name, 0) - baseline.get(name, 0) for name in set(agent) | set(baseline)}
    return dict(sorted(((name, kib) for name, kib in difference.items() if abs(kib) >= 64), key=lambda item: -item[1]))


def footprint(url: str, token: str, work: Path, seconds: float, warmup: float, server_log: Path) -> dict:
    config = work / "agent" / "config.json"
    agent_env = clean_env()
    registered = subprocess.run(
        [sys.executable, "-m", "agent_client", "--config", str(config), "register", "--server", url,
         "--capabilities", "system,storage"],
        cwd=work, env={**agent_env, "REDFLAG_REGISTRATION_TOKEN": token}, capture_output=True, text=True, timeout=120)
    if registered.returncode != 0:
        raise RuntimeError(f"agent registration failed:\n{registered.stderr[-3000:]}")
    total = warmup + seconds + 5
    with open(work / "agent.log", "ab") as agent_log:
        agent = subprocess.Popen([sys.executable, "-m", "agent_client", "--config", str(config), "run"],
                                 cwd=work, env=agent_env, stdout=agent_log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    baseline = subprocess.Popen(
        [sys.executable, "-c", f"import time, requests, psutil, cryptography; time.sleep({total})"],
        cwd=work, env=clean_env(), start_new_session=True)
    try:
        agent_sampler, baseline_sampler = Sampler(agent.pid), Sampler(baseline.pid)
        time.sleep(warmup)
        if agent.poll() is not None:
            log = (work / "agent.log").read_text()[-3000:]
            raise RuntimeError(f"the agent exited (code {agent.returncode}):\n{log}")
        checkins_before = count_checkins(server_log)
        agent_startup_cpu = agent_sampler.cpu_now()
        agent_sampler.restart_cpu()
        baseline_sampler.restart_cpu()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            agent_sampler.sample()
            baseline_sampler.sample()
            time.sleep(min(1.0, max(0.0, seconds - elapsed)))
        measured = time.monotonic() - started
        agent_figures = agent_sampler.figures(measured)
        baseline_figures = baseline_sampler.figures(measured)
        by_mapping = mapping_difference(agent.pid, baseline.pid)
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited (code {agent.returncode})")
        checkins = count_checkins(server_log)
    finally:
        stop_group(agent)
        stop_group(baseline)
    status = subprocess.run([sys.executable, "-m", "agent_client", "--config", str(config), "status", "--json"],
                            cwd=work, env=agent_env, capture_output=True, text=True, timeout=60)
    in_window = checkins - checkins_before
    above_rss = round(agent_figures["rss_mib_median"] - baseline_figures["rss_mib_median"], 2)
    above_cpu = round(agent_figures["cpu_seconds_per_hour"] - baseline_figures["cpu_seconds_per_hour"], 2)
    return {
        "seconds": round(measured, 1),
        "warmup_seconds": warmup,
        "agent": {**agent_figures, "startup_cpu_seconds": round(agent_startup_cpu, 3),
                  "checkins_in_window": in_window, "checkins_total": checkins,
                  "cpu_ms_per_checkin": round(1000 * agent_figures["cpu_seconds"] / max(1, in_window), 2),
                  "status": json.loads(status.stdout) if status.returncode == 0 else status.stderr.strip()},
        "baseline_bare_interpreter": baseline_figures,
        "rss_kib_above_baseline_by_mapping": by_mapping,
        "ratios": {
            "rss_median": round(agent_figures["rss_mib_median"] / baseline_figures["rss_mib_median"], 2),
            "uss_median": round(agent_figures["uss_mib_median"] / baseline_figures["uss_mib_median"], 2),
            "agent_minus_baseline_rss_mib": above_rss,
            "agent_minus_baseline_cpu_seconds_per_hour": above_cpu,
        },
        "goals": {
            "rss_within_mib_of_baseline": GOAL_RSS_ABOVE_BASELINE_MIB,
            "rss_met": above_rss <= GOAL_RSS_ABOVE_BASELINE_MIB,
            "cpu_seconds_per_hour_at_most": GOAL_CPU_SECONDS_PER_HOUR,
            "cpu_met": above_cpu <= GOAL_CPU_SECONDS_PER_HOUR,
        },
    }


def count_checkins(server_log: Path) -> int:
    return sum(1 for line in server_log.read_text(errors="replace").splitlines() if CHECKIN_LINE.search(line))


def apt_scan(runs: int) -> dict:
    """The agent's APT scanner vs ``apt-get -s upgrade``, under the APT tests' lock; read-only."""
    sys.path.insert(0, str(ROOT))  # bench/ is on the path, the repository root is not
    from agent_client.scanners.apt import AptScanner  # noqa: PLC0415  (the root is on sys.path only now)

    with tempfile.TemporaryDirectory(prefix="redflag-bench-apt-") as state, open(APT_LOCK, "w") as lock:
        waited = time.perf_counter()
        fcntl.flock(lock, fcntl.LOCK_EX)  # never while tests/agent/test_apt.py installs its packages
        waited = time.perf_counter() - waited
        scanner = AptScanner(state_dir=state, refresh_interval_seconds=10 ** 9)
        if not scanner.is_available():
            return {"skipped": "apt-get is not available"}
        Path(scanner.refresh_stamp_path).write_text(f"{time.time():.0f}\n")  # lists count as fresh:
        if not scanner.lists_are_fresh():  # so the scan never runs apt-get update
            raise RuntimeError("could not mark the apt lists fresh; refusing to let the scanner refresh them")
        scan_times, apt_times, scan_cpu, apt_cpu, packages = [], [], [], [], None
        for _ in range(runs):
            started, cpu = time.perf_counter(), children_cpu()
            records = scanner.scan()
            scan_times.append(time.perf_counter() - started)
            scan_cpu.append(children_cpu() - cpu)
            packages = len(records)
            started, cpu = time.perf_counter(), children_cpu()
            result = subprocess.run(["apt-get", "-s", "upgrade"], capture_output=True, text=True, timeout=600,
                                    env={**os.environ, "LC_ALL": "C"})
            apt_times.append(time.perf_counter() - started)
            apt_cpu.append(children_cpu() - cpu)
            if result.returncode != 0:
                raise RuntimeError(f"apt-get -s upgrade failed: {result.stderr[-2000:]}")
            upgradable = sum(1 for line in result.stdout.splitlines() if line.startswith("Inst "))
    scan_ms, apt_ms = statistics.median(scan_times) * 1000, statistics.median(apt_times) * 1000
    scan_cpu_ms, apt_cpu_ms = statistics.median(scan_cpu) * 1000, statistics.median(apt_cpu) * 1000
    return {"runs": runs, "lock_wait_seconds": round(waited, 2), "packages_reported_by_scanner": packages,
            "upgradable_by_apt_get_s_upgrade": upgradable, "scanner_ms_median": round(scan_ms, 1),
            "apt_get_s_upgrade_ms_median": round(apt_ms, 1), "ratio": round(scan_ms / apt_ms, 2),
            "scanner_ms_all": [round(value * 1000) for value in scan_times],
            "apt_get_s_upgrade_ms_all": [round(value * 1000) for value in apt_times],
            "scanner_cpu_ms_median": round(scan_cpu_ms, 1), "apt_get_s_upgrade_cpu_ms_median": round(apt_cpu_ms, 1),
            "cpu_ratio": round(scan_cpu_ms / apt_cpu_ms, 2) if apt_cpu_ms else None,
            "goal_ratio_at_most": GOAL_APT_RATIO, "goal_met": scan_ms / apt_ms <= GOAL_APT_RATIO}


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished child processes so far."""
    times = os.times()
    return times.children_user + times.children_system


def main() -> int:
    args = parse_args()
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        print(json.dumps({"error": "set DATABASE_URL (or --database-url) to a PostgreSQL server"}))
        return 2
    warmup = args.warmup if args.warmup is not None else min(15.0, args.seconds / 4)
    load_before = os.getloadavg()[0]
    base, name = scratch_database(args.database_url)
    work = Path(tempfile.mkdtemp(prefix="redflag-bench-agent-"))
    server = None
    try:
        env = clean_env(DJANGO_SETTINGS_MODULE="redflag.settings", DATABASE_URL=f"{base}/{name}",
                        REDFLAG_DATA_DIR=str(work / "server"), REDFLAG_DEBUG="false", REDFLAG_LOG_LEVEL="WARNING")
        manage(env, "migrate", "--noinput")
        manage(env, "createcachetable")
        manage(env, "shell", "-c", "from redflag.models import ServerSettings; s = ServerSettings.current(); "
                                   f"s.default_poll_interval_seconds = {args.poll}; s.save()")
        token = manage(env, "create_registration_token", "--label", "bench", "--seats", "1").strip()
        server_log = work / "server.log"
        server, url = start_server(env, server_log, lambda port: uvicorn_argv(port, "--log-level", "info"))
        agent = footprint(url, token, work, args.seconds, warmup, server_log)
    finally:
        if server is not None:
            stop_group(server)
        if not args.keep:
            drop_database(base, name)
            shutil.rmtree(work, ignore_errors=True)
    apt = apt_scan(args.apt_runs) if args.apt_runs > 0 else {"skipped": "--apt-runs 0"}
    result = {
        "database": "postgresql", "poll_interval_seconds": args.poll, "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(), "load_average_1min": {"before": round(load_before, 2),
                                                           "after": round(os.getloadavg()[0], 2)},
        "footprint": agent, "apt": apt, "kept": [name, str(work)] if args.keep else None,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
