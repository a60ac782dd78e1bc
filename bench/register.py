"""Registrations at saturation, and a storm of enrolments: how many a second, what each costs, any error.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/register.py
    DATABASE_URL=… .venv/bin/python bench/register.py --seconds 2 --clients 4 --storm 40 --workers 1   # smoke

In a scratch database (created and dropped):

1. Starts the server as the README's production section does (REDFLAG_ENV=production, uvicorn
   ``--workers``, as ``bench/checkin.py`` starts it), with every rate limit as shipped except
   registration: ``ServerSettings.rate_registration`` is raised to 100000/min, because every
   simulated machine comes from 127.0.0.1 and the shipped limit is per client IP (``bench/fleet.py``
   does the same). Two registration tokens: one with a million seats for the saturation phase, one
   with exactly ``--storm`` seats for the storm.
2. Three closed loops of ``--clients`` concurrent clients for ``--seconds`` each, every request on a
   new TCP connection:
   - ``health``: ``GET /api/v1/health``, the cheapest unauthenticated endpoint (baseline 1);
   - ``register``: ``POST /api/v1/agents/register``, each request a new machine (a new agent, a
     seat taken, its subsystems, its credentials, its event), as ``agent_client register`` sends it;
   - ``config``: ``GET /agents/{id}/config`` for the agents just registered, the cheapest
     authenticated agent endpoint, served by the same request path as the registration (baseline 2).
   For each: requests per second, p50/p95/p99, errors, and CPU per request split between the server's
   processes, the scratch database's PostgreSQL backends ("postgres"; every PostgreSQL process on the
   machine is "postgres_all"), this client and the whole machine (``bench/checkin.py``'s Split).
3. The storm: ``--storm`` machines enrol at once (``--storm-clients`` in flight, one attempt each, no
   retry) on the token with exactly that many seats; every answer that is not 201 is an error. Then
   ``--clients`` more machines try the same, now used-up token: each must get 401 (no over-issue),
   and the database must hold exactly ``--storm`` agents and seats taken on that token, and as many
   registration events.
The machine may be shared: every figure is a ratio against a baseline of the same run, and the load
average before and after is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import psycopg
from checkin import Split, closed_loop  # bench/checkin.py: CPU split (scratch database's backends) and closed loop
from fleet import Fleet, Recorder, Scratch, SimAgent, machine, manage, prepare, ratio_to, scratch_server, server_argv

DATA = Path(__file__).resolve().parent / "data"

GOAL_PER_SECOND = 250
SATURATION_SEATS = 1_000_000

STORM_TOKEN = """
from datetime import timedelta
from tokens_app.services import token_create
_, secret = token_create(label='storm', max_seats={seats}, expires_in=timedelta(hours=12))
print(secret)
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--storm", type=int, default=10_000, help="machines enrolling in the storm")
    parser.add_argument("--storm-clients", type=int, default=64, help="storm requests in flight at once")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args()


def outcome(recorder: Recorder, name: str, kind: str, seconds: float, before: dict, after: dict) -> dict:
    summary = recorder.summary(name, seconds)[kind]
    ok = max(summary["ok"], 1)
    spent = {key: after[key] - before[key] for key in before}
    return {
        "requests_per_second": round(summary["ok"] / seconds, 1),
        "requests": summary["requests"], "errors_by_status": summary["errors_by_status"],
        **{key: summary[key] for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms")},
        "cpu_ms_per_request": {key: round(value * 1000 / ok, 2) for key, value in spent.items()},
        "cores_used": {key: round(value / seconds, 2) for key, value in spent.items()},
    }


async def saturation(fleet: Fleet, name: str, call, args, split: Split) -> dict:
    fleet.recorder.start(name)
    before = split.sample()
    seconds = await closed_loop(args.clients, args.seconds, call)
    return outcome(fleet.recorder, name, name, seconds, before, split.sample())


class StormAgent(SimAgent):
    """A storm machine: its hostname tells its agent apart in the database."""

    def __init__(self, index: int, heartbeat: bool) -> None:
        super().__init__(index, heartbeat)
        self.hostname = f"storm-{index:05d}"


async def storm(fleet: Fleet, secret: str, count: int, in_flight: int, split: Split) -> dict:
    """``count`` new machines at once, one attempt each."""
    agents = [StormAgent(index, heartbeat=False) for index in range(count)]
    gate = asyncio.Semaphore(in_flight)

    async def one(agent: SimAgent) -> None:
        async with gate:
            await fleet.register(agent, secret)

    fleet.recorder.start("storm")
    before = split.sample()
    started = time.perf_counter()
    await asyncio.gather(*(one(agent) for agent in agents))
    seconds = time.perf_counter() - started
    result = outcome(fleet.recorder, "storm", "register", seconds, before, split.sample())
    # The token is used up now: more machines must each be refused, none enrolled.
    extra = [StormAgent(count + index, heartbeat=False) for index in range(in_flight)]
    fleet.recorder.start("over")
    await asyncio.gather(*(fleet.register(agent, secret) for agent in extra))
    over = fleet.recorder.summary("over", 1.0)["register"]
    return {"machines": count, "in_flight": in_flight, "seconds": round(seconds, 1),
            "enrolled": sum(1 for agent in agents if agent.id), **result,
            "beyond_the_seats": {"attempts": over["requests"], "statuses": over["errors_by_status"],
                                 "enrolled": sum(1 for agent in extra if agent.id)}}


def storm_in_database(database_url: str) -> dict:
    """What the database holds for the storm's token: seats taken, agents, registration events."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        token_id, seats_used, max_seats = conn.execute(
            "SELECT id, seats_used, max_seats FROM tokens_app_registrationtoken WHERE label = 'storm'").fetchone()
        events = conn.execute(
            "SELECT count(*) FROM events_app_systemevent WHERE event_type = 'agent_registration' "
            "AND event_subtype = 'success' AND (metadata->>'token_id')::int = %s", (token_id,)).fetchone()[0]
        agents = conn.execute("SELECT count(*) FROM agents_app_agent WHERE hostname LIKE 'storm-%%'").fetchone()[0]
    return {"max_seats": max_seats, "seats_used": seats_used, "agents": agents, "registration_events": events}


async def run(args, url: str, database_url: str, saturation_secret: str, storm_secret: str, server) -> dict:
    apt_report = json.loads((DATA / "apt_scan_debian12.json").read_text())
    system_report = json.loads((DATA / "system_report.json").read_text())["report"]
    split = Split(server.pid, database_url)
    registered: list[SimAgent] = []
    async with Fleet(url, Recorder(), apt_report, system_report) as fleet:

        async def health(n: int) -> None:
            await fleet.call("health", "GET", "/api/v1/health")

        async def register(n: int) -> None:
            agent = SimAgent(n, heartbeat=False)
            if await fleet.register(agent, saturation_secret):
                registered.append(agent)

        async def config(n: int) -> None:
            await fleet.call("config", "GET", f"/api/v1/agents/{registered[n % len(registered)].id}/config",
                             headers=registered[n % len(registered)].headers())

        result = {"health": await saturation(fleet, "health", health, args, split),
                  "register": await saturation(fleet, "register", register, args, split)}
        result["config"] = await saturation(fleet, "config", config, args, split) if registered else None
        result["storm"] = await storm(fleet, storm_secret, args.storm, args.storm_clients, split)
    return result


def ratios(result: dict) -> dict:
    register = result["register"]
    out = {}
    for baseline in ("health", "config"):
        base = result.get(baseline)
        if not base or not base["requests_per_second"]:
            continue
        out[f"register_vs_{baseline}"] = ratio_to(register, base)
    return out


def serve_and_measure(args, scratch: Scratch) -> dict:
    saturation_secret = prepare(scratch.env, seats=SATURATION_SEATS, interval=300)
    storm_secret = manage(scratch.env, "shell", "--no-imports", "-c", STORM_TOKEN.format(seats=args.storm)).strip()
    url = scratch.start(lambda port: server_argv("uvicorn", args.workers, port))
    result = asyncio.run(run(args, url, scratch.database_url, saturation_secret, storm_secret, scratch.server))
    scratch.stop()
    result["storm"]["in_database"] = storm_in_database(scratch.database_url)
    result["server_log_tracebacks"] = scratch.log_tracebacks()
    return result


def main() -> int:
    args = parse_args()
    load_before = os.getloadavg()
    with scratch_server("register.py", args.database_url, keep=args.keep) as scratch:
        result = serve_and_measure(args, scratch)
    register, storm_result = result["register"], result["storm"]
    output = {
        "bench": "register", "machine": machine(),
        "conditions": {"clients": args.clients, "seconds_per_phase": args.seconds, "workers": args.workers,
                       "storm": args.storm, "storm_clients": args.storm_clients, "new_connection_per_request": True,
                       "rate_registration": "100000/min (every machine is 127.0.0.1)",
                       "load_average_before": [round(x, 2) for x in load_before],
                       "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        **result,
        "ratios": ratios(result),
        "goal": {"registrations_per_second": GOAL_PER_SECOND,
                 "met": register["requests_per_second"] >= GOAL_PER_SECOND and not register["errors_by_status"]
                 and storm_result["enrolled"] == args.storm and not storm_result["errors_by_status"]},
    }
    print(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
