"""Reach: how soon an admin's command gets to an agent holding the fast channel, and what an idle
connected fleet costs the server.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/reach.py \
        --agents 10000 --probes 200

In a scratch database it creates and drops:

1. Starts the server as the README's production section does (REDFLAG_ENV=production, uvicorn
   ``--workers``), registers ``--agents`` channel agents and ``--baseline-agents`` heartbeat agents
   through ``POST /agents/register`` (bench/fleet.py's simulated agents), and pushes every
   subsystem's next scan a day out (so no scheduled scan blurs the figures).
2. Connects the fleet: every channel agent opens ``GET /agents/{id}/wait`` (``--connect-rate`` a
   second) and holds it, reading the keep-alives, re-opening when the hold ends, and checking in
   when it is woken, exactly as agent_client/wakeup.py does. The server CPU spent per opened wait
   is measured here.
3. Idle: ``--idle-seconds`` with the whole fleet connected and nothing happening: the cores used by
   the server's processes and by the PostgreSQL backends of the scratch database (not the rest of
   the machine, which others may share).
4. Reach: ``--probes`` commands, each for a random connected agent, created by this process with
   the server's own write path (``command_create``, as an admin action in another server process
   or a django-q2 worker creates them), one every ``1 / --probe-rate`` s. Time to reach = from just
   before ``command_create`` to the agent's check-in answer carrying that command.
5. Baseline, in the same run: the same probes for ``--baseline-agents`` agents in heartbeat mode
   without the channel (polling every 5 s, as before the channel existed: the fastest an admin
   action could reach an agent). The 300-second poll is not measured: its mean wait is half the
   interval.

Prints JSON: p50/p95/p99/max time to reach for both, their ratio, the idle fleet's cores and
the projected steady cost (keep-alives measured, plus the waits re-opened every hold period at
the measured CPU per opened wait), against the goals (p95 <= 2 s, <= 0.5 core at 10,000 agents).

``--open-only`` measures what opening a wait costs instead (steps 2 to 5 are skipped):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/reach.py \
        --open-only --opens 2000 --herd 5000

A. baseline: ``--opens`` check-ins, ``--open-concurrency`` at a time, each by another agent: server
   and PostgreSQL CPU per check-in;
B. the same number of wait opens (open, read the first line, hang up), same concurrency: CPU per
   open, and its ratio to the check-in's;
C. the herd: ``--herd`` agents open their waits at the same moment (as after a server restart),
   each honouring a 503's Retry-After as agent_client/wakeup.py does, while other agents check in
   at ``--herd-checkins-per-second``. Time until every agent was held or refused with a
   Retry-After, time until all are held, how many refusals, and the check-in latency during the
   herd against the same check-in stream measured just before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import psutil
import psycopg
from events import drop_database, scratch_database  # bench/events.py: scratch DB helpers
from fleet import Fleet, Recorder, SimAgent, machine, percentiles, prepare, register_all, server_env
from serving import start_server, stop_group, uvicorn_argv

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(ROOT))

from agent_client.protocol import WAKE_KEEPALIVE_SECONDS  # noqa: E402
from agent_client.runner import HEARTBEAT_POLL_SECONDS, failure_delay  # noqa: E402
from agent_client.transport import parse_retry_after  # noqa: E402

REACH_GOAL_SECONDS = 2.0
IDLE_CORES_GOAL = 0.5
GOAL_AGENTS = 10_000
IDLE_POLL_SECONDS = 300


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000, help="agents holding the fast channel")
    parser.add_argument("--baseline-agents", type=int, default=100, help="heartbeat agents without the channel")
    parser.add_argument("--probes", type=int, default=200, help="commands sent to channel agents (and as many "
                        "to baseline agents)")
    parser.add_argument("--probe-rate", type=float, default=5.0, help="probe commands per second")
    parser.add_argument("--idle-seconds", type=float, default=120)
    parser.add_argument("--hold-seconds", type=int, default=600, help="REDFLAG_WAKE_HOLD_SECONDS for the server")
    parser.add_argument("--connect-rate", type=float, default=150.0, help="waits opened per second while connecting")
    parser.add_argument("--connect-concurrency", type=int, default=32, help="waits opening at once (not yet "
                        "answered) while connecting")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--register-concurrency", type=int, default=16)
    parser.add_argument("--register", type=int, default=50, help="channel agents enrolled through the API; the "
                        "rest are copies of the first one's row with credentials issued by the server's own "
                        "credentials_issue (enrolment speed is bench/fleet.py's subject, not this one's)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--open-only", action="store_true", help="measure opening waits (phases A to C of the "
                        "module docstring) instead of reach")
    parser.add_argument("--opens", type=int, default=2000, help="--open-only: check-ins, then wait opens, measured")
    parser.add_argument("--open-concurrency", type=int, default=32, help="--open-only: requests at once")
    parser.add_argument("--herd", type=int, default=5000, help="--open-only: waits opened at the same moment")
    parser.add_argument("--herd-checkins-per-second", type=float, default=40.0,
                        help="--open-only: check-ins by other agents while the herd connects (and before it)")
    parser.add_argument("--herd-timeout", type=float, default=600.0, help="--open-only: give up on the herd after")
    return parser.parse_args()


class Meter:
    """CPU seconds of the server's processes and of the scratch database's PostgreSQL backends."""

    def __init__(self, server_pid: int, database_url: str, database: str) -> None:
        self.server = psutil.Process(server_pid)
        self.database_url = database_url
        self.database = database

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return 0.0

    def backends(self) -> list[psutil.Process]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            pids = [row[0] for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,))]
        found = []
        for pid in pids:
            try:
                found.append(psutil.Process(pid))
            except psutil.Error:
                pass
        return found

    def sample(self) -> dict:
        server = self._cpu(self.server) + sum(self._cpu(child) for child in self.server.children(recursive=True))
        return {"server": server, "postgres": {proc.pid: self._cpu(proc) for proc in self.backends()},
                "simulator": self._cpu(psutil.Process()), "at": time.monotonic()}

    @staticmethod
    def cores(before: dict, after: dict) -> dict:
        seconds = after["at"] - before["at"]
        # Backends that existed at both ends (a pooled connection opened meanwhile counts from zero).
        postgres = sum(cpu - before["postgres"].get(pid, 0.0) for pid, cpu in after["postgres"].items())
        return {"seconds": round(seconds, 1),
                "server_cores": round((after["server"] - before["server"]) / seconds, 4),
                "postgres_cores": round(postgres / seconds, 4),
                "simulator_cores": round((after["simulator"] - before["simulator"]) / seconds, 4),
                "server_cpu_seconds": round(after["server"] - before["server"], 3),
                "postgres_cpu_seconds": round(postgres, 3)}


class ChannelAgent:
    """One simulated agent on the fast channel (agent_client/wakeup.py's loop, without the agent)."""

    def __init__(self, sim: SimAgent, fleet: Fleet, probes: dict, gate: asyncio.Semaphore) -> None:
        self.sim = sim
        self.fleet = fleet
        self.probes = probes  # command id -> monotonic time it was created; shared
        self.gate = gate  # opens not yet answered, at most this many (a fleet coming online over time)
        self.opened = asyncio.Event()
        self.holds = 0
        self.wakeups = 0
        self.failures = 0
        self.retry_after: float | None = None
        self.first_answer: float | None = None  # monotonic: held, or refused with a Retry-After
        self.refusals = 0

    async def run(self, stop: asyncio.Event) -> None:
        url = f"{self.fleet.url}/api/v1/agents/{self.sim.id}/wait"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=3 * WAKE_KEEPALIVE_SECONDS)
        while not stop.is_set():
            woken, problem = False, None
            gated = not self.opened.is_set()
            if gated:
                await self.gate.acquire()
            try:
                async with self.fleet.session.get(url, headers=self.sim.headers(), timeout=timeout) as response:
                    self.retry_after = None
                    if response.status != 200:
                        problem = response.status
                        self.retry_after = parse_retry_after(response.headers.get("Retry-After"))
                        if response.status == 503 and self.retry_after:
                            self.refusals += 1
                            if self.first_answer is None:
                                self.first_answer = time.monotonic()
                    else:
                        async for raw in response.content:
                            line = raw.strip()
                            if not line:
                                continue
                            message = json.loads(line)
                            if message.get("waiting"):
                                self.holds += 1
                                self.failures = 0
                                if self.first_answer is None:
                                    self.first_answer = time.monotonic()
                                if gated:
                                    gated = False
                                    self.gate.release()
                                self.opened.set()
                            elif "wake" in message:
                                woken = message["wake"]
                                break
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = type(exc).__name__
            finally:
                if gated:
                    self.gate.release()
            if problem is not None:
                # As agent_client/wakeup.py backs off: exponential with jitter from 5 s, and never
                # before the server's Retry-After (plus up to 10 % of it, at most 5 s, of its own jitter).
                self.failures += 1
                self.fleet.recorder.add("wait", problem, 0)
                delay = failure_delay(self.failures, None, self.sim.rng)
                if self.retry_after:
                    delay = max(delay, self.retry_after + self.sim.rng.uniform(0, min(5.0, self.retry_after * 0.1)))
                await asyncio.sleep(delay)
                continue
            if woken:
                self.wakeups += 1
                await check_in(self.fleet, self.sim, self.probes, "channel")


async def check_in(fleet: Fleet, sim: SimAgent, probes: dict, kind: str) -> float:
    """The agent's check-in; any probe command it carries has reached the agent now."""
    status, body = await fleet.call("checkin", "POST", f"/api/v1/agents/{sim.id}/checkin", headers=sim.headers(),
                                    body={"agent_version": "0.1.23", "metrics": sim.metrics(),
                                          "heartbeat_active": sim.heartbeat})
    arrived = time.monotonic()
    if status == 200:
        for command in body["commands"]:
            created = probes.pop(command["id"], None)
            if created is not None:
                fleet.recorder.latencies[("reach", kind)].append(arrived - created)
        return float(body["poll_interval_seconds"])
    return HEARTBEAT_POLL_SECONDS


async def heartbeat_poller(fleet: Fleet, sim: SimAgent, probes: dict, stop: asyncio.Event) -> None:
    """A baseline agent: heartbeat mode, no channel, a check-in every 5 s (first one at a random phase)."""
    await asyncio.sleep(random.uniform(0, HEARTBEAT_POLL_SECONDS))
    while not stop.is_set():
        await check_in(fleet, sim, probes, "baseline")
        await asyncio.sleep(HEARTBEAT_POLL_SECONDS)


def setup_django(env: dict) -> None:
    os.environ.update(env)
    import django  # noqa: PLC0415  (configured from the server's environment first)

    django.setup()


def clone_agents(database_url: str, template_id: str, sims: list[SimAgent]) -> None:
    """Copies of a registered agent's row, one per ``sims`` (new id, hostname and machine id), each
    with its own credentials from ``credentials_issue``, as registration gives them."""
    from django.utils import timezone  # noqa: PLC0415  (needs setup_django())

    from agents_app.models import Agent  # noqa: PLC0415
    from agents_app.services.credentials import credentials_issue  # noqa: PLC0415

    for sim in sims:
        sim.id = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        columns = [row[0] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'agents_app_agent' "
            "AND column_name NOT IN ('id', 'hostname', 'machine_id_hash') ORDER BY ordinal_position")]
        target = ", ".join(f'"{name}"' for name in columns)
        copied = ", ".join(f't."{name}"' for name in columns)
        conn.execute(
            f"INSERT INTO agents_app_agent (id, hostname, machine_id_hash, {target}) "
            f"SELECT u.id, u.hostname, u.machine, {copied} FROM agents_app_agent t, "
            "unnest(%s::uuid[], %s::text[], %s::text[]) AS u(id, hostname, machine) WHERE t.id = %s",
            ([sim.id for sim in sims], [sim.hostname for sim in sims], [sim.machine_id for sim in sims],
             template_id))
    now = timezone.now()
    by_id = {sim.id: sim for sim in sims}
    for agent in Agent.objects.filter(pk__in=list(by_id)).iterator(chunk_size=1000):
        by_id[str(agent.pk)].access_token = credentials_issue(agent=agent, now=now).access_token


def create_probe(agent_id: str, probes: dict) -> None:
    from agents_app.models import Agent  # noqa: PLC0415  (needs setup_django())
    from agents_app.services.commands import command_create  # noqa: PLC0415

    agent = Agent.objects.get(pk=agent_id)
    created = time.monotonic()
    command = command_create(agent=agent, command_type="scan_storage", params={}, source="web_ui")
    probes[str(command.pk)] = created


async def send_probes(agents: list[SimAgent], count: int, rate: float, probes: dict, kind: str,
                      recorder: Recorder, settle: float) -> dict:
    chosen = random.sample(agents, min(count, len(agents)))
    for sim in chosen:
        await asyncio.to_thread(create_probe, sim.id, probes)
        await asyncio.sleep(1 / rate)
    deadline = time.monotonic() + settle
    while probes and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    values = sorted(recorder.latencies[("reach", kind)])
    lost = len(probes)
    probes.clear()
    return {"probes": len(chosen), "reached": len(values), "not_reached_within_s": {str(settle): lost},
            **{key.replace("_ms", "_s"): (round(value / 1000, 3) if value is not None else None)
               for key, value in percentiles([value * 1000 for value in values]).items()}}


async def enroll(args: argparse.Namespace, fleet: Fleet, sims: list[SimAgent], secret: str, database_url: str,
                 result: dict) -> list[SimAgent]:
    """Step 1's agents: the first ``--register`` and the heartbeat ones through the API, the rest copied."""
    started = time.perf_counter()
    through_api = sims[:min(args.register, args.agents)] + sims[args.agents:]
    failed = await register_all(fleet, through_api, secret, args.register_concurrency)
    print(f"registered {len(through_api)} agents in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    cloned = sims[min(args.register, args.agents):args.agents]
    if cloned and sims[0].id:
        await asyncio.to_thread(clone_agents, database_url, sims[0].id, cloned)
        print(f"copied {len(cloned)} more in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    registered = [sim for sim in sims if sim.id and sim.access_token]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE agents_app_agentsubsystem SET next_run_at = now() + interval '1 day'")
        conn.execute("UPDATE agents_app_agent SET heartbeat_until = now() + interval '12 hours' "
                     "WHERE id = ANY(%s::uuid[])", ([sim.id for sim in registered if sim.heartbeat],))
    result["registration"] = {"agents": len(registered), "through_api": len(through_api),
                              "copied_with_issued_credentials": len(cloned), "failed": failed,
                              "seconds": round(time.perf_counter() - started, 1)}
    return registered


async def open_once(fleet: Fleet, sim: SimAgent) -> int | str:
    """Open a wait, read its first line, hang up: the status (200 once the wait was held)."""
    url = f"{fleet.url}/api/v1/agents/{sim.id}/wait"
    try:
        async with fleet.session.get(url, headers=sim.headers()) as response:
            if response.status == 200:
                await response.content.readline()
            return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return type(exc).__name__


async def at_concurrency(calls: list, concurrency: int) -> list:
    gate = asyncio.Semaphore(concurrency)

    async def gated(call):
        async with gate:
            return await call()

    return await asyncio.gather(*(gated(call) for call in calls))


async def checkin_stream(fleet: Fleet, sims: list[SimAgent], rate: float, stop: asyncio.Event) -> None:
    """Check-ins at ``rate`` a second, round the given agents, each on its own task (an open loop:
    a slow server does not slow the arrivals)."""
    running: set = set()
    for index in range(10**9):
        if stop.is_set():
            break
        task = asyncio.create_task(check_in(fleet, sims[index % len(sims)], {}, "stream"))
        running.add(task)
        task.add_done_callback(running.discard)
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*running, return_exceptions=True)


async def simulate_opens(args: argparse.Namespace, url: str, secret: str, database_url: str, meter: Meter) -> dict:
    """Phases A to C of the module docstring."""
    recorder = Recorder()
    sims = [SimAgent(index, heartbeat=False) for index in range(args.agents)]
    result: dict = {}
    async with Fleet(url, recorder, {}, json.loads((DATA / "system_report.json").read_text())["report"]) as fleet:
        registered = await enroll(args, fleet, sims, secret, database_url, result)
        measured = registered[:args.opens]
        await at_concurrency([lambda sim=sim: open_once(fleet, sim) for sim in registered[:64]], 8)  # warm up

        recorder.start("checkins")
        before = meter.sample()
        await at_concurrency([lambda sim=sim: check_in(fleet, sim, {}, "baseline") for sim in measured],
                             args.open_concurrency)
        checkins = Meter.cores(before, meter.sample())
        checkin_statuses = dict(recorder.statuses[("checkins", "checkin")])

        before = meter.sample()
        statuses = await at_concurrency([lambda sim=sim: open_once(fleet, sim) for sim in measured],
                                        args.open_concurrency)
        opens = Meter.cores(before, meter.sample())
        per = {name: {
            "server_cpu_ms": round(1000 * cpu["server_cpu_seconds"] / len(measured), 3),
            "postgres_cpu_ms": round(1000 * cpu["postgres_cpu_seconds"] / len(measured), 3),
            "per_second": round(len(measured) / cpu["seconds"], 1)} for name, cpu in (("checkin", checkins),
                                                                                     ("wait_open", opens))}
        result["opens"] = {
            "requests": len(measured), "concurrency": args.open_concurrency,
            "baseline_checkin": {**per["checkin"], "statuses": checkin_statuses},
            "wait_open": {**per["wait_open"], "statuses": {str(k): v for k, v in Counter(statuses).items()}},
            "ratio_to_checkin": {key: round(per["wait_open"][key] / per["checkin"][key], 3)
                                 for key in ("server_cpu_ms", "postgres_cpu_ms") if per["checkin"][key]}}
        print(f"opens measured: {result['opens']}", file=sys.stderr)

        herd_sims, streamers = registered[:args.herd], registered[args.herd:] or registered[:200]
        stop = asyncio.Event()
        recorder.start("before_herd")
        stream = asyncio.create_task(checkin_stream(fleet, streamers, args.herd_checkins_per_second, stop))
        await asyncio.sleep(10)
        recorder.start("herd")
        gate = asyncio.Semaphore(len(herd_sims))  # no gate: every agent at once
        herd = [ChannelAgent(sim, fleet, {}, gate) for sim in herd_sims]
        started = time.monotonic()
        before = meter.sample()
        tasks = [asyncio.create_task(agent.run(stop)) for agent in herd]
        answered_at = held_at = None
        while time.monotonic() - started < args.herd_timeout:
            if answered_at is None and all(agent.first_answer is not None for agent in herd):
                answered_at = time.monotonic()
            if all(agent.opened.is_set() for agent in herd):
                held_at = time.monotonic()
                break
            await asyncio.sleep(0.2)
        herd_cpu = Meter.cores(before, meter.sample())
        # The check-ins alongside are measured for at least as long as the stream ran before.
        await asyncio.sleep(max(0.0, started + 10 - time.monotonic()))
        stop.set()
        await stream
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        summaries = {phase: recorder.summary(phase, 1).get("checkin", {}) for phase in ("before_herd", "herd")}
        result["herd"] = {
            "agents": len(herd), "checkins_per_second_alongside": args.herd_checkins_per_second,
            "all_answered_s": round(answered_at - started, 1) if answered_at else None,
            "all_held_s": round(held_at - started, 1) if held_at else None,
            "held": sum(agent.opened.is_set() for agent in herd),
            "refused_with_retry_after": sum(agent.refusals for agent in herd),
            "agents_refused_at_least_once": sum(bool(agent.refusals) for agent in herd),
            "wait_statuses": {status: n for (phase, kind), counts in recorder.statuses.items()
                              if kind == "wait" for status, n in counts.items()},
            "cpu": herd_cpu,
            "checkins_before_herd": {key: summaries["before_herd"].get(key) for key in
                                     ("ok", "errors_by_status", "p50_ms", "p95_ms", "p99_ms", "max_ms")},
            "checkins_during_herd": {key: summaries["herd"].get(key) for key in
                                     ("ok", "errors_by_status", "p50_ms", "p95_ms", "p99_ms", "max_ms")},
        }
        before_p99, during_p99 = summaries["before_herd"].get("p99_ms"), summaries["herd"].get("p99_ms")
        if before_p99 and during_p99:
            result["herd"]["checkin_p99_ratio_to_before"] = round(during_p99 / before_p99, 2)
    return result


async def simulate(args: argparse.Namespace, url: str, secret: str, database_url: str, meter: Meter) -> dict:
    recorder = Recorder()
    sims = [SimAgent(index, heartbeat=index >= args.agents) for index in range(args.agents + args.baseline_agents)]
    probes: dict[str, float] = {}
    result: dict = {}
    async with Fleet(url, recorder, {}, json.loads((DATA / "system_report.json").read_text())["report"]) as fleet:
        registered = await enroll(args, fleet, sims, secret, database_url, result)

        gate = asyncio.Semaphore(args.connect_concurrency)
        channel = [ChannelAgent(sim, fleet, probes, gate) for sim in registered if not sim.heartbeat]
        stop = asyncio.Event()
        before = meter.sample()
        tasks = []
        for index, agent in enumerate(channel):
            tasks.append(asyncio.create_task(agent.run(stop)))
            if index % 50 == 49:
                await asyncio.sleep(50 / args.connect_rate)
        await asyncio.wait_for(asyncio.gather(*(agent.opened.wait() for agent in channel)), 1800)
        connect = Meter.cores(before, meter.sample())
        connected = sum(agent.opened.is_set() for agent in channel)
        print(f"{connected} waits held", file=sys.stderr)
        result["connect"] = {
            **connect, "waits": connected,
            "server_cpu_ms_per_wait_opened": round(1000 * connect["server_cpu_seconds"] / connected, 3),
            "postgres_cpu_ms_per_wait_opened": round(1000 * connect["postgres_cpu_seconds"] / connected, 3)}

        await asyncio.sleep(5)
        before = meter.sample()
        await asyncio.sleep(args.idle_seconds)
        idle = Meter.cores(before, meter.sample())
        reopen_rate = connected / args.hold_seconds
        projected = (idle["server_cores"] + idle["postgres_cores"]
                     + reopen_rate * (result["connect"]["server_cpu_ms_per_wait_opened"]
                                      + result["connect"]["postgres_cpu_ms_per_wait_opened"]) / 1000)
        result["idle"] = {**idle, "waits_held": sum(agent.opened.is_set() for agent in channel),
                          "reopened_per_second_steady": round(reopen_rate, 2),
                          "projected_cores_with_reopens": round(projected, 4),
                          "server_memory_mib": round(sum(p.memory_info().rss for p in
                                                         [meter.server, *meter.server.children(recursive=True)])
                                                     / 2**20, 1)}
        print("idle measured", file=sys.stderr)

        recorder.start("reach")
        before = meter.sample()
        result["reach"] = await send_probes([agent.sim for agent in channel], args.probes, args.probe_rate, probes,
                                            "channel", recorder, settle=30)
        result["reach"]["cores_while_probing"] = Meter.cores(before, meter.sample())
        print("reach measured", file=sys.stderr)

        baseline_sims = [sim for sim in registered if sim.heartbeat]
        pollers = [asyncio.create_task(heartbeat_poller(fleet, sim, probes, stop)) for sim in baseline_sims]
        await asyncio.sleep(HEARTBEAT_POLL_SECONDS + 1)
        result["baseline"] = await send_probes(baseline_sims, args.probes, args.probe_rate, probes, "baseline",
                                               recorder, settle=30)
        result["baseline"]["what"] = "heartbeat mode without the channel: a check-in every 5 s"
        stop.set()
        for task in [*tasks, *pollers]:
            task.cancel()
        await asyncio.gather(*tasks, *pollers, return_exceptions=True)
        result["wait_errors"] = {status: n for (_, kind), counts in recorder.statuses.items() if kind == "wait"
                                 for status, n in counts.items()}
        result["checkin_statuses"] = {phase: dict(counts) for (phase, kind), counts in recorder.statuses.items()
                                      if kind == "checkin"}
    reach, baseline = result["reach"], result["baseline"]
    result["ratios_to_baseline"] = {key: round(reach[key] / baseline[key], 3) for key in ("p50_s", "p95_s", "p99_s")
                                    if reach.get(key) and baseline.get(key)}
    result["goal"] = {
        "reach_p95_s_at_most": REACH_GOAL_SECONDS, "idle_cores_at_most": IDLE_CORES_GOAL, "at_agents": GOAL_AGENTS,
        "reach_met": bool(reach.get("p95_s")) and reach["p95_s"] <= REACH_GOAL_SECONDS
        and reach["reached"] == reach["probes"],
        "idle_met": result["idle"]["projected_cores_with_reopens"] <= IDLE_CORES_GOAL,
        "measured_at_agents": result["idle"]["waits_held"],
    }
    return result


def main() -> int:
    args = parse_args()
    # Stopped (SIGTERM): leave through the finally below, which stops the server and drops the database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.database_url.startswith("postgres"):
        print("bench/reach.py needs a PostgreSQL DATABASE_URL (the server it starts runs on it)", file=sys.stderr)
        return 2
    if args.open_only:  # the herd, plus agents of their own for the check-in stream alongside
        args.agents, args.baseline_agents = max(args.opens, args.herd) + 200, 0
    base, name = scratch_database(args.database_url)
    database_url = f"{base}/{name}"
    data_dir = tempfile.mkdtemp(prefix="redflag-reach-")
    env = server_env(database_url, data_dir, "", 0)
    env["REDFLAG_WAKE_HOLD_SECONDS"] = str(args.hold_seconds)
    server = None
    argv = lambda port: uvicorn_argv(port, "--workers", str(args.workers), "--log-level", "warning",  # noqa: E731
                                     "--no-access-log")
    try:
        secret = prepare(env, seats=args.agents + args.baseline_agents, interval=IDLE_POLL_SECONDS)
        setup_django(env)
        server, url = start_server(env, Path(data_dir) / "server.log", argv, timeout=60)
        simulation = simulate_opens if args.open_only else simulate
        result = asyncio.run(simulation(args, url, secret, database_url, Meter(server.pid, database_url, name)))
        log = (Path(data_dir) / "server.log").read_text(errors="replace")
        result["server"] = {"command": " ".join(argv(0)[2:]), "mode": "REDFLAG_ENV=production",
                            "hold_seconds": args.hold_seconds, "keepalive_seconds": WAKE_KEEPALIVE_SECONDS,
                            "log_tracebacks": log.count("Traceback")}
    finally:
        if server is not None:
            stop_group(server)
        from django.db import connections  # noqa: PLC0415

        connections.close_all()
        if not args.keep:
            drop_database(base, name)
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps({"bench": "reach", "machine": machine(),
                      "fleet": {"channel_agents": args.agents, "baseline_agents": args.baseline_agents,
                                "poll_interval_seconds": IDLE_POLL_SECONDS, "probes": args.probes},
                      **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
