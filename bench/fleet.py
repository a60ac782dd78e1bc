"""Fleet simulator: N agents against a production server on PostgreSQL, in one asyncio process.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/fleet.py \
        --agents 10000 --heartbeat 1000 --interval 300 --duration 360

What it does, in a scratch database it creates and drops:

1. Starts the server as the README's production section does (REDFLAG_ENV=production,
   uvicorn with ``--workers``), with the registration rate limit raised for the
   enrolment (every other limit as shipped).
2. Registers every agent through ``POST /agents/register`` (one registration token
   with enough seats), ``--register-concurrency`` at a time.
3. Baseline: ``GET /agents/{id}/config`` — the cheapest authenticated agent endpoint,
   one read of the agent's settings — at the steady state's request rate, from the
   same client, for ``--baseline-seconds``.
4. Steady state for ``--duration`` seconds. The fleet has been running for a while:
   each agent's first check-in falls at a random point of its interval, and its
   subsystems' next scans are spread over their intervals (as after a day of
   operation), so reports arrive at the rate a real fleet sends them. Each agent
   then behaves as ``agent_client run`` does: checks in with metrics, waits the
   server's ``poll_interval_seconds`` with the agent's own jitter
   (``agent_client.runner.poll_delay``) or backs off after a failure
   (``failure_delay``, at least ``Retry-After``), and answers the commands it is
   handed: a scan of updates sends the recorded APT scan of a real Debian 12 host
   (``bench/data/apt_scan_debian12.json``, 124 packages), a system or storage scan
   sends the recorded system report of the same host, and every command gets its
   result. ``--heartbeat`` of the agents are in heartbeat mode (``heartbeat_until``
   set on the server) and poll every 5 s, as today's agent still does
   (``agent_client.runner.poll_delay``) and older agents always did.

   The fast channel (``--channel agent``, the default): like ``agent_client run``,
   every agent also holds ``GET /agents/{id}/wait`` (``agent_client/wakeup.py``),
   re-opens it when a hold ends, and checks in at once when woken. The waits are
   opened before the baseline (at most 150 a second), and each agent's first hold
   is cut short at a random point of the server's hold period, so re-opens arrive at
   a steady fleet's rate (agents / REDFLAG_WAKE_HOLD_SECONDS a second).
   ``--channel none`` is a fleet of older agents, polling only.

Every request opens its own TCP connection (agents 5 minutes apart do not keep
one), and the simulated agents do not verify command signatures (the real agent
does; that is the agent's CPU, not the server's).

Prints JSON: check-ins per second against the target, p50/p95/p99 latency per
request kind, errors by status, the baseline's latency at the same rate, and each
check-in figure as a ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import psutil
import psycopg
from events import drop_database, scratch_database  # bench/events.py: scratch DB helpers
from serving import manage, start_server, stop_group, uvicorn_argv

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(ROOT))

from agent_client.protocol import WAKE_KEEPALIVE_SECONDS  # noqa: E402
from agent_client.runner import HEARTBEAT_POLL_SECONDS, failure_delay, poll_delay  # noqa: E402  (the agent's own)

P99_GOAL_MS = 100  # issue 16, goal 2
WAKE_HOLD_SECONDS = 600  # the server's REDFLAG_WAKE_HOLD_SECONDS as shipped
CHANNEL_OPENS_PER_SECOND = 150


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000, help="agents at the normal interval")
    parser.add_argument("--heartbeat", type=int, default=1_000, help="agents in 5-second heartbeat mode")
    parser.add_argument("--interval", type=int, default=300, help="poll interval in seconds (server default)")
    parser.add_argument("--duration", type=float, default=360, help="seconds of steady state measured")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--server", choices=("uvicorn", "gunicorn"), default="uvicorn",
                        help="uvicorn (ASGI, the README's) or, for comparison, gunicorn's threaded WSGI workers "
                        "(pip install gunicorn; not in requirements)")
    parser.add_argument("--scans", choices=("spread", "due"), default="spread",
                        help="spread: each subsystem's next scan somewhere in its interval (a fleet that has been "
                        "running); due: every scan due at the first check-in (a fleet just enrolled)")
    parser.add_argument("--channel", choices=("agent", "none"), default="agent",
                        help="agent: every agent also holds the fast channel (GET …/wait), as agent_client run does; "
                        "none: older agents, polling only")
    parser.add_argument("--register-concurrency", type=int, default=16)
    parser.add_argument("--baseline-seconds", type=float, default=30)
    parser.add_argument("--pool-size", type=int, default=0, help="REDFLAG_DB_POOL_SIZE for the server (default: "
                        "the server's own)")
    parser.add_argument("--cache-url", default="", help="REDFLAG_CACHE_URL for the server (rate-limit counters in "
                        "Redis); default: the database cache table")
    parser.add_argument("--synchronous-commit", choices=("on", "off"), default="on",
                        help="the scratch database's synchronous_commit: 'off' is a diagnostic of what waiting "
                        "for the disk on each COMMIT costs, not a recommendation")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args()


# -- the server ------------------------------------------------------------------------------


def server_env(database_url: str, data_dir: str, cache_url: str, pool_size: int) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDFLAG_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="redflag.settings", DATABASE_URL=database_url, REDFLAG_ENV="production",
        REDFLAG_SECRET_KEY=secrets.token_urlsafe(64), REDFLAG_ALLOWED_HOSTS="127.0.0.1",
        REDFLAG_SSL_REDIRECT="false", REDFLAG_DATA_DIR=data_dir, REDFLAG_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    if cache_url:
        env["REDFLAG_CACHE_URL"] = cache_url
    if pool_size:
        env["REDFLAG_DB_POOL_SIZE"] = str(pool_size)
    return env


PREPARE = """
from datetime import timedelta
from redflag.models import ServerSettings
from tokens_app.services import token_create
settings = ServerSettings.current()
settings.rate_registration = '100000/min'
settings.default_poll_interval_seconds = {interval}
settings.save()
_, secret = token_create(label='fleet bench', max_seats={seats}, expires_in=timedelta(hours=12))
print(secret)
"""


def prepare(env: dict, seats: int, interval: int) -> str:
    manage(env, "migrate", "--noinput")
    manage(env, "createcachetable")
    return manage(env, "shell", "--no-imports", "-c", PREPARE.format(seats=seats, interval=interval)).strip()


# uvicorn without its C parser and event loop (httptools, uvloop), as before they were in requirements.txt.
UVICORN_PLAIN = ("--loop", "asyncio", "--http", "h11")


def server_argv(kind: str, workers: int, port: int, extra: tuple = ()) -> list[str]:
    if kind == "gunicorn":
        return [sys.executable, "-m", "gunicorn", "redflag.wsgi:application", "--bind", f"127.0.0.1:{port}",
                "--workers", str(workers), "--worker-class", "gthread", "--threads", "8", "--log-level", "warning"]
    return uvicorn_argv(port, "--workers", str(workers), "--log-level", "warning", "--no-access-log", *extra)


def spread_fleet(database_url: str, heartbeat_ids: list[str], scans: str) -> None:
    """Some agents in heartbeat mode; with scans="spread", a fleet that has been running: each
    subsystem's next scan somewhere in its interval."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        if scans == "spread":
            conn.execute("UPDATE agents_app_agentsubsystem SET next_run_at = now() + "
                         "make_interval(secs => random() * interval_minutes * 60)")
        conn.execute("UPDATE agents_app_agent SET heartbeat_until = now() + interval '12 hours' "
                     "WHERE id = ANY(%s::uuid[])", (heartbeat_ids,))


class CpuMeter:
    """Cores used over one phase: the whole machine, the server's processes, this simulator;
    "other" is the rest (PostgreSQL, mostly)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def sample(self) -> dict:
        def cpu(process) -> float:
            try:
                times = process.cpu_times()
                return times.user + times.system
            except psutil.Error:
                return 0.0

        server = psutil.Process(self.server_pid)
        machine = psutil.cpu_times()
        return {"machine": machine.user + machine.system + machine.nice + getattr(machine, "softirq", 0.0)
                + getattr(machine, "irq", 0.0),
                "server": cpu(server) + sum(cpu(child) for child in server.children(recursive=True)),
                "simulator": cpu(psutil.Process())}

    @staticmethod
    def spent(before: dict, after: dict, seconds: float) -> dict:
        cores = {name: round((after[name] - before[name]) / seconds, 2) for name in before}
        cores["other"] = round(cores["machine"] - cores["server"] - cores["simulator"], 2)
        return cores


# -- the simulated agents ---------------------------------------------------------------------


class Recorder:
    """Latency and status of every request, by phase and kind."""

    def __init__(self) -> None:
        self.latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.statuses: dict[tuple[str, str], Counter] = defaultdict(Counter)
        self.phase = "register"
        self.checkins: list[tuple[float, float]] = []  # steady state: (seconds since start, latency ms)
        self.phase_started = time.perf_counter()

    def start(self, phase: str) -> None:
        self.phase, self.phase_started = phase, time.perf_counter()

    def add(self, kind: str, status: int | str, seconds: float) -> None:
        self.statuses[(self.phase, kind)][str(status)] += 1
        if isinstance(status, int) and 200 <= status < 300:
            self.latencies[(self.phase, kind)].append(seconds * 1000)
            if self.phase == "steady" and kind == "checkin":
                self.checkins.append((time.perf_counter() - self.phase_started, seconds * 1000))

    def timeline(self, bucket: float = 10.0) -> list[dict]:
        """Check-in latency per ``bucket`` seconds of the steady state: is it steady, or are there stalls?"""
        buckets: dict[int, list[float]] = defaultdict(list)
        for at, latency in self.checkins:
            buckets[int(at // bucket)].append(latency)
        return [{"from_s": index * bucket, "checkins": len(values), **percentiles(sorted(values))}
                for index, values in sorted(buckets.items())]

    def summary(self, phase: str, seconds: float) -> dict:
        out = {}
        for (recorded_phase, kind), statuses in sorted(self.statuses.items()):
            if recorded_phase != phase:
                continue
            values = sorted(self.latencies[(phase, kind)])
            total = sum(statuses.values())
            out[kind] = {
                "requests": total,
                "per_second": round(total / seconds, 2),
                "ok": len(values),
                "errors_by_status": {status: n for status, n in statuses.items() if not status.startswith("2")},
                **percentiles(values),
            }
        return out


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    if len(values) == 1:
        return {"p50_ms": round(values[0], 2), "p95_ms": round(values[0], 2), "p99_ms": round(values[0], 2),
                "max_ms": round(values[0], 2)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49], 2), "p95_ms": round(cuts[94], 2), "p99_ms": round(cuts[98], 2),
            "max_ms": round(values[-1], 2)}


class SimAgent:
    def __init__(self, index: int, heartbeat: bool) -> None:
        self.index = index
        self.machine_id = secrets.token_hex(32)
        self.hostname = f"sim-{index:05d}"
        self.heartbeat = heartbeat
        self.rng = random.Random(index)
        self.id = ""
        self.access_token = ""
        self.failures = 0
        self.woken = asyncio.Event()  # the fast channel says: check in now

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.access_token}", "X-Machine-ID": self.machine_id,
                "X-Request-Nonce": secrets.token_urlsafe(24), "X-Request-Timestamp": str(int(time.time()))}

    def metrics(self) -> dict:
        return {"cpu_percent": round(self.rng.uniform(1, 60), 1), "memory_percent": round(self.rng.uniform(20, 80), 1),
                "memory_used_bytes": 2_000_000_000, "memory_total_bytes": 8_000_000_000,
                "disk_percent": 41.5, "load_average": [0.3, 0.2, 0.1], "uptime_seconds": 86_400}


class Fleet:
    def __init__(self, url: str, recorder: Recorder, apt_report: dict, system_report: dict) -> None:
        self.url = url
        self.recorder = recorder
        self.apt_report = apt_report
        self.system_report = system_report
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fleet:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def call(self, kind: str, method: str, path: str, *, body=None, headers=None) -> tuple[int, dict | None]:
        started = time.perf_counter()
        try:
            async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
                payload = await response.json(content_type=None) if response.status < 500 else None
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.recorder.add(kind, type(exc).__name__, time.perf_counter() - started)
            return 0, None
        self.recorder.add(kind, status, time.perf_counter() - started)
        if status >= 400 and payload is not None:
            payload["retry_after"] = float(retry_after) if retry_after and retry_after.isdigit() else None
        return status, payload

    async def register(self, agent: SimAgent, secret: str) -> bool:
        status, body = await self.call("register", "POST", "/api/v1/agents/register", body={
            "registration_token": secret, "machine_id": agent.machine_id, "hostname": agent.hostname,
            "os_family": "linux", "os_name": "Debian GNU/Linux", "os_version": "12", "arch": "x86_64",
            "kernel": self.system_report["kernel"], "agent_version": "0.1.23",
            "capabilities": ["apt", "system", "storage"]})
        if status != 201:
            return False
        agent.id, agent.access_token = body["agent_id"], body["access_token"]
        return True

    async def config(self, agent: SimAgent) -> None:
        await self.call("config", "GET", f"/api/v1/agents/{agent.id}/config", headers=agent.headers())

    async def cycle(self, agent: SimAgent) -> float:
        """One check-in and the commands it hands over; returns the delay until the next."""
        status, body = await self.call("checkin", "POST", f"/api/v1/agents/{agent.id}/checkin", headers=agent.headers(),
                                       body={"agent_version": "0.1.23", "metrics": agent.metrics(),
                                             "heartbeat_active": agent.heartbeat})
        if status != 200:
            agent.failures += 1
            return failure_delay(agent.failures, (body or {}).get("retry_after"), agent.rng)
        agent.failures = 0
        agent.heartbeat = body["heartbeat"]["active"]
        for command in body["commands"]:
            await self.execute(agent, command)
        return poll_delay(float(body["poll_interval_seconds"]), agent.heartbeat, agent.rng)

    async def execute(self, agent: SimAgent, command: dict) -> None:
        base = f"/api/v1/agents/{agent.id}"
        details: dict = {}
        if command["type"] == "scan_updates":
            report_id = uuid.uuid4().hex
            await self.call("report_updates", "POST", f"{base}/reports/updates", headers=agent.headers(), body={
                "report_id": report_id, "package_type": "apt", "updates": self.apt_report["updates"],
                "not_checked": self.apt_report["not_checked"]})
            details = {"report_id": report_id, "updates": len(self.apt_report["updates"])}
        elif command["type"] in ("scan_system", "scan_storage"):
            await self.call("report_system", "POST", f"{base}/reports/system", headers=agent.headers(),
                            body={**self.system_report, "hostname": agent.hostname})
        await self.call("result", "POST", f"{base}/commands/{command['id']}/result", headers=agent.headers(), body={
            "status": "succeeded", "output": "done", "exit_code": 0, "duration_seconds": 1.0, "details": details})

    async def run_agent(self, agent: SimAgent, interval: float, until: float) -> None:
        loop = asyncio.get_running_loop()
        # A fleet that has been running: this agent's check-in falls anywhere in its interval.
        first = agent.rng.uniform(0, HEARTBEAT_POLL_SECONDS if agent.heartbeat else interval)
        await self.pause(agent, min(first, max(0.0, until - loop.time())))
        while loop.time() < until:
            delay = await self.cycle(agent)
            await self.pause(agent, max(0.0, min(delay, until - loop.time())))

    @staticmethod
    async def pause(agent: SimAgent, seconds: float) -> None:
        """The runner's wait between cycles: ends early when the fast channel wakes the agent."""
        try:
            await asyncio.wait_for(agent.woken.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        agent.woken.clear()

    async def hold_channel(self, agent: SimAgent, gate: asyncio.Semaphore, opened: asyncio.Event) -> None:
        """agent_client/wakeup.py's loop: hold GET …/wait, re-open when a hold ends, nudge the check-in
        when woken, back off after a failure. The first hold ends at a random point of the hold period
        (a fleet that has been running re-opens its waits at an even rate). Cancelled at the end."""
        url = f"{self.url}/api/v1/agents/{agent.id}/wait"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=3 * WAKE_KEEPALIVE_SECONDS)
        cut_after = agent.rng.uniform(0, WAKE_HOLD_SECONDS)
        failures = 0
        while True:
            gated = not opened.is_set()
            if gated:
                await gate.acquire()
            started, problem, woken = time.perf_counter(), None, False
            cut = asyncio.timeout(cut_after)
            try:
                async with self.session.get(url, headers=agent.headers(), timeout=timeout) as response:
                    if response.status != 200:
                        problem = response.status
                    else:
                        async with cut:
                            async for raw in response.content:
                                line = raw.strip()
                                if not line:
                                    continue
                                message = json.loads(line)
                                if message.get("waiting"):
                                    self.recorder.add("wait_open", 200, time.perf_counter() - started)
                                    failures = 0
                                    if gated:
                                        gated = False
                                        gate.release()
                                    opened.set()
                                elif "wake" in message:
                                    woken = message["wake"] is True
                                    break
            except (aiohttp.ClientError, TimeoutError) as exc:
                if not cut.expired():  # else the first hold, cut short
                    problem = type(exc).__name__
            finally:
                if gated:
                    gate.release()
            cut_after = None
            if problem is not None:
                failures += 1
                self.recorder.add("wait_open", problem, time.perf_counter() - started)
                await asyncio.sleep(failure_delay(failures, None, agent.rng))
            elif woken:
                agent.woken.set()


async def register_all(fleet: Fleet, agents: list[SimAgent], secret: str, concurrency: int) -> int:
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(agent: SimAgent) -> None:
        nonlocal failures
        async with gate:
            for attempt in range(1, 6):
                if await fleet.register(agent, secret):
                    return
                await asyncio.sleep(failure_delay(attempt, None, agent.rng) / 5)
            failures += 1

    await asyncio.gather(*(one(agent) for agent in agents))
    return failures


async def open_loop(rate: float, seconds: float, make_call) -> None:
    """Start make_call() ``rate`` times a second for ``seconds``, without waiting for answers."""
    loop = asyncio.get_running_loop()
    start, tasks, sent = loop.time(), set(), 0
    while (elapsed := loop.time() - start) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            task = asyncio.create_task(make_call(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)


async def simulate(args: argparse.Namespace, url: str, secret: str, database_url: str, meter: CpuMeter) -> dict:
    apt_report = json.loads((DATA / "apt_scan_debian12.json").read_text())
    system_report = json.loads((DATA / "system_report.json").read_text())["report"]
    recorder = Recorder()
    agents = [SimAgent(index, heartbeat=index < args.heartbeat) for index in range(args.agents + args.heartbeat)]
    target = args.agents / args.interval + args.heartbeat / HEARTBEAT_POLL_SECONDS
    async with Fleet(url, recorder, apt_report, system_report) as fleet:
        started = time.perf_counter()
        failed = await register_all(fleet, agents, secret, args.register_concurrency)
        register_seconds = time.perf_counter() - started
        registered = [agent for agent in agents if agent.id]
        spread_fleet(database_url, [agent.id for agent in registered if agent.heartbeat], args.scans)
        print(f"registered {len(registered)} agents in {register_seconds:.1f} s", file=sys.stderr)

        channels: list[asyncio.Task] = []
        if args.channel == "agent":
            recorder.start("connect")
            gate, connect_started = asyncio.Semaphore(32), time.perf_counter()
            opened = [asyncio.Event() for _ in registered]
            for agent, event in zip(registered, opened):
                channels.append(asyncio.create_task(fleet.hold_channel(agent, gate, event)))
                await asyncio.sleep(1 / CHANNEL_OPENS_PER_SECOND)
            await asyncio.wait([asyncio.create_task(event.wait()) for event in opened], timeout=120)
            print(f"{sum(event.is_set() for event in opened)} waits open in "
                  f"{time.perf_counter() - connect_started:.1f} s", file=sys.stderr)

        recorder.start("baseline")
        await open_loop(target, args.baseline_seconds,
                        lambda n: fleet.config(registered[n % len(registered)]))
        print("baseline done", file=sys.stderr)

        recorder.start("steady")
        loop = asyncio.get_running_loop()
        until = loop.time() + args.duration
        started, cpu_before = time.perf_counter(), meter.sample()
        await asyncio.gather(*(fleet.run_agent(agent, args.interval, until) for agent in registered))
        steady_seconds = time.perf_counter() - started
        cores = CpuMeter.spent(cpu_before, meter.sample(), steady_seconds)
        for task in channels:
            task.cancel()
        await asyncio.gather(*channels, return_exceptions=True)
    steady = recorder.summary("steady", steady_seconds)
    baseline = recorder.summary("baseline", args.baseline_seconds)["config"]
    checkin = steady.get("checkin", {})
    errors = sum(sum(kind["errors_by_status"].values()) for kind in steady.values())
    return {
        "registration": {**recorder.summary("register", register_seconds)["register"],
                         "seconds": round(register_seconds, 1), "failed_agents": failed},
        "target_checkins_per_second": round(target, 2),
        "channel": {"mode": args.channel, "connect": recorder.summary("connect", 1.0).get("wait_open")},
        "steady_seconds": round(steady_seconds, 1),
        "steady": steady,
        "steady_cores_used": cores,
        "steady_checkin_timeline": recorder.timeline(),
        "baseline": {"endpoint": "GET /api/v1/agents/{id}/config", "rate_per_second": round(target, 2), **baseline},
        "ratios_to_baseline": {
            key: round(checkin[key] / baseline[key], 2) for key in ("p50_ms", "p95_ms", "p99_ms")
            if checkin.get(key) and baseline.get(key)
        },
        "goal": {"checkins_per_second": round(target, 2), "p99_ms_under": P99_GOAL_MS, "errors": 0,
                 "met": bool(checkin.get("p99_ms")) and checkin["p99_ms"] < P99_GOAL_MS and errors == 0
                 and checkin["per_second"] >= 0.95 * target},
    }


def machine() -> dict:
    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


class Scratch:
    """A bench's scratch database, data folder, server environment and the server it started."""

    def __init__(self, database_url: str, data_dir: str, env: dict) -> None:
        self.database_url, self.data_dir, self.env = database_url, data_dir, env
        self.server = None

    def start(self, argv_for_port) -> str:
        """Start the server (``argv_for_port(port)``) logging to server.log; its URL."""
        self.server, url = start_server(self.env, Path(self.data_dir) / "server.log", argv_for_port, timeout=60)
        return url

    def stop(self) -> None:
        if self.server is not None:
            stop_group(self.server)
            self.server = None

    def log_tracebacks(self) -> int:
        return (Path(self.data_dir) / "server.log").read_text(errors="replace").count("Traceback")


@contextmanager
def scratch_server(script: str, database_url: str, *, cache_url: str = "", pool_size: int = 0, keep: bool = False):
    """For a bench that starts the server: a scratch database on the PostgreSQL server ``database_url``
    names and a private data folder, as a Scratch; afterwards the server is stopped and both are
    dropped (unless ``keep``). Exits with a message on anything but PostgreSQL."""
    if not database_url.startswith("postgres"):
        sys.exit(f"bench/{script} needs a PostgreSQL DATABASE_URL (the server it starts runs on it)")
    base, name = scratch_database(database_url)
    scratch_url = f"{base}/{name}"
    data_dir = tempfile.mkdtemp(prefix=f"redflag-{Path(script).stem}-")
    scratch = Scratch(scratch_url, data_dir, server_env(scratch_url, data_dir, cache_url, pool_size))
    try:
        yield scratch
    finally:
        scratch.stop()
        if not keep:
            drop_database(base, name)
            shutil.rmtree(data_dir, ignore_errors=True)


def ratio_to(subject: dict, base: dict) -> dict:
    """A phase against its baseline phase of the same run: throughput, server CPU per request and p99."""
    return {
        "throughput": round(subject["requests_per_second"] / base["requests_per_second"], 2),
        "server_cpu_per_request": round(subject["cpu_ms_per_request"]["server"]
                                        / max(base["cpu_ms_per_request"]["server"], 0.01), 2),
        "p99": round(subject["p99_ms"] / base["p99_ms"], 2) if subject["p99_ms"] and base["p99_ms"] else None,
    }


def main() -> int:
    args = parse_args()
    with scratch_server("fleet.py", args.database_url, cache_url=args.cache_url, pool_size=args.pool_size,
                        keep=args.keep) as scratch:
        result = serve_and_simulate(args, scratch)
    result = {"bench": "fleet", "machine": machine(),
              "fleet": {"agents": args.agents, "heartbeat_agents": args.heartbeat, "interval_seconds": args.interval,
                        "duration_seconds": args.duration, "scans": args.scans, "channel": args.channel},
              **result}
    print(json.dumps(result, indent=2))
    return 0


def serve_and_simulate(args, scratch: Scratch) -> dict:
    if args.synchronous_commit == "off":
        with psycopg.connect(scratch.database_url, autocommit=True) as conn:
            name = conn.execute("SELECT current_database()").fetchone()[0]
            conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    secret = prepare(scratch.env, seats=args.agents + args.heartbeat, interval=args.interval)
    url = scratch.start(lambda port: server_argv(args.server, args.workers, port))
    result = asyncio.run(simulate(args, url, secret, scratch.database_url, CpuMeter(scratch.server.pid)))
    result["server"] = {"command": " ".join(server_argv(args.server, args.workers, 0)[2:]),
                        "mode": "REDFLAG_ENV=production", "log_tracebacks": scratch.log_tracebacks(),
                        "rate_limit_counters": "redis" if args.cache_url else "database table",
                        "db_pool_size": args.pool_size or "default",
                        "synchronous_commit": args.synchronous_commit}
    return result


if __name__ == "__main__":
    sys.exit(main())
