"""Benchmark: concurrent streaming chats per consumer x channel-layer combination, with peers.

For each combination it generates a project from this template, installs it with uv, migrates
a fresh database, seeds users and conversations, serves it on loopback under its production
server, and runs the load client (client.py, a process of its own) at each concurrency C. Two
peers run at the same C in the same run: the floor (floor.py, a raw `websockets` server
streaming the same reply at the same pace and frame interval) and the guide (guide/, the
Channels + htmx consumer the SaaS Pegasus guide teaches, under the same server). Row groups:
the default rhythm, two server processes behind Redis, PostgreSQL, long replies (many streams
open at once), and the fan-out of a reply to a second process.

Run it through bench/run (which sets up its environment with uv):

    bench/run                      # the full benchmark, writes bench/results/
    bench/run --smoke              # C=10, every variant and group but long replies; strict
    bench/run --variants async-redis --concurrency 100,2000

Everything listens on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TEMPLATE = BENCH.parent
DEFAULT_PYTHON = "/root/.pyenv/versions/3.13.0/bin/python3"
LOAD_AT_START = os.getloadavg()
VARIANTS = ["floor", "guide", "async-in-memory", "async-redis", "sync-in-memory", "sync-redis"]
# No generated project: the floor (floor.py) and the guide's consumer (guide/), the peers.
PEERS = ("floor", "guide")
PROJECT_FRAME_INTERVAL = 0.1  # CHAT_FRAME_INTERVAL's default in config/settings.py
PROJECT_SLUG = "benchchat"

# Variables of this environment that must not reach a generated project.
LEAKY = {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "PYTHONHOME", "REDIS_URL"}
LEAKY_PREFIXES = ("DJANGO_", "CHAT_", "LLM_", "PYTEST_", "OPENAI_", "ANTHROPIC_", "GEMINI_")


def log(*parts: object) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *parts, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_checked(command: list[str], cwd: Path, env: dict, timeout: float = 600) -> str:
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode:
        raise RuntimeError(f"$ {' '.join(command)} (in {cwd}) failed:\n{result.stdout[-3000:]}")
    return result.stdout


@dataclass(frozen=True)
class Shape:
    """What the rows of one table share: the reply, the ramp, the database, the servers."""

    group: str
    tokens: int
    ramp: float
    db: str = "sqlite"
    processes: int = 1  # server processes the chats are spread over
    fanout: bool = False  # two processes, every conversation watched from the second


@dataclass(frozen=True)
class Run:
    shape: Shape
    variant: str
    count: int

    @property
    def chats(self) -> int:
        """Chats in its plan besides the first warm-up one (one warm-up per server)."""
        return self.count + self.shape.processes - 1


@dataclass
class Variant:
    name: str
    dir: Path | None = None  # the generated project, or the guide's environment
    plans: dict[Run, Path] = field(default_factory=dict)  # fresh conversations for each run
    logged_in: set[str] = field(default_factory=set)  # databases logged in to once
    databases: list[str] = field(default_factory=list)  # PostgreSQL databases made

    @property
    def database(self) -> str:
        """The PostgreSQL database of this variant, with --db postgres."""
        return f"chatbench_{os.getpid()}_{self.name.replace('-', '_')}"

    @property
    def is_floor(self) -> bool:
        return self.name == "floor"

    @property
    def is_project(self) -> bool:
        return self.name not in PEERS

    @property
    def consumer(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def layer(self) -> str:
        return self.name.split("-", 1)[1] if self.is_project else ""


# ------------------------------------------------------------------------ preparation


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in LEAKY and not k.startswith(LEAKY_PREFIXES) and not k.endswith("_API_KEY")
    }


def project_env(
    args: argparse.Namespace, variant: Variant, db: str, threads: int = 200
) -> dict[str, str]:
    env = clean_env()
    env.update(
        UV_PYTHON_DOWNLOADS="never",
        NO_COLOR="1",
        DJANGO_DEBUG="false",
        DJANGO_SECURE_SSL_REDIRECT="false",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        # No key and no host: every provider module falls back to the offline demo model.
        OPENAI_API_KEY="",
        ANTHROPIC_API_KEY="",
        GEMINI_API_KEY="",
        GOOGLE_API_KEY="",
        OLLAMA_HOST="",
        DEMO_MODEL_DELAY=str(args.delay),
        CHAT_MESSAGES_PER_MINUTE="1000000000",
        # Throughput, not abuse: the per-connection and per-user socket limits stay out of it.
        CHAT_FRAMES_PER_SECOND="1000000",
        CHAT_SOCKETS_PER_USER="1000000",
        # The long replies echo a message of about 8,000 characters.
        CHAT_MAX_MESSAGE_LENGTH="1000000",
        EMAIL_URL="consolemail://",
        CHAT_REPLY_THREADS=str(threads),
        REDIS_URL=args.redis_url,
    )
    env.setdefault("UV_PYTHON", DEFAULT_PYTHON if Path(DEFAULT_PYTHON).exists() else "")
    if not env["UV_PYTHON"]:
        del env["UV_PYTHON"]
    if args.frame_interval is not None:
        env["CHAT_FRAME_INTERVAL"] = str(args.frame_interval)
    if db == "postgres":
        env["DATABASE_URL"] = postgres_url(args, variant.database)
    return env


def postgres_url(args: argparse.Namespace, database: str) -> str:
    """args.postgres_url with another database name."""
    url = urllib.parse.urlsplit(args.postgres_url)
    return urllib.parse.urlunsplit(url._replace(path=f"/{database}"))


def postgres_answers(args: argparse.Namespace) -> bool:
    url = urllib.parse.urlsplit(args.postgres_url)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5432), timeout=3):
            return True
    except OSError:
        return False


def postgres(args: argparse.Namespace, python: str, statement: str) -> None:
    """Run one statement (CREATE or DROP DATABASE) on the server of --postgres-url."""
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as c: c.execute(sys.argv[2])"
    )
    run_checked([python, "-c", code, args.postgres_url, statement], BENCH, dict(os.environ))


def generate(variant: Variant, work: Path, args: argparse.Namespace) -> None:
    """Generate one combination's project (cookiecutter changes directory: one at a time)."""
    from cookiecutter.main import cookiecutter

    out = work / variant.name
    variant.dir = Path(
        cookiecutter(
            str(args.template),
            no_input=True,
            output_dir=str(out),
            config_file=str(work / "cookiecutter-config.yaml"),
            extra_context={
                "project_name": "Bench Chat",
                "project_slug": PROJECT_SLUG,
                "consumer": variant.consumer,
                "channel_layer": variant.layer,
                "llm_provider": args.provider,
            },
        )
    )


def prepare(variant: Variant, runs: list[Run], work: Path, args: argparse.Namespace) -> None:
    """Install one generated project; migrate and seed each database it runs on, with
    conversations of their own for each of its runs."""
    started = time.monotonic()
    run_checked(["uv", "sync", "--no-dev", "--quiet"], variant.dir, project_env(args, variant, ""))
    python = str(variant.dir / ".venv" / "bin" / "python")
    for db in sorted({run.shape.db for run in runs}):
        env = project_env(args, variant, db)
        # The users' session keys, one file per database.
        env["BENCH_SESSION_KEYS"] = str(work / variant.name / f"sessions-{db}.json")
        if db == "postgres":
            # A database of this run's own, dropped at the end: never touch the named one.
            postgres(args, python, f'DROP DATABASE IF EXISTS "{variant.database}"')
            postgres(args, python, f'CREATE DATABASE "{variant.database}"')
            variant.databases.append(variant.database)
        run_checked([python, "manage.py", "migrate", "-v0"], variant.dir, env)
        for tokens in sorted({run.shape.tokens for run in runs if run.shape.db == db}):
            mine = [run for run in runs if run.shape.db == db and run.shape.tokens == tokens]
            plans = work / variant.name / f"plans-{db}-{tokens}"
            run_checked(
                [
                    python,
                    str(BENCH / "seed.py"),
                    "--runs",
                    ",".join(str(run.chats) for run in mine),
                    "--tokens",
                    str(tokens),
                    "--out-dir",
                    str(plans),
                ],
                variant.dir,
                env,
            )
            for i, run in enumerate(mine):
                variant.plans[run] = plans / f"plan-{i}.json"
    # Production settings serve static files by their hashed names from collectstatic's manifest.
    run_checked(
        [python, "manage.py", "collectstatic", "--no-input", "-v0"],
        variant.dir,
        project_env(args, variant, ""),
    )
    log(
        f"{variant.name}: installed, migrated, seeded in "
        f"{time.monotonic() - started:.0f} s ({variant.dir})"
    )


def prepare_guide(variant: Variant, project: Variant, work: Path) -> None:
    """The guide's environment, with the versions the generated project resolved."""
    started = time.monotonic()
    env = clean_env()
    constraints = work / "guide-constraints.txt"
    freeze = ["uv", "pip", "freeze", "--python", str(project.dir / ".venv" / "bin" / "python")]
    constraints.write_text(
        subprocess.run(freeze, env=env, capture_output=True, text=True, check=True).stdout
    )
    variant.dir = work / "guide-venv"
    run_checked(["uv", "venv", "--quiet", str(variant.dir)], BENCH, env)
    run_checked(
        [
            "uv",
            "pip",
            "install",
            "--quiet",
            "--python",
            str(variant.dir / "bin" / "python"),
            "-r",
            str(BENCH / "guide" / "requirements.txt"),
            "-c",
            str(constraints),
        ],
        BENCH,
        env,
    )
    log(f"guide: installed in {time.monotonic() - started:.0f} s ({variant.dir})")


def peer_plan(work: Path, source: Path, chats: int) -> Path:
    """A plan for the floor or the guide: the project's message and reply, chats with no
    conversation or session of their own (neither has any)."""
    plan = json.loads(source.read_text())
    path = work / f"peer-plan-{plan['tokens']}-{chats}.json"
    if not path.exists():
        plan["chats"] = [
            {"conversation": i, "cookie": None, "user": None} for i in range(chats + 1)
        ]
        path.write_text(json.dumps(plan))
    return path


# ---------------------------------------------------------------------------- servers


class Server:
    """One server process on 127.0.0.1; stopped (and if need be killed) on exit."""

    def __init__(
        self,
        command: list[str],
        cwd: Path,
        env: dict,
        port: int,
        log_path: Path,
        ready_path: str | None,
    ) -> None:
        self.port = port
        self.log_path = log_path
        self.ready_path = ready_path
        self.log_file = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if self.ready_path:
                    with urllib.request.urlopen(self.url + self.ready_path, timeout=5) as r:
                        if r.status == 200:
                            return
                else:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log_file.close()


CHAINED = ("The above exception was the direct cause", "During handling of the above exception")
CONNECTION_ERROR = re.compile(
    r"^\S*(OperationalError|InterfaceError|PoolTimeout|TooManyConnections)\b", re.M
)


def log_errors(text: str) -> tuple[int, int]:
    """Errors in a server log: tracebacks (chained ones counted once), and those of them
    that are database connection errors (psycopg's or Django's OperationalError,
    InterfaceError, the pool's PoolTimeout)."""
    incidents: list[str] = []
    for part in text.split("Traceback (most recent call last):")[1:]:
        if incidents and any(c in incidents[-1][-300:] for c in CHAINED):
            incidents[-1] += part  # the same incident, its chained cause
        else:
            incidents.append(part)
    return len(incidents), sum(1 for i in incidents if CONNECTION_ERROR.search(i))


def uvicorn_command(bin_dir: Path, app: str, port: int) -> list[str]:
    return [
        str(bin_dir / "uvicorn"),
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ws-per-message-deflate",
        "false",
        "--log-level",
        "warning",
        "--backlog",
        "4096",
        "--timeout-graceful-shutdown",
        "3",
    ]


def start_server(
    variant: Variant, run: Run, reply: Path, work: Path, tag: str, args: argparse.Namespace
) -> Server:
    port = free_port()
    log_path = work / f"server-{variant.name}-{tag}.log"
    if variant.is_floor:
        command = [
            sys.executable,
            str(BENCH / "floor.py"),
            "--port",
            str(port),
            "--reply-file",
            str(reply),
            "--delay",
            str(args.delay),
            "--frame-interval",
            str(args.frame_interval or PROJECT_FRAME_INTERVAL),
            "--pacing",
            args.floor_pacing,
        ]
        server = Server(command, BENCH, dict(os.environ), port, log_path, None)
    else:
        if variant.is_project:
            env = project_env(args, variant, run.shape.db, threads=max(200, run.count + 10))
            bin_dir, cwd, app = variant.dir / ".venv" / "bin", variant.dir, "config"
            ready = "/accounts/login/"
        else:  # the guide
            env = clean_env()
            env.update(DEMO_MODEL_DELAY=str(args.delay), GUIDE_REPLY_FILE=str(reply))
            bin_dir, cwd, app = variant.dir / "bin", BENCH / "guide", "guide"
            ready = "/"
        if args.server == "daphne":
            command = [
                str(bin_dir / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                f"{app}.asgi:application",
            ]
        else:
            command = uvicorn_command(bin_dir, f"{app}.asgi:application", port)
        server = Server(command, cwd, env, port, log_path, ready)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


def run_client(
    variant: Variant,
    run: Run,
    plan: Path,
    servers: list[Server],
    work: Path,
    tag: str,
    args: argparse.Namespace,
) -> dict:
    out = work / f"result-{variant.name}-{tag}.json"
    shape = run.shape
    timeout = args.timeout + shape.ramp + shape.tokens * args.delay
    command = [
        sys.executable,
        str(BENCH / "client.py"),
        "--plan",
        str(plan),
        "--count",
        str(run.count),
        "--out",
        str(out),
        "--ramp",
        str(shape.ramp),
        "--timeout",
        str(timeout),
    ]
    spread = servers if not shape.fanout else servers[:1]
    for server in spread:
        command += ["--url", server.url, "--pid", str(server.pid)]
    if shape.fanout:
        command += ["--watch-url", servers[1].url, "--watch-pid", str(servers[1].pid)]
    if variant.name == "guide":
        command += ["--path", "/ws/chat/"]
    if args.timelines:
        command += ["--timeline", str(args.results / f"timeline-{variant.name}-{tag}.jsonl")]
    if variant.is_project and shape.db not in variant.logged_in:
        # One real login per project and database (the password hash costs a second); other
        # runs warm up with a seeded session.
        command.append("--login")
        variant.logged_in.add(shape.db)
    if variant.layer == "redis":
        command.append("--redis")
    started = time.monotonic()
    profiler = None
    if args.profile and args.profile == f"{variant.name}:{run.count}" and len(servers) == 1:
        # Collapsed stacks, one line per stack with its sample count (flamegraph.pl input).
        folded = args.results / f"profile-{variant.name}-{run.count}.txt"
        profiler = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(servers[0].pid),
                "--output",
                str(folded),
                "--format",
                "raw",
                "--rate",
                "100",
                "--threads",
                "--nonblocking",
                *(["--idle"] if args.profile_idle else ["--gil"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        time.sleep(1)
    try:
        subprocess.run(
            command, cwd=BENCH, stdin=subprocess.DEVNULL, check=True, timeout=timeout + 300
        )
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=60)
    result = json.loads(out.read_text())
    result["client_wall_seconds"] = time.monotonic() - started
    return result


def measure(
    variant: Variant, run: Run, plan: Path, reply: Path, work: Path, args: argparse.Namespace
) -> dict:
    shape = run.shape
    tag = f"{shape.group.replace(' ', '_')}-{run.count}"
    servers: list[Server] = []
    try:
        for i in range(2 if shape.fanout else shape.processes):
            servers.append(start_server(variant, run, reply, work, f"{tag}-{i}", args))
        result = run_client(variant, run, plan, servers, work, tag, args)
    except Exception as error:  # noqa: BLE001 - a broken run is a row of failures
        tails = "\n".join(s.tail() for s in servers)
        log(f"{variant.name} C={run.count}: run failed: {error}\n{tails}")
        result = {
            "count": run.count,
            "completed": 0,
            "failed": run.count,
            "errors": {f"run failed: {error}"[:300]: run.count},
        }
    finally:
        for server in servers:
            server.stop()
    tracebacks = connection_errors = 0
    for server in servers:
        t, c = log_errors(server.log_path.read_text(errors="replace"))
        tracebacks += t
        connection_errors += c
    result.update(
        variant=variant.name,
        group=shape.group,
        db=shape.db,
        reply_tokens=shape.tokens,
        processes=shape.processes,
        fanout=shape.fanout,
        server="floor" if variant.is_floor else args.server,
        ramp=shape.ramp,
        server_tracebacks=tracebacks,
        connection_errors=connection_errors,
    )
    return result


# ---------------------------------------------------------------------------- reports


def fmt(value: float | None, scale: float = 1, digits: int = 0) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
        )
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) * 1024
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem / 2**30),
        "kernel": platform.release(),
        "load_average_at_start": LOAD_AT_START,
    }


def versions(variant: Variant | None) -> dict:
    if variant is None or variant.dir is None:
        return {}
    code = (
        "import importlib.metadata as m, sys, json; print(json.dumps({'python': sys.version"
        ".split()[0], **{n: m.version(n) for n in ('django', 'channels', 'uvicorn', "
        "'websockets', 'daphne')}}))"
    )
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [str(variant.dir / ".venv" / "bin" / "python"), "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return json.loads(out)
    return {}


# Issue 12's targets, at the default rhythm (200 tokens 5 ms apart, sends over 1 s), one
# process, on either database; every one also needs 0 failed chats (and on PostgreSQL 0
# database connection errors in the server log).
TARGETS = [
    # (consumer, C, TTFC p99 below s, gap p99 below s, share of the floor's tok/s at least)
    ("async", 100, 0.100, None, None),
    ("async", 1000, 0.500, 0.150, 0.7),
    ("sync", 100, 0.500, None, None),
    ("sync", 500, None, None, None),
]
TARGET_GROUPS = ("main", "postgres")
GROUPS = {
    "main": "Default rhythm",
    "two processes": "Two server processes behind the Redis layer",
    "postgres": "PostgreSQL",
    "long replies": "Long replies: many streams open at once",
}


def is_single(row: dict) -> bool:
    return row.get("processes", 1) == 1 and not row.get("fanout")


def peer_row(rows: list[dict], name: str, row: dict) -> dict | None:
    """The floor's or the guide's row with the same C, reply and ramp."""
    return next(
        (
            r
            for r in rows
            if r["variant"] == name
            and is_single(r)
            and r["count"] == row["count"]
            and r.get("reply_tokens") == row.get("reply_tokens")
            and r.get("ramp") == row.get("ramp")
        ),
        None,
    )


def ratio(row: dict | None, base: dict | None) -> float | None:
    if not row or not base or not base.get("tokens_per_second"):
        return None
    if row.get("tokens_per_second") is None:
        return None
    return row["tokens_per_second"] / base["tokens_per_second"]


def cpu_per_1k(row: dict) -> float | None:
    cpu, tokens = row.get("server_cpu_seconds"), row.get("tokens")
    return cpu / tokens * 1000 if cpu is not None and tokens else None


def kb_per_conn(row: dict) -> float | None:
    if row.get("server_peak_rss") and row.get("server_baseline_rss") is not None:
        return (row["server_peak_rss"] - row["server_baseline_rss"]) / row["count"] / 1024
    return None


def target_checks(rows: list[dict]) -> list[tuple[str, bool, str]]:
    checks = []
    for row in rows:
        if row.get("group", "main") not in TARGET_GROUPS or not is_single(row):
            continue
        if row["variant"] in PEERS:
            continue
        limits = next(
            (t[2:] for t in TARGETS if row["variant"].startswith(t[0]) and t[1] == row["count"]),
            None,
        )
        if limits is None:
            continue
        ttfc, gap, share = limits
        parts, ok = [f"{row['failed']} failed"], row["failed"] == 0
        if row.get("db") == "postgres":
            errors = row.get("connection_errors")
            ok &= errors == 0
            parts.append(f"{fmt(errors)} connection errors")
        if ttfc is not None:
            ok &= row.get("ttfc_p99") is not None and row["ttfc_p99"] < ttfc
            parts.append(f"TTFC p99 {fmt(row.get('ttfc_p99'), 1000)} ms (< {ttfc * 1000:.0f})")
        if gap is not None:
            ok &= row.get("gap_p99") is not None and row["gap_p99"] < gap
            parts.append(f"gap p99 {fmt(row.get('gap_p99'), 1000)} ms (< {gap * 1000:.0f})")
        if share is not None:
            x = ratio(row, peer_row(rows, "floor", row))
            ok &= x is not None and x >= share
            parts.append(f"{fmt(x, 1, 2)}x floor tok/s (>= {share})")
        db = row.get("db", "sqlite")
        checks.append((f"{row['variant']} ({db}) at C={row['count']}", ok, ", ".join(parts)))
    for row in rows:
        if row.get("group") == "long replies" and row["variant"] not in PEERS:
            checks.append(
                (
                    f"{row['variant']}, long replies, at C={row['count']}",
                    row["failed"] == 0,
                    f"{row['failed']} failed",
                )
            )
    return checks


def describe(group: str, rows: list[dict], meta: dict) -> str:
    r = rows[0]
    rhythm = (
        f"replies of {r.get('reply_tokens', meta['tokens'])} tokens {meta['delay'] * 1000:g} ms "
        f"apart, sends spread over {r.get('ramp', meta['ramp']):g} s"
    )
    if group == "main":
        return f"{GROUPS[group]}: {rhythm}; database {r.get('db', meta['db'])}; one process."
    if group == "two processes":
        return (
            f"{GROUPS[group]} (on one database), the chats spread over both (chat i on "
            f"process i mod 2), against one process: {rhythm}; database {r.get('db')}."
        )
    if group == "postgres":
        return (
            f"{GROUPS[group]} (`--postgres-url`, a new database per variant; connection "
            f"handling as the project ships it): {rhythm}; one process."
        )
    return f"{GROUPS.get(group, group)}: {rhythm}; database {r.get('db')}; one process."


def table(rows: list[dict], every: list[dict]) -> list[str]:
    lines = [
        "| variant | C | ok / failed | TTFC p50 ms | TTFC p99 ms | gap p99 ms | tok/s | "
        "x floor | x guide | frames/s | CPU s / 1k tok | peak RSS MB | KB / conn | "
        "log errors | client CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        window = r.get("window_seconds")
        client_share = None
        if window and "client_cpu_seconds" in r:
            client_share = r["client_cpu_seconds"] / window
        errors = r.get("server_tracebacks")
        if r.get("db") == "postgres" and errors is not None:
            errors = f"{errors} ({r.get('connection_errors', 0)} conn.)"
        name = r["variant"] + (f" x{r['processes']}" if r.get("processes", 1) > 1 else "")
        lines.append(
            f"| {name} | {r['count']:,} | {r['completed']:,} / {r['failed']:,} | "
            f"{fmt(r.get('ttfc_p50'), 1000)} | {fmt(r.get('ttfc_p99'), 1000)} | "
            f"{fmt(r.get('gap_p99'), 1000)} | {fmt(r.get('tokens_per_second'))} | "
            f"{fmt(ratio(r, peer_row(every, 'floor', r)), 1, 2)} | "
            f"{fmt(ratio(r, peer_row(every, 'guide', r)), 1, 2)} | "
            f"{fmt(r.get('frames_per_second'))} | {fmt(cpu_per_1k(r), 1, 3)} | "
            f"{fmt(r.get('server_peak_rss'), 1 / 2**20)} | {fmt(kb_per_conn(r))} | "
            f"{'-' if errors is None else errors} | {fmt(client_share, 100)}% |"
        )
    return lines


def growth(group: str, rows: list[dict], every: list[dict]) -> list[str]:
    """The lines under a table that compare its rows: two processes against one, and how
    CPU and memory per connection grow with C."""
    lines = []
    if group == "two processes":
        for r in rows:
            one = next(
                (
                    x
                    for x in every
                    if x["variant"] == r["variant"]
                    and is_single(x)
                    and x["count"] == r["count"]
                    and x.get("reply_tokens") == r.get("reply_tokens")
                    and x.get("ramp") == r.get("ramp")
                    and x.get("db") == r.get("db")
                ),
                None,
            )
            if one:
                lines.append(
                    f"- {r['variant']} at C={r['count']:,}: two processes "
                    f"{fmt(r.get('tokens_per_second'))} tok/s, one "
                    f"{fmt(one.get('tokens_per_second'))}: **{fmt(ratio(r, one), 1, 2)}x**; "
                    f"TTFC p99 {fmt(r.get('ttfc_p99'), 1000)} against "
                    f"{fmt(one.get('ttfc_p99'), 1000)} ms; CPU s / 1k tok "
                    f"{fmt(cpu_per_1k(r), 1, 3)} against {fmt(cpu_per_1k(one), 1, 3)}."
                )
    if group == "long replies":
        for name in dict.fromkeys(r["variant"] for r in rows):
            mine = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["count"])
            if len(mine) < 2:
                continue
            first, last = mine[0], mine[-1]
            cpu0, cpu1 = cpu_per_1k(first), cpu_per_1k(last)
            growth_x = cpu1 / cpu0 if cpu0 and cpu1 else None
            lines.append(
                f"- {name}: CPU s / 1k tok {fmt(cpu0, 1, 3)} at C={first['count']:,}, "
                f"{fmt(cpu1, 1, 3)} at C={last['count']:,} ({fmt(growth_x, 1, 2)}x); "
                f"KB / conn {fmt(kb_per_conn(first))} and {fmt(kb_per_conn(last))}."
            )
    return [""] + lines if lines else []


def markdown(meta: dict, rows: list[dict], fanout_rows: list[dict]) -> str:
    m = meta["machine"]
    lines = [
        f"Run {meta['date']} on {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), "
        f"{m['memory_gib']} GiB; load average at start {m['load_average_at_start'][0]:.2f}"
        + (
            f", at the end {meta['load_average_at_end'][0]:.2f}"
            if meta.get("load_average_at_end")
            else ""
        )
        + f"; {meta.get('seconds', 0) / 60:.1f} minutes. Server: {meta['server']}. "
        f"Frames coalesced every {meta['frame_interval'] * 1000:g} ms (floor and project); "
        "the guide sends one frame per token. "
        + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
        + ".",
    ]
    for group in dict.fromkeys(r.get("group", "main") for r in rows):
        mine = [r for r in rows if r.get("group", "main") == group]
        lines += ["", describe(group, mine, meta), ""]
        lines += table(mine, rows)
        lines += growth(group, mine, rows)
    for note in meta.get("notes", []):
        lines += ["", note]
    checks = target_checks(rows)
    if checks:
        lines += ["", "Targets (issue 12):", ""]
        for name, ok, detail in checks:
            lines.append(f"- {'met' if ok else 'MISSED'}: {name}: {detail}")
    if fanout_rows:
        lines += [
            "",
            "Fan-out across two server processes (Redis layer): each conversation has one socket "
            "on server A that asks and one on server B that watches.",
            "",
            "| variant | conversations | askers ok / failed | watchers ok / failed | "
            "watcher finished lag p50 / p99 ms | snapshots per reply | server CPU ms per reply "
            "(A+B) | same, one process | Redis CPU ms per reply |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in fanout_rows:
            w = r.get("watchers", {})
            n = r["count"]
            single = next(
                (
                    x
                    for x in rows
                    if x["variant"] == r["variant"]
                    and x["count"] == n
                    and x.get("group", "main") == "main"
                ),
                None,
            )
            both = r["server_cpu_seconds"] / n if "server_cpu_seconds" in r else None
            one = None
            if single and "server_cpu_seconds" in single:
                one = single["server_cpu_seconds"] / n
            redis = r["redis_cpu_seconds"] / n if r.get("redis_cpu_seconds") is not None else None
            lag = f"{fmt(w.get('finished_lag_p50'), 1000)} / {fmt(w.get('finished_lag_p99'), 1000)}"
            lines.append(
                f"| {r['variant']} | {n:,} | {r['completed']:,} / {r['failed']:,} | "
                f"{w.get('completed', 0):,} / {w.get('failed', n):,} | {lag} | "
                f"{fmt(w.get('snapshots_per_reply'), 1, 1)} | {fmt(both, 1000, 1)} | "
                f"{fmt(one, 1000, 1)} | {fmt(redis, 1000, 1)} |"
            )
    failures = [r for r in rows + fanout_rows if r.get("errors")]
    if failures:
        lines += ["", "Failures:", ""]
        for r in failures:
            for error, n in r["errors"].items():
                where = r.get("group", "main")
                lines.append(f"- {r['variant']} ({where}) C={r['count']}: {n} x {error}")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, ideal: float | None = None) -> None:
    """Throughput and p99 time to first chunk against C (default rhythm, one process);
    ideal is tok/s per chat on time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("group", "main") == "main"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in VARIANTS:
        points = sorted((r["count"], r) for r in rows if r["variant"] == name)
        if not points:
            continue
        cs = [c for c, _ in points]
        style = {"color": "black", "linestyle": "--"} if name == "floor" else {}
        if name == "guide":
            style = {"color": "grey", "linestyle": "-."}
        ax1.plot(
            cs,
            [r.get("tokens_per_second") or 0 for _, r in points],
            marker="o",
            label=name,
            **style,
        )
        ax2.plot(
            cs,
            [(r.get("ttfc_p99") or float("nan")) * 1000 for _, r in points],
            marker="o",
            label=name,
            **style,
        )
    if ideal and rows:
        cs = sorted({r["count"] for r in rows})
        ax1.plot(
            cs,
            [c * ideal for c in cs],
            color="grey",
            linestyle=":",
            linewidth=1,
            label="all replies on time",
        )
    ax1.set(
        xscale="log", xlabel="concurrent chats C", ylabel="tokens/s delivered", title="Throughput"
    )
    ax2.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent chats C",
        ylabel="time to first chunk p99 (ms)",
        title="Latency (target at C=1000: 500 ms)",
    )
    ax2.axhline(500, color="grey", linewidth=0.8, linestyle=":")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ints = lambda text: [int(c) for c in text.split(",") if c]  # noqa: E731
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, from: " + ", ".join(VARIANTS),
    )
    parser.add_argument(
        "--concurrency",
        type=ints,
        default=[100, 1000],
        help="C values for the guide and the async variants (the floor runs at every C)",
    )
    parser.add_argument(
        "--sync-concurrency",
        type=ints,
        default=[100, 500],
        help="C values for the sync variants",
    )
    parser.add_argument(
        "--postgres-rows",
        default="async-redis:1000,sync-redis:100",
        help="VARIANT:C rows run again on PostgreSQL (empty: none)",
    )
    parser.add_argument(
        "--long-concurrency",
        type=ints,
        default=[2000, 5000],
        help="C values of the long-reply rows (empty: none)",
    )
    parser.add_argument("--long-tokens", type=int, default=2000, help="tokens per long reply")
    parser.add_argument(
        "--long-ramp", type=float, default=10, help="sends spread over this many seconds"
    )
    parser.add_argument(
        "--long-variants",
        default="floor,async-in-memory,async-redis",
        help="variants of the long-reply rows",
    )
    parser.add_argument(
        "--two-processes",
        type=int,
        default=1000,
        help="C of the async-redis row served by two processes (0: skip)",
    )
    parser.add_argument(
        "--fanout",
        type=int,
        default=100,
        help="conversations in the two-process Redis fan-out run (0: skip)",
    )
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    parser.add_argument("--delay", type=float, default=0.005, help="seconds between tokens")
    parser.add_argument(
        "--frame-interval",
        type=float,
        default=None,
        help=f"CHAT_FRAME_INTERVAL (default: the project's own, {PROJECT_FRAME_INTERVAL})",
    )
    parser.add_argument(
        "--floor-pacing",
        choices=["per-token", "schedule"],
        default="schedule",
        help="how the floor paces tokens; match the demo model (chat/llm/demo.py)",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="spread the C sends over this many seconds (default: one reply's "
        "nominal length, tokens x delay; 0 sends all at once)",
    )
    parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
    parser.add_argument(
        "--db", choices=["sqlite", "postgres"], default="sqlite", help="database of the main rows"
    )
    parser.add_argument(
        "--postgres-url",
        default="postgres://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server and a database to connect to; each variant "
        "gets a new database on that server, dropped at the end",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--provider", default="openai", help="llm_provider (irrelevant: demo)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per client run")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where to write results (default bench/results, or a temp dir with --smoke)",
    )
    parser.add_argument(
        "--profile", metavar="VARIANT:C", help="record a py-spy flame graph of that run's server"
    )
    parser.add_argument(
        "--profile-idle",
        action="store_true",
        help="profile wall time of every thread (waits included), not GIL time",
    )
    parser.add_argument(
        "--timelines",
        action="store_true",
        help="also write every chat's timings (timeline-*.jsonl) to the results",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated projects")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="C=10 for every variant, two processes and fan-out, one PostgreSQL row; "
        "no long replies; exit 1 if any chat fails",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if any chat fails")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite results.md and bench.png from --results/results.json",
    )
    args = parser.parse_args()
    if args.report_only:
        args.results = args.results or BENCH / "results"
        return args
    args.postgres_rows = [
        (name, int(count))
        for name, count in (row.split(":") for row in args.postgres_rows.split(",") if row)
    ]
    if args.smoke:
        args.concurrency = args.sync_concurrency = [10]
        args.fanout = min(args.fanout, 10)
        args.two_processes = min(args.two_processes, 10)
        args.postgres_rows = [(name, 10) for name, _ in args.postgres_rows[:1]]
        args.long_concurrency = []
        args.strict = True
    if args.ramp is None:
        args.ramp = args.tokens * args.delay
    args.variants = [v for v in args.variants.split(",") if v]
    args.long_variants = [v for v in args.long_variants.split(",") if v]
    unknown = set(args.variants + args.long_variants + [n for n, _ in args.postgres_rows])
    unknown -= set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    return args


def plan_runs(args: argparse.Namespace) -> tuple[list[Run], list[str]]:
    """Every run of the benchmark in order, and notes on the rows left out."""
    runs, notes = [], []
    main = Shape("main", args.tokens, args.ramp, args.db)
    # C outer, variants inner: the floor and the variants of one C run close in time.
    for count in sorted(set(args.concurrency) | set(args.sync_concurrency)):
        for name in VARIANTS:
            counts = args.sync_concurrency if name.startswith("sync") else args.concurrency
            if name == "floor":
                counts = args.concurrency + args.sync_concurrency
            if name in args.variants and count in counts:
                runs.append(Run(main, name, count))
    if args.two_processes and "async-redis" in args.variants:
        shape = Shape("two processes", args.tokens, args.ramp, args.db, processes=2)
        runs.append(Run(shape, "async-redis", args.two_processes))
    pg_rows = [(n, c) for n, c in args.postgres_rows if n in args.variants]
    if pg_rows and args.db == "postgres":
        pg_rows = []  # the main rows are on PostgreSQL already
    if pg_rows and not postgres_answers(args):
        notes.append(f"PostgreSQL rows left out: nothing answers at {args.postgres_url}.")
        log(notes[-1])
        pg_rows = []
    for name, count in pg_rows:
        runs.append(Run(Shape("postgres", args.tokens, args.ramp, "postgres"), name, count))
    long = [
        v for v in VARIANTS if v in args.variants and v in args.long_variants and v not in PEERS
    ]
    if long:
        shape = Shape("long replies", args.long_tokens, args.long_ramp, args.db)
        for count in args.long_concurrency:
            for name in VARIANTS:
                if name in args.variants and name in args.long_variants:
                    runs.append(Run(shape, name, count))
    if args.fanout:
        shape = Shape("fan-out", args.tokens, args.ramp, args.db, fanout=True)
        for name in VARIANTS:
            if name in args.variants and name.endswith("redis"):
                runs.append(Run(shape, name, args.fanout))
    return runs, notes


def raise_fd_limit(runs: list[Run]) -> None:
    """Sockets are file descriptors: the client holds C (twice C with watchers), a server C."""
    need = max(r.count * (2 if r.shape.fanout else 1) for r in runs) + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"ulimit -n: the hard limit {hard} is below the {need} file descriptors needed")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # children inherit it


def write_report(meta: dict, rows: list[dict], fanout_rows: list[dict], results: Path) -> str:
    (results / "results.json").write_text(
        json.dumps({"meta": meta, "runs": rows, "fanout": fanout_rows}, indent=1)
    )
    table = markdown(meta, rows, fanout_rows)
    (results / "results.md").write_text(table)
    # Every reply on time: C x tokens over the ramp plus one reply's length.
    plot(
        rows,
        results / "bench.png",
        ideal=meta["tokens"] / (meta["ramp"] + meta["tokens"] * meta["delay"]),
    )
    return table


def main() -> int:
    args = parse_args()
    if args.report_only:
        data = json.loads((args.results / "results.json").read_text())
        print(write_report(data["meta"], data["runs"], data["fanout"], args.results))
        return 0
    started = time.monotonic()
    runs, notes = plan_runs(args)
    if not runs:
        sys.exit("nothing to run")
    raise_fd_limit(runs)
    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    if args.results is None:
        args.results = work / "results" if args.smoke else BENCH / "results"
    args.results.mkdir(parents=True, exist_ok=True)
    (work / "cookiecutter-config.yaml").write_text(
        f"cookiecutters_dir: {work / 'cc'}\nreplay_dir: {work / 'replay'}\n"
    )
    log(
        f"work dir {work}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
        f"{len(runs)} runs"
    )

    variants = {name: Variant(name) for name in VARIANTS if any(r.variant == name for r in runs)}
    projects = [v for v in variants.values() if v.is_project]
    if not projects:
        sys.exit("the floor and the guide stream a project's reply: add a project variant")

    rows: list[dict] = []
    fanout_rows: list[dict] = []
    try:
        for v in projects:
            generate(v, work, args)
        # Prepare the projects two at a time (the machine has two cores).
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [
                pool.submit(prepare, v, [r for r in runs if r.variant == v.name], work, args)
                for v in projects
            ]
            if "guide" in variants:
                jobs[0].result()
                jobs.append(pool.submit(prepare_guide, variants["guide"], projects[0], work))
            for job in jobs:
                job.result()
        # The reply of each length, for the floor and the guide to stream.
        sources = {run.shape.tokens: plan for v in projects for run, plan in v.plans.items()}
        replies = {}
        for tokens, plan in sources.items():
            replies[tokens] = work / f"reply-{tokens}.txt"
            replies[tokens].write_text(json.loads(plan.read_text())["reply"])

        for run in runs:
            v = variants[run.variant]
            shape = run.shape
            if v.is_project:
                plan = v.plans[run]
            else:
                plan = peer_plan(work, sources[shape.tokens], run.chats)
            result = measure(v, run, plan, replies[shape.tokens], work, args)
            (fanout_rows if shape.fanout else rows).append(result)
            # What is measured so far survives a run stopped before its end.
            (args.results / "results.partial.json").write_text(
                json.dumps({"runs": rows, "fanout": fanout_rows}, indent=1)
            )
            w = result.get("watchers")
            log(
                f"{v.name:16} {shape.group:13} C={run.count:<5} "
                f"ok {result['completed']}/{run.count}  "
                + (
                    f"watchers ok {w.get('completed', 0)}, lag p99 "
                    f"{fmt(w.get('finished_lag_p99'), 1000)} ms"
                    if w
                    else f"TTFC p99 {fmt(result.get('ttfc_p99'), 1000)} ms  "
                    f"gap p99 {fmt(result.get('gap_p99'), 1000)} ms  "
                    f"{fmt(result.get('tokens_per_second'))} tok/s  "
                    f"CPU {fmt(result.get('server_cpu_seconds'), 1, 1)} s"
                )
                + f"  load {os.getloadavg()[0]:.1f}"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work / "cc", ignore_errors=True)
        for v in projects:
            for database in v.databases:
                with contextlib.suppress(Exception):
                    postgres(
                        args,
                        str(v.dir / ".venv" / "bin" / "python"),
                        f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                    )

    for r in rows:
        r["floor_ratio"] = ratio(r, peer_row(rows, "floor", r))
        r["guide_ratio"] = ratio(r, peer_row(rows, "guide", r))
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "versions": versions(projects[0]),
        "server": args.server,
        "db": args.db,
        "tokens": args.tokens,
        "delay": args.delay,
        "ramp": args.ramp,
        "frame_interval": args.frame_interval or PROJECT_FRAME_INTERVAL,
        "smoke": args.smoke,
        "notes": notes,
        "seconds": round(time.monotonic() - started),
    }
    table = write_report(meta, rows, fanout_rows, args.results)
    (args.results / "results.partial.json").unlink(missing_ok=True)
    print()
    print(table)
    log(
        f"results in {args.results}{' (temporary)' if args.smoke and not args.keep else ''} "
        f"({meta['seconds']} s)"
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    failed = sum(r["failed"] for r in rows + fanout_rows)
    failed += sum(r.get("watchers", {}).get("failed", 0) for r in fanout_rows)
    failed += sum(len(r.get("warmup_errors") or []) for r in rows + fanout_rows)
    if failed and args.strict:
        log(f"FAILED: {failed} chats failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
