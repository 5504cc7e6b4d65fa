"""Benchmark: concurrent streaming chats per consumer x channel-layer combination, next to a floor.

For each combination it generates a project from this template, installs it with uv, migrates
a fresh database, seeds users and conversations, serves it single-process on loopback under
its production server, and runs the load client (client.py, a process of its own) at each
concurrency C. The floor (floor.py, a raw `websockets` server streaming the same reply at the
same pace and frame interval) runs at each C in the same run. With the Redis layer, a second
mode serves two processes and watches every conversation from both (fan-out).

Run it through bench/run (which sets up its environment with uv):

    bench/run                      # the full benchmark, writes bench/results/
    bench/run --smoke              # C=10, every variant, fails on any failed chat
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
VARIANTS = ["floor", "async-in-memory", "async-redis", "sync-in-memory", "sync-redis"]
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


@dataclass
class Variant:
    name: str
    dir: Path | None = None  # the generated project
    plans: dict[int, Path] = field(default_factory=dict)
    logged_in: bool = False
    database_created: bool = False

    @property
    def database(self) -> str:
        """The PostgreSQL database of this variant, with --db postgres."""
        return f"chatbench_{os.getpid()}_{self.name.replace('-', '_')}"

    @property
    def is_floor(self) -> bool:
        return self.name == "floor"

    @property
    def consumer(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def layer(self) -> str:
        return self.name.split("-", 1)[1]


# ------------------------------------------------------------------------ preparation


def project_env(args: argparse.Namespace, variant: Variant, threads: int = 200) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LEAKY and not k.startswith(LEAKY_PREFIXES) and not k.endswith("_API_KEY")
    }
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
        EMAIL_URL="consolemail://",
        CHAT_REPLY_THREADS=str(threads),
        REDIS_URL=args.redis_url,
    )
    env.setdefault("UV_PYTHON", DEFAULT_PYTHON if Path(DEFAULT_PYTHON).exists() else "")
    if not env["UV_PYTHON"]:
        del env["UV_PYTHON"]
    if args.frame_interval is not None:
        env["CHAT_FRAME_INTERVAL"] = str(args.frame_interval)
    if args.db == "postgres":
        env["DATABASE_URL"] = postgres_url(args, variant.database)
    return env


def postgres_url(args: argparse.Namespace, database: str) -> str:
    """args.postgres_url with another database name."""
    url = urllib.parse.urlsplit(args.postgres_url)
    return urllib.parse.urlunsplit(url._replace(path=f"/{database}"))


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


def prepare(variant: Variant, runs: list[int], work: Path, args: argparse.Namespace) -> None:
    """Install, migrate and seed one generated project."""
    started = time.monotonic()
    env = project_env(args, variant)
    run_checked(["uv", "sync", "--no-dev", "--quiet"], variant.dir, env)
    python = str(variant.dir / ".venv" / "bin" / "python")
    if args.db == "postgres":
        run_checked(
            ["uv", "pip", "install", "--quiet", "--python", python, "psycopg[binary]"],
            variant.dir,
            env,
        )
        # A database of this run's own, dropped at the end: never touch the named one.
        postgres(args, python, f'DROP DATABASE IF EXISTS "{variant.database}"')
        postgres(args, python, f'CREATE DATABASE "{variant.database}"')
        variant.database_created = True
    run_checked([python, "manage.py", "migrate", "-v0"], variant.dir, env)
    # Production settings serve static files by their hashed names from collectstatic's manifest.
    run_checked([python, "manage.py", "collectstatic", "--no-input", "-v0"], variant.dir, env)
    plans = work / variant.name / "plans"
    run_checked(
        [
            python,
            str(BENCH / "seed.py"),
            "--runs",
            ",".join(map(str, runs)),
            "--tokens",
            str(args.tokens),
            "--out-dir",
            str(plans),
        ],
        variant.dir,
        env,
    )
    variant.plans = {i: plans / f"plan-{i}.json" for i in range(len(runs))}
    log(
        f"{variant.name}: installed, migrated, seeded in "
        f"{time.monotonic() - started:.0f} s ({variant.dir})"
    )


# ---------------------------------------------------------------------------- servers


class Server:
    """One server process on 127.0.0.1; stopped (and if need be killed) on exit."""

    def __init__(
        self, command: list[str], cwd: Path, env: dict, port: int, log_path: Path, http_ready: bool
    ) -> None:
        self.port = port
        self.log_path = log_path
        self.http_ready = http_ready
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
                if self.http_ready:
                    with urllib.request.urlopen(f"{self.url}/accounts/login/", timeout=5) as r:
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


def start_server(
    variant: Variant, floor_reply: Path, count: int, work: Path, tag: str, args: argparse.Namespace
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
            str(floor_reply),
            "--delay",
            str(args.delay),
            "--frame-interval",
            str(args.frame_interval or 0.03),
            "--pacing",
            args.floor_pacing,
        ]
        server = Server(command, BENCH, dict(os.environ), port, log_path, http_ready=False)
    else:
        env = project_env(args, variant, threads=max(200, count + 10))
        bin_dir = variant.dir / ".venv" / "bin"
        if args.server == "daphne":
            command = [
                str(bin_dir / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "config.asgi:application",
            ]
        else:
            command = [
                str(bin_dir / "uvicorn"),
                "config.asgi:application",
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
        server = Server(command, variant.dir, env, port, log_path, http_ready=True)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


def run_client(
    variant: Variant,
    plan: Path,
    count: int,
    servers: list[Server],
    work: Path,
    tag: str,
    args: argparse.Namespace,
    ramp: float,
) -> dict:
    out = work / f"result-{variant.name}-{tag}.json"
    command = [
        sys.executable,
        str(BENCH / "client.py"),
        "--plan",
        str(plan),
        "--count",
        str(count),
        "--url",
        servers[0].url,
        "--pid",
        str(servers[0].pid),
        "--out",
        str(out),
        "--ramp",
        str(ramp),
        "--timeout",
        str(args.timeout),
    ]
    if args.timelines:
        command += ["--timeline", str(args.results / f"timeline-{variant.name}-{tag}.jsonl")]
    if not variant.is_floor and not variant.logged_in:
        # One real login per project (the password hash costs a second); other runs warm up
        # with a seeded session.
        command.append("--login")
        variant.logged_in = True
    if len(servers) > 1:
        command += ["--watch-url", servers[1].url, "--watch-pid", str(servers[1].pid)]
    if not variant.is_floor and variant.layer == "redis":
        command.append("--redis")
    started = time.monotonic()
    profiler = None
    if args.profile and args.profile == f"{variant.name}:{count}" and len(servers) == 1:
        # Collapsed stacks, one line per stack with its sample count (flamegraph.pl input).
        folded = args.results / f"profile-{variant.name}-{count}.txt"
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
            command, cwd=BENCH, stdin=subprocess.DEVNULL, check=True, timeout=args.timeout + 300
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
    variant: Variant,
    plan: Path,
    count: int,
    floor_reply: Path,
    work: Path,
    args: argparse.Namespace,
    ramp: float,
    fanout: bool = False,
) -> dict:
    tag = f"{'fanout-' if fanout else ''}{count}"
    servers = [start_server(variant, floor_reply, count, work, tag, args)]
    try:
        if fanout:
            servers.append(start_server(variant, floor_reply, count, work, tag + "-b", args))
        result = run_client(variant, plan, count, servers, work, tag, args, ramp)
    except Exception as error:  # noqa: BLE001 - a broken run is a row of failures
        tails = "\n".join(s.tail() for s in servers)
        log(f"{variant.name} C={count}: run failed: {error}\n{tails}")
        result = {
            "count": count,
            "completed": 0,
            "failed": count,
            "errors": {f"run failed: {error}"[:300]: count},
        }
    finally:
        for server in servers:
            server.stop()
    result.update(
        variant=variant.name,
        fanout=fanout,
        server="floor" if variant.is_floor else args.server,
        ramp=ramp,
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


TARGETS = {
    # variant prefix: (C, TTFC p99 limit, gap p99 limit, minimum share of the floor's tok/s)
    "async": (1000, 0.250, 0.100, 0.5),
    "sync": (100, 0.500, None, None),
}


def target_checks(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    checks = []
    for row in rows:
        if row["variant"] == "floor" or row.get("fanout"):
            continue
        count, ttfc, gap, share = TARGETS[row["variant"].split("-")[0]]
        if row["count"] != count:
            continue
        parts, ok = [], row["failed"] == 0
        parts.append(f"{row['failed']} failed")
        if row.get("ttfc_p99") is not None:
            ok &= row["ttfc_p99"] < ttfc
            parts.append(f"TTFC p99 {row['ttfc_p99'] * 1000:,.0f} ms (< {ttfc * 1000:.0f})")
        else:
            ok = False
        if gap is not None:
            ok &= row.get("gap_p99") is not None and row["gap_p99"] < gap
            parts.append(f"gap p99 {fmt(row.get('gap_p99'), 1000)} ms (< {gap * 1000:.0f})")
        if share is not None:
            ratio = row.get("floor_ratio")
            ok &= ratio is not None and ratio >= share
            parts.append(f"{fmt(ratio, 1, 2)}x floor tok/s (>= {share})")
        checks.append((f"{row['variant']} at C={count}", ok, ", ".join(parts)))
    return checks


def markdown(meta: dict, rows: list[dict], fanout_rows: list[dict]) -> str:
    m = meta["machine"]
    lines = [
        f"Run {meta['date']} on {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), "
        f"{m['memory_gib']} GiB; load average at start {m['load_average_at_start'][0]:.2f}. "
        f"Server: {meta['server']}, single process; database: {meta['db']}. "
        f"Each chat: one message, a reply of {meta['tokens']} tokens "
        f"{meta['delay'] * 1000:g} ms apart; sends spread over {meta['ramp']:g} s. "
        + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
        + ".",
        "",
        "| variant | C | ok / failed | TTFC p50 ms | TTFC p99 ms | gap p99 ms | tok/s | "
        "x floor | frames/s | CPU s / 1k tok | peak RSS MB | KB / conn | client CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        tokens = r.get("tokens") or 0
        cpu = r.get("server_cpu_seconds")
        window = r.get("window_seconds")
        per_conn = None
        client_share = None
        if window and "client_cpu_seconds" in r:
            client_share = r["client_cpu_seconds"] / window
        if r.get("server_peak_rss") and r.get("server_baseline_rss") is not None:
            per_conn = (r["server_peak_rss"] - r["server_baseline_rss"]) / r["count"] / 1024
        lines.append(
            f"| {r['variant']} | {r['count']:,} | {r['completed']:,} / {r['failed']:,} | "
            f"{fmt(r.get('ttfc_p50'), 1000)} | {fmt(r.get('ttfc_p99'), 1000)} | "
            f"{fmt(r.get('gap_p99'), 1000)} | {fmt(r.get('tokens_per_second'))} | "
            f"{fmt(r.get('floor_ratio'), 1, 2)} | {fmt(r.get('frames_per_second'))} | "
            f"{fmt(cpu / tokens * 1000 if cpu is not None and tokens else None, 1, 3)} | "
            f"{fmt(r.get('server_peak_rss'), 1 / 2**20)} | {fmt(per_conn)} | "
            f"{fmt(client_share, 100)}% |"
        )
    checks = target_checks(rows)
    if checks:
        lines += ["", "Targets:", ""]
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
                (x for x in rows if x["variant"] == r["variant"] and x["count"] == n), None
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
                lines.append(
                    f"- {r['variant']}{' fan-out' if r.get('fanout') else ''} "
                    f"C={r['count']}: {n} x {error}"
                )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, ideal: float | None = None) -> None:
    """Throughput and p99 time to first chunk against C; ideal is tok/s per chat on time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in VARIANTS:
        points = sorted((r["count"], r) for r in rows if r["variant"] == name)
        if not points:
            continue
        cs = [c for c, _ in points]
        style = {"color": "black", "linestyle": "--"} if name == "floor" else {}
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
    if ideal:
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
        title="Latency",
    )
    ax2.axhline(250, color="grey", linewidth=0.8, linestyle=":")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- main


def counts_of(variant: Variant, args: argparse.Namespace) -> list[int]:
    return args.sync_concurrency if variant.name.startswith("sync") else args.concurrency


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
        default=[10, 100, 500, 1000],
        help="C values for the floor and the async variants",
    )
    parser.add_argument(
        "--sync-concurrency",
        type=ints,
        default=[10, 100, 500],
        help="C values for the sync variants",
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
        help="CHAT_FRAME_INTERVAL (default: the project's own, 0.1)",
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
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
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
        help="C=10 for every variant and a 10-conversation fan-out; exit 1 if any chat fails",
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
    if args.smoke:
        args.concurrency = args.sync_concurrency = [10]
        args.fanout = min(args.fanout, 10)
        args.strict = True
    if args.ramp is None:
        args.ramp = args.tokens * args.delay
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    return args


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
    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    if args.results is None:
        args.results = work / "results" if args.smoke else BENCH / "results"
    args.results.mkdir(parents=True, exist_ok=True)
    (work / "cookiecutter-config.yaml").write_text(
        f"cookiecutters_dir: {work / 'cc'}\nreplay_dir: {work / 'replay'}\n"
    )
    log(f"work dir {work}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    variants = [Variant(name) for name in VARIANTS if name in args.variants]
    projects = [v for v in variants if not v.is_floor]
    runs_of: dict[str, list[int]] = {}
    for v in variants:
        runs_of[v.name] = list(counts_of(v, args))
        if not v.is_floor and v.layer == "redis" and args.fanout:
            runs_of[v.name].append(args.fanout)
    floor_counts = runs_of.get("floor", [])

    try:
        for v in projects:
            generate(v, work, args)
        # Prepare the projects two at a time (the machine has two cores).
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(prepare, v, runs_of[v.name], work, args) for v in projects]:
                future.result()
        # The floor streams the same reply; it needs its own plans only for the chat count.
        floor_reply = work / "reply.txt"
        floor = next((v for v in variants if v.is_floor), None)
        if floor:
            if not projects:
                sys.exit("the floor alone has no reply to stream: add a project variant")
            source = projects[0]
            first_plan = json.loads(source.plans[0].read_text())
            floor_reply.write_text(first_plan["reply"])
            biggest = max(range(len(runs_of[source.name])), key=lambda i: runs_of[source.name][i])
            if max(floor_counts) > runs_of[source.name][biggest]:
                sys.exit("the floor's C must not exceed the first project variant's C")
            floor.plans = {i: source.plans[biggest] for i in range(len(floor_counts))}
        elif projects:
            floor_reply.write_text(json.loads(projects[0].plans[0].read_text())["reply"])

        rows: list[dict] = []
        # C outer, variants inner: the floor and the variants of one C run close in time.
        for count in sorted({c for v in variants for c in counts_of(v, args)}):
            for v in variants:
                counts = counts_of(v, args)
                if count not in counts:
                    continue
                result = measure(
                    v, v.plans[counts.index(count)], count, floor_reply, work, args, args.ramp
                )
                rows.append(result)
                log(
                    f"{v.name:16} C={count:<5} ok {result['completed']}/{count}  "
                    f"TTFC p99 {fmt(result.get('ttfc_p99'), 1000)} ms  "
                    f"gap p99 {fmt(result.get('gap_p99'), 1000)} ms  "
                    f"{fmt(result.get('tokens_per_second'))} tok/s  "
                    f"CPU {fmt(result.get('server_cpu_seconds'), 1, 1)} s"
                )
        fanout_rows = []
        for v in projects:
            if v.layer == "redis" and args.fanout:
                plan = v.plans[len(runs_of[v.name]) - 1]
                result = measure(
                    v, plan, args.fanout, floor_reply, work, args, args.ramp, fanout=True
                )
                fanout_rows.append(result)
                w = result.get("watchers", {})
                log(
                    f"{v.name:16} fan-out {args.fanout}: askers ok {result['completed']}, "
                    f"watchers ok {w.get('completed', 0)}, lag p99 "
                    f"{fmt(w.get('finished_lag_p99'), 1000)} ms"
                )
    finally:
        if not args.keep:
            shutil.rmtree(work / "cc", ignore_errors=True)
        for v in projects:
            if v.database_created:
                with contextlib.suppress(Exception):
                    postgres(
                        args,
                        str(v.dir / ".venv" / "bin" / "python"),
                        f'DROP DATABASE IF EXISTS "{v.database}" WITH (FORCE)',
                    )

    floor_tps = {r["count"]: r.get("tokens_per_second") for r in rows if r["variant"] == "floor"}
    for r in rows:
        base = floor_tps.get(r["count"])
        if base and r.get("tokens_per_second") is not None:
            r["floor_ratio"] = r["tokens_per_second"] / base

    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(projects[0] if projects else None),
        "server": args.server,
        "db": args.db,
        "tokens": args.tokens,
        "delay": args.delay,
        "ramp": args.ramp,
        "frame_interval": args.frame_interval or 0.03,
        "smoke": args.smoke,
        "seconds": round(time.monotonic() - started),
    }
    table = write_report(meta, rows, fanout_rows, args.results)
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
