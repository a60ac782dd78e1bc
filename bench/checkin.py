"""Check-ins at saturation: how many a second, and how much server CPU each costs.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/checkin.py
    DATABASE_URL=… .venv/bin/python bench/checkin.py --agents 20 --seconds 3 --clients 4 --workers 1   # smoke

In a scratch database (created and dropped):

1. Starts the server as the README's production section does (REDFLAG_ENV=production, uvicorn
   ``--workers``, every rate limit as shipped except registration), and registers ``--agents``
   agents through the API. Every subsystem's next scan is pushed a day ahead: these are the
   common check-ins, nothing due and nothing pending.
2. Three closed loops of ``--clients`` concurrent clients for ``--seconds`` each, every request on
   a new TCP connection, agents taken in turn (so each agent stays inside its check-in rate):
   - ``config``: ``GET /agents/{id}/config``, the cheapest authenticated endpoint (baseline 1);
   - ``checkin``: ``POST /agents/{id}/checkin`` with metrics, as the agent sends it;
   - ``bare``: the same check-in against ``bench/bare_checkin.py``, a bare ASGI handler running
     the check-in's own SQL under uvicorn with the same worker count (baseline 2, the floor).
3. For each: requests per second, p50/p95/p99, errors, and CPU per request split between the
   server's processes, the scratch database's PostgreSQL backends (``postgres``; ``postgres_all``
   is every PostgreSQL process on the machine, other databases' work included), the client and
   the whole machine. Ratios: check-in against each baseline. The machine may be shared: every
   figure is from the same run, and the load average before and after is printed.

``--uvicorn-plain`` runs both servers on uvicorn's pure-Python HTTP parser and asyncio's loop
(``--http h11 --loop asyncio``), to show what httptools and uvloop (requirements.txt) are worth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import psutil
import psycopg
from fleet import (
    UVICORN_PLAIN,
    Fleet,
    Recorder,
    Scratch,
    SimAgent,
    machine,
    prepare,
    ratio_to,
    register_all,
    scratch_server,
    server_argv,
)
from schedule import fleet_sql
from serving import start_server, stop_group

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"

GOAL_PER_SECOND = 400
GOAL_SERVER_CPU_MS = 4.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2_000,
                        help="enough that each stays under its check-in rate (60/min) at the measured throughput")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--checkin-rate", default="",
                        help="rate_checkin for the server (default: as shipped, 60/min per agent); the smoke "
                             "run's few agents would exceed it")
    parser.add_argument("--cache-url", default="", help="REDFLAG_CACHE_URL for the server")
    parser.add_argument("--uvicorn-plain", action="store_true",
                        help="both servers on uvicorn's pure-Python parser and asyncio's loop (--http h11 --loop "
                        "asyncio): what httptools and uvloop are worth")
    parser.add_argument("--fleet", type=int, default=0,
                        help="agents in the database in all: the --agents that check in plus inert ones loaded with "
                             "bench/schedule.py's INSERT ... SELECT (4 subsystems each), to see how the check-in's "
                             "cost grows with the fleet")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args()


def pad_fleet(database_url: str, agents: int) -> None:
    """``agents`` more agents that never check in (their subsystems are buried with the others)."""
    if agents <= 0:
        return
    with psycopg.connect(database_url, autocommit=True) as conn:
        for sql, params in fleet_sql(agents, first=10_000_000):
            conn.execute(sql, params or None)


def cpu_seconds(processes) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def postgres_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def database_backends(database_url: str) -> dict[int, psutil.Process]:
    """The PostgreSQL backends connected to the scratch database (other work on the machine left out)."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url, autocommit=True) as conn:
        pids = [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))]
    found = {}
    for pid in pids:
        try:
            found[pid] = psutil.Process(pid)
        except psutil.Error:
            pass
    return found


class Split:
    """CPU seconds over one phase: the server's process group, the scratch database's PostgreSQL
    backends ("postgres"; a backend opened during the phase counts from zero), every PostgreSQL
    process on the machine ("postgres_all", other databases' work included), this client and the
    whole machine."""

    def __init__(self, server_pid: int, database_url: str | None = None) -> None:
        self.server = psutil.Process(server_pid)
        self.database_url = database_url
        self.backends: dict[int, float] = {}

    def sample(self) -> dict:
        machine_times = psutil.cpu_times()
        backends = database_backends(self.database_url) if self.database_url else {}
        previous, self.backends = self.backends, {pid: cpu_seconds([process]) for pid, process in backends.items()}
        # Cumulative over the backends seen so far: a difference of two samples is the phase's work.
        self.backend_total = getattr(self, "backend_total", 0.0) + sum(
            cpu - previous.get(pid, 0.0) for pid, cpu in self.backends.items())
        return {"server": cpu_seconds([self.server, *self.server.children(recursive=True)]),
                "postgres": self.backend_total,
                "postgres_all": cpu_seconds(postgres_processes()),
                "client": cpu_seconds([psutil.Process()]),
                "machine": machine_times.user + machine_times.system + machine_times.nice
                + getattr(machine_times, "softirq", 0.0) + getattr(machine_times, "irq", 0.0)}


async def closed_loop(clients: int, seconds: float, call) -> float:
    """``clients`` workers, each calling ``call(n)`` back to back for ``seconds``; returns the elapsed time."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while loop.time() < until:
            await call(next(counter))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started


def checkin_body(agent: SimAgent) -> dict:
    return {"agent_version": "0.1.23", "metrics": agent.metrics(), "heartbeat_active": False}


async def phase(fleet: Fleet, name: str, kind: str, agents: list[SimAgent], args, split: Split) -> dict:
    fleet.recorder.start(name)

    async def call(n: int) -> None:
        agent = agents[n % len(agents)]
        if kind == "config":
            await fleet.config(agent)
        else:
            await fleet.call("checkin", "POST", f"/api/v1/agents/{agent.id}/checkin", headers=agent.headers(),
                             body=checkin_body(agent))

    before = split.sample()
    seconds = await closed_loop(args.clients, args.seconds, call)
    after = split.sample()
    summary = fleet.recorder.summary(name, seconds)[kind]
    ok = max(summary["ok"], 1)
    spent = {key: after[key] - before[key] for key in before}
    return {
        "requests_per_second": round(summary["ok"] / seconds, 1),
        "requests": summary["requests"], "errors_by_status": summary["errors_by_status"],
        **{key: summary[key] for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms")},
        "cpu_ms_per_request": {"server": round(spent["server"] * 1000 / ok, 2),
                               "postgres": round(spent["postgres"] * 1000 / ok, 2),
                               "postgres_all": round(spent["postgres_all"] * 1000 / ok, 2),
                               "client": round(spent["client"] * 1000 / ok, 2),
                               "machine": round(spent["machine"] * 1000 / ok, 2)},
        "cores_used": {key: round(value / seconds, 2) for key, value in spent.items()},
    }


def bury_scans(database_url: str) -> None:
    """Nothing due: the common check-in."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE agents_app_agentsubsystem SET next_run_at = now() + interval '1 day'")
        conn.execute("VACUUM ANALYZE")


async def run(args, url: str, bare_url_factory, secret: str, scratch: Scratch) -> dict:
    database_url = scratch.database_url
    recorder = Recorder()
    agents = [SimAgent(index, heartbeat=False) for index in range(args.agents)]
    apt_report = json.loads((DATA / "apt_scan_debian12.json").read_text())
    system_report = json.loads((DATA / "system_report.json").read_text())["report"]
    async with Fleet(url, recorder, apt_report, system_report) as fleet:
        started = time.perf_counter()
        failed = await register_all(fleet, agents, secret, 16)
        registration_seconds = time.perf_counter() - started
        registered = [agent for agent in agents if agent.id]
        pad_fleet(database_url, args.fleet - len(registered))
        bury_scans(database_url)
        split = Split(scratch.server.pid, database_url)
        result = {"registration": {"agents": len(registered), "failed": failed,
                                   "seconds": round(registration_seconds, 1),
                                   "per_second": round(len(registered) / registration_seconds, 1)}}
        result["config"] = await phase(fleet, "config", "config", registered, args, split)
        result["checkin"] = await phase(fleet, "checkin", "checkin", registered, args, split)
    scratch.stop()
    bare, bare_url = bare_url_factory()
    try:
        async with Fleet(bare_url, Recorder(), apt_report, system_report) as fleet:
            result["bare"] = await phase(fleet, "bare", "checkin", registered, args, Split(bare.pid, database_url))
    finally:
        stop_group(bare)
    return result


def ratios(result: dict) -> dict:
    return {f"checkin_vs_{baseline}": ratio_to(result["checkin"], result[baseline]) for baseline in ("config", "bare")}


def serve_and_measure(args, scratch: Scratch) -> dict:
    plain = UVICORN_PLAIN if args.uvicorn_plain else ()
    secret = prepare(scratch.env, seats=args.agents, interval=300)
    if args.checkin_rate:
        with psycopg.connect(scratch.database_url, autocommit=True) as conn:
            conn.execute("UPDATE redflag_serversettings SET rate_checkin = %s", (args.checkin_rate,))
    url = scratch.start(lambda port: server_argv("uvicorn", args.workers, port, plain))
    bare_env = {**scratch.env, "PYTHONPATH": str(ROOT / "bench")}

    def bare_factory():
        return start_server(bare_env, Path(scratch.data_dir) / "bare.log", lambda port: [
            sys.executable, "-m", "uvicorn", "bare_checkin:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(args.workers), "--log-level", "warning", "--no-access-log", *plain], timeout=60)

    result = asyncio.run(run(args, url, bare_factory, secret, scratch))
    result["server_log_tracebacks"] = scratch.log_tracebacks()
    return result


def main() -> int:
    args = parse_args()
    load_before = os.getloadavg()
    with scratch_server("checkin.py", args.database_url, cache_url=args.cache_url, keep=args.keep) as scratch:
        result = serve_and_measure(args, scratch)
    checkin = result["checkin"]
    output = {
        "bench": "checkin", "machine": machine(),
        "conditions": {"clients": args.clients, "seconds_per_phase": args.seconds, "workers": args.workers,
                       "agents": args.agents, "fleet": max(args.fleet, args.agents),
                       "new_connection_per_request": True,
                       "rate_limit_counters": "redis" if args.cache_url else "database table",
                       "uvicorn": "h11 + asyncio" if args.uvicorn_plain else "auto (httptools + uvloop when installed)",
                       "checkin_rate": args.checkin_rate or "as shipped",
                       "load_average_before": [round(x, 2) for x in load_before],
                       "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        **result,
        "ratios": ratios(result),
        "goal": {"checkins_per_second": GOAL_PER_SECOND, "server_cpu_ms": GOAL_SERVER_CPU_MS,
                 "met": checkin["requests_per_second"] >= GOAL_PER_SECOND
                 and checkin["cpu_ms_per_request"]["server"] <= GOAL_SERVER_CPU_MS
                 and not checkin["errors_by_status"]},
    }
    print(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
