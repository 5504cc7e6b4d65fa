"""Static files under ASGI: WhiteNoise against ServeStatic, in a generated project.

    cd <generated project> && uv run --with whitenoise --with servestatic \\
        python <template>/bench/static_files.py [--requests 2000] [--concurrency 20]

For each library: settings with its middleware and its manifest storage (hashed names),
collectstatic, then the project's production server command (uvicorn config.asgi:application)
on a free port, and GETs of one hashed static file (chat.css) from `concurrency` clients.
Prints requests per second, median and p95 latency, the Cache-Control header, and how many
"StreamingHttpResponse must consume synchronous iterators" warnings the server emitted
(with PYTHONWARNINGS=always; by default Python prints the first one of each code location).
Django logs that warning for every streaming response with a sync iterator under ASGI
(https://docs.djangoproject.com/en/stable/ref/request-response/#streaminghttpresponse-objects).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

VARIANTS = {
    "whitenoise": (
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "whitenoise.storage.CompressedManifestStaticFilesStorage",
    ),
    "servestatic": (
        "servestatic.middleware.ServeStaticMiddleware",
        "servestatic.storage.CompressedManifestStaticFilesStorage",
    ),
}

SETTINGS = """\
from config.settings import *  # noqa: F403

MIDDLEWARE = [m for m in MIDDLEWARE if "whitenoise" not in m and "servestatic" not in m]  # noqa: F405
MIDDLEWARE.insert(1, {middleware!r})
STORAGES = {{
    "default": {{"BACKEND": "django.core.files.storage.FileSystemStorage"}},
    "staticfiles": {{"BACKEND": {storage!r}}},
}}
STATIC_ROOT = {static_root!r}
"""

WARNING = "StreamingHttpResponse must consume synchronous iterators"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def load(url: str, requests: int, concurrency: int) -> tuple[float, list[float], str]:
    latencies: list[float] = []
    queue = iter(range(requests))
    headers = ""
    async with httpx.AsyncClient() as client:

        async def worker() -> None:
            nonlocal headers
            for _ in queue:
                start = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                headers = response.headers.get("cache-control", "")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return elapsed, latencies, headers


def measure(name: str, requests: int, concurrency: int) -> None:
    middleware, storage = VARIANTS[name]
    work = Path(tempfile.mkdtemp(prefix=f"static-{name}-"))
    (work / "static_bench_settings.py").write_text(
        SETTINGS.format(middleware=middleware, storage=storage, static_root=str(work / "static"))
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "static_bench_settings",
        "PYTHONPATH": os.pathsep.join([str(work), os.getcwd()]),
        "DJANGO_DEBUG": "false",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        # Python prints a warning once per code location by default: count every one.
        "PYTHONWARNINGS": "always",
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "-v0"], env=env, check=True
    )
    manifest = (work / "static" / "staticfiles.json").read_text()
    hashed = re.search(r'"chat/chat.css": "([^"]+)"', manifest)
    assert hashed, "no hashed name for chat/chat.css in the manifest"
    port = free_port()
    log = work / "server.log"
    command = [
        sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
        "--port", str(port), "--ws-per-message-deflate", "false", "--no-access-log",
    ]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/static/{hashed.group(1)}"
        while "Application startup complete" not in log.read_text():
            if server.poll() is not None:
                raise SystemExit(f"server exited:\n{log.read_text()}")
            time.sleep(0.1)
        asyncio.run(load(url, 50, concurrency))  # warm-up
        elapsed, latencies, cache_control = asyncio.run(load(url, requests, concurrency))
    finally:
        server.terminate()
        server.wait(timeout=20)
    warnings = log.read_text().count(WARNING)
    latencies.sort()
    print(
        f"{name:12} {requests / elapsed:8.0f} req/s  median {statistics.median(latencies) * 1000:6.1f} ms"
        f"  p95 {latencies[int(len(latencies) * 0.95)] * 1000:6.1f} ms"
        f"  warnings {warnings:5} (of {requests + 50} responses)  Cache-Control: {cache_control}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    for name in args.variants:
        measure(name, args.requests, args.concurrency)


if __name__ == "__main__":
    main()
