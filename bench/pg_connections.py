"""PostgreSQL connections under load: N replies at once against a server of max_connections=25.

Starts a private PostgreSQL (initdb into a temporary directory, trust authentication, on
127.0.0.1:--port, max_connections=--max-connections), generates each variant (demo model) as
bench/run.py does, serves it single-process under uvicorn with DATABASE_URL on that server,
and runs the load client (client.py): N chats over real WebSockets, every message sent at
once. A sampler counts the variant database's client backends (autovacuum left out) in
pg_stat_activity every --interval seconds while the client runs, then once more after it has
closed its sockets (the server still up). Prints a table; the private server is stopped and
removed at the end.

    uv run --no-project --with-requirements bench/requirements.txt \
        python bench/pg_connections.py [--replies 200] [--variants async-in-memory,sync-in-memory]

Needs the PostgreSQL 15 binaries (--pg-bin); run as root, it runs them as the postgres user.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import run as bench  # bench/run.py: generation, seeding, servers, the load client

SAMPLER = """
import sys, time, psycopg
url, database, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
with psycopg.connect(url, autocommit=True) as db:
    while True:
        ours, clients = db.execute(
            "SELECT count(*) FILTER (WHERE datname = %s), count(*)"
            " FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()",
            [database],
        ).fetchone()
        print(time.monotonic(), ours, clients, flush=True)
        time.sleep(interval)
"""
# What a database failure leaves in the server's log (tracebacks and the pool's own words).
DATABASE_ERROR = re.compile(
    r"OperationalError|InterfaceError|PoolTimeout|too many clients|remaining connection slots"
)


class PrivatePostgres:
    """A PostgreSQL server of this run's own in a temporary directory; stop() removes it."""

    def __init__(self, bin_dir: Path, port: int, max_connections: int) -> None:
        self.bin_dir = bin_dir
        self.port = port
        self.max_connections = max_connections
        self.dir = Path(tempfile.mkdtemp(prefix="pg-connections-"))
        self.data = self.dir / "data"
        # initdb refuses to run as root: then the cluster belongs to the postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            account = pwd.getpwnam("postgres")
            os.chown(self.dir, account.pw_uid, account.pw_gid)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def pg(self, tool: str, *arguments: str) -> None:
        command = [*self.as_user, str(self.bin_dir / tool), *arguments]
        bench.run_checked(command, self.dir, dict(os.environ), timeout=120)

    def start(self) -> None:
        self.pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1"
            f" -c max_connections={self.max_connections}"
            f" -c unix_socket_directories={self.data} -c fsync=off"
        )
        log = str(self.dir / "server.log")
        self.pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-o", options, "-l", log)

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # already stopped, or never started
            self.pg("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))
        shutil.rmtree(self.dir, ignore_errors=True)


class Sampler:
    """Backends of one database every interval seconds, from the project's own Python."""

    def __init__(self, python: Path, url: str, database: str, interval: float) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, ours, all clients)
        self.arrived = threading.Condition()
        self.process = subprocess.Popen(
            [str(python), "-c", SAMPLER, url, database, str(interval)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self.read, daemon=True).start()

    def read(self) -> None:
        for line in self.process.stdout:
            at, ours, clients = line.split()
            with self.arrived:
                self.samples.append((float(at), int(ours), int(clients)))
                self.arrived.notify_all()

    def first_after(self, moment: float, timeout: float = 30) -> tuple[float, int, int]:
        """The first sample taken after this moment (time.monotonic())."""
        with self.arrived:
            found = self.arrived.wait_for(
                lambda: self.samples and self.samples[-1][0] > moment, timeout=timeout
            )
            if not found:
                raise RuntimeError(f"no sample of the backends within {timeout} s")
            return next(s for s in self.samples if s[0] > moment)

    def between(self, start: float, end: float) -> list[tuple[float, int, int]]:
        with self.arrived:
            return [s for s in self.samples if start <= s[0] <= end]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def measure(variant: bench.Variant, server: PrivatePostgres, work: Path, args) -> dict:
    """Serve the variant, run N chats at once while sampling its backends; one table row."""
    python = variant.dir / ".venv" / "bin" / "python"
    uvicorn = bench.start_server(variant, work / "reply.txt", args.replies, work, "pg", args)
    sampler = Sampler(python, server.url, variant.database, args.interval)
    try:
        start = time.monotonic()
        sampler.first_after(start)  # the sampler is connected
        result = bench.run_client(
            variant, variant.plans[0], args.replies, [uvicorn], work, "pg", args, ramp=0
        )
        end = time.monotonic()
        after = sampler.first_after(end)
        during = sampler.between(start, end)
    finally:
        sampler.stop()
        uvicorn.stop()
    log = uvicorn.log_path.read_text(errors="replace").splitlines()
    log_errors = sum(1 for line in log if DATABASE_ERROR.search(line))
    return {
        "variant": variant.name,
        "replies": args.replies,
        "completed": result["completed"],
        "failed": result["failed"] + len(result.get("warmup_errors") or []),
        "reasons": result.get("errors", {}),
        "log_errors": log_errors,
        "peak": max(s[1] for s in during),
        "peak_clients": max(s[2] for s in during),
        "after": after[1],
        "samples": len(during),
        "wall": result["window_seconds"],
    }


def table(rows: list[dict], args) -> str:
    lines = [
        f"PostgreSQL max_connections={args.max_connections}; pool max_size "
        f"{args.pool_size or 'the project default (8)'}; {args.replies} chats, every message "
        f"sent at once; replies of {args.tokens} tokens {args.delay * 1000:g} ms apart; "
        f"backends sampled every {args.interval * 1000:g} ms; load average at start "
        f"{bench.LOAD_AT_START[0]:.2f} on {os.cpu_count()} cores.",
        "",
        "| variant | N | completed | errors | peak backends | backends after | "
        "peak clients on the server | wall s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['replies']} | {r['completed']} | {r['failed']} | "
            f"{r['peak']} | {r['after']} | {r['peak_clients']} | {r['wall']:.1f} |"
        )
    lines += [
        "",
        "errors: chats that did not get their whole reply, finished complete (warm-up chat "
        "included). peak backends: the variant database's sessions, the most seen in one sample "
        "while the client ran; after: once the client had closed its sockets, server still up. "
        "peak clients: every client session on the server, the sampler's own left out. wall: "
        "first message sent to last reply finished.",
    ]
    for r in rows:
        for reason, count in r["reasons"].items():
            lines.append(f"- {r['variant']}: {count} x {reason}")
        if r["log_errors"]:
            lines.append(
                f"- {r['variant']}: {r['log_errors']} server log lines name a database error"
            )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default="async-in-memory,sync-in-memory")
    parser.add_argument("--replies", type=int, default=200, help="chats, all sent at once (N)")
    parser.add_argument("--port", type=int, default=54329)
    parser.add_argument("--max-connections", type=int, default=25)
    parser.add_argument(
        "--pool-size", type=int, default=None, help="DATABASE_POOL_SIZE (default: the project's)"
    )
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    parser.add_argument("--delay", type=float, default=0.005, help="seconds between tokens")
    parser.add_argument("--pg-bin", type=Path, default=Path("/usr/lib/postgresql/15/bin"))
    parser.add_argument("--template", type=Path, default=bench.TEMPLATE)
    parser.add_argument("--timeout", type=float, default=120, help="seconds per client run")
    parser.add_argument("--keep", action="store_true", help="keep the generated projects")
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(bench.VARIANTS[1:])  # every variant but the floor
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    # What bench/run.py's functions read of its own options.
    args.db, args.server, args.provider = "postgres", "uvicorn", "openai"
    args.frame_interval, args.redis_url = None, "redis://127.0.0.1:6379/0"
    args.profile, args.profile_idle, args.timelines = None, False, False
    return args


def main() -> int:
    args = parse_args()
    if args.pool_size:
        os.environ["DATABASE_POOL_SIZE"] = str(args.pool_size)
    else:
        os.environ.pop("DATABASE_POOL_SIZE", None)
    work = Path(tempfile.mkdtemp(prefix="pg-connections-bench-"))
    (work / "cookiecutter-config.yaml").write_text(
        f"cookiecutters_dir: {work / 'cc'}\nreplay_dir: {work / 'replay'}\n"
    )
    server = PrivatePostgres(args.pg_bin, args.port, args.max_connections)
    args.postgres_url = server.url
    bench.log(f"work dir {work}; PostgreSQL in {server.dir} on port {args.port}")
    rows = []
    try:
        server.start()
        for name in args.variants:
            variant = bench.Variant(name)
            bench.generate(variant, work, args)
            bench.prepare(variant, [args.replies], work, args)
            (work / "reply.txt").write_text("")  # only the floor streams it
            rows.append(measure(variant, server, work, args))
            r = rows[-1]
            bench.log(
                f"{name}: {r['completed']}/{r['replies']} complete, peak {r['peak']} backends, "
                f"{r['after']} after, {r['wall']:.1f} s"
            )
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows, args))
    return 1 if any(r["failed"] or r["log_errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
