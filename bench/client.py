"""The load client: C concurrent chats against one server (or two), in a process of its own.

Each chat is a WebSocket on a conversation of its own, authenticated by a session cookie.
All sockets are opened first; then every chat sends one message (all at once, or spread
over --ramp seconds) and reads its reply to the end. The client times every frame and
reads the server's CPU time and memory from /proc around the measured window.

    python client.py --plan plan-0.json --count 100 --url http://127.0.0.1:8000 \
        --pid 1234 --out result.json [--watch-url http://127.0.0.1:8001 --watch-pid 1235]

--watch-url opens a second socket per conversation on another server process (the fan-out
check of the Redis layer): it must receive the whole reply too. A second --url (and --pid)
spreads the chats over two server processes instead, chat i on server i mod 2 (the throughput
of two processes behind the Redis layer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import http.client
import json
import os
import re
import resource
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TOKEN = re.compile(r"\s*\S{1,4}|\s+")  # the demo model's tokens
# Reply ids: the project's are numbers, the guide's (the peer) hex.
TURN = re.compile(r'<article id="message-(\w+)" class="message assistant streaming"')
# The reply so far, rendered as Markdown: to the asker every frame interval, to watchers at
# the fan-out interval.
LIVE = re.compile(r'<div id="message-(\w+)-text" hx-swap-oob="innerHTML">(.*)</div>\s*$', re.S)
# Text appended to the reply: what the floor (and a plain-text stream) sends, frame by frame.
CHUNK = re.compile(r'<div id="message-(\w+)-text" hx-swap-oob="beforeend">(.*)</div>\s*$', re.S)
FINISHED = re.compile(
    r'<article id="message-(\w+)" class="message assistant (\w+)" hx-swap-oob="true">'
    r"(.*?)</article>",
    re.S,
)
NOTICE = re.compile(r'<p id="composer-status" class="composer-status error"[^>]*>(.*?)</p>', re.S)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def normalize(text: str) -> str:
    """The words of a reply, whether raw Markdown or rendered HTML."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return " ".join(text.replace("*", "").replace("`", "").split())


@dataclass
class Chat:
    index: int
    conversation: int
    cookie: str | None
    url: str
    watcher: bool = False
    ws: object = None
    reply_id: str | None = None
    sent: float | None = None
    turn_at: float | None = None
    times: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    snapshots: int = 0
    done: float | None = None
    status: str | None = None
    final: str = ""
    error: str | None = None


# ----------------------------------------------------------------------- server readings


def proc_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu(pid: int) -> float:
    return sum(proc_times(pid))


def proc_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value, _unit = line.split()
                out[name[:-1]] = int(value) * 1024
    return out


def redis_cpu(host: str = "127.0.0.1", port: int = 6379) -> float | None:
    """Redis's own CPU seconds (INFO cpu), or None when no Redis answers."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"INFO cpu\r\n")
            data = b""
            while b"used_cpu_user:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    values = dict(
        line.split(":", 1) for line in data.decode().splitlines() if line.startswith("used_cpu_")
    )
    return float(values.get("used_cpu_sys", 0)) + float(values.get("used_cpu_user", 0))


# ---------------------------------------------------------------------------- HTTP login


def http_login(base: str, username: str, password: str, conversation: int) -> str:
    """Log in through the login form as a browser would; return the session cookie."""
    url = urllib.parse.urlsplit(base)
    jar: dict[str, str] = {}

    def request(method: str, path: str, body: str | None = None) -> tuple[int, str, dict]:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        for header in response.msg.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                jar[name] = morsel.value
        conn.close()
        return response.status, text, dict(response.getheaders())

    status, page, _ = request("GET", "/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    if status != 200 or token is None:
        raise RuntimeError(f"login page: HTTP {status}")
    form = urllib.parse.urlencode(
        {"login": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
    )
    status, _, headers = request("POST", "/accounts/login/", form)
    if status != 302 or "sessionid" not in jar:
        raise RuntimeError(f"login refused: HTTP {status}")
    status, page, _ = request("GET", f"/chat/{conversation}/")
    if status != 200 or f"/ws/chat/{conversation}/" not in page:
        raise RuntimeError(f"chat page: HTTP {status}, no WebSocket URL in it")
    return jar["sessionid"]


# ------------------------------------------------------------------------------- chats


def ws_url(base: str, path: str, conversation: int) -> str:
    url = urllib.parse.urlsplit(base)
    return f"ws://{url.netloc}{path.format(id=conversation)}"


async def open_chat(chat: Chat, path: str, gate: asyncio.Semaphore) -> None:
    headers = {"Cookie": f"sessionid={chat.cookie}"} if chat.cookie else {}
    async with gate:
        try:
            chat.ws = await connect(
                ws_url(chat.url, path, chat.conversation),
                origin=chat.url.rstrip("/"),
                additional_headers=headers,
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=60,
                close_timeout=5,
            )
        except Exception as error:  # noqa: BLE001 - every failure is a failed chat
            chat.error = f"connect: {error!r}"[:300]


async def read_chat(chat: Chat, deadline: float) -> None:
    if chat.ws is None:
        return
    try:
        async with asyncio.timeout_at(deadline):
            async for message in chat.ws:
                now = time.monotonic()
                if message.startswith('<div id="message-'):
                    chunk = CHUNK.match(message)
                    if chunk and chunk.group(1) == chat.reply_id and not chat.watcher:
                        chat.times.append(now)
                        chat.texts.append(chunk.group(2))
                        continue
                    live = LIVE.match(message)
                    if live and live.group(1) == chat.reply_id and not chat.watcher:
                        chat.times.append(now)
                        chat.texts[:] = [live.group(2)]  # each frame is the whole text so far
                        continue
                    if live and live.group(1) == chat.reply_id:
                        chat.snapshots += 1
                        if chat.snapshots == 1:
                            chat.times.append(now)
                        continue
                finished = FINISHED.search(message)
                if finished and finished.group(1) == chat.reply_id:
                    chat.done, chat.status, chat.final = now, finished.group(2), finished.group(3)
                    return
                turn = TURN.search(message)
                if turn and chat.reply_id is None:
                    chat.turn_at, chat.reply_id = now, turn.group(1)
                    continue
                notice = NOTICE.search(message)
                if notice:
                    chat.error = f"server: {normalize(notice.group(1))}"
                    return
        chat.error = "closed before the reply finished"
    except TimeoutError:
        chat.error = "timed out"
    except ConnectionClosed as error:
        chat.error = f"closed: {error}"[:300]


def check(chat: Chat, reply: str) -> None:
    """A chat succeeds when its reply finished complete, whole and in order."""
    if chat.error:
        return
    if chat.status != "complete":
        chat.error = f"finished {chat.status}"
    elif not chat.watcher and normalize("".join(chat.texts)) != normalize(reply):
        chat.error = "streamed text differs from the reply"
    elif normalize(chat.final) != normalize(reply):
        chat.error = "finished text differs from the reply"


async def close_all(chats: list[Chat]) -> None:
    async def close(chat: Chat) -> None:
        if chat.ws is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                await chat.ws.close()

    try:
        async with asyncio.timeout(20):
            await asyncio.gather(*(close(c) for c in chats))
    except TimeoutError:
        pass


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


async def run(args: argparse.Namespace) -> dict:
    plan = json.loads(Path(args.plan).read_text())
    reply, message = plan["reply"], plan["message"]
    frame = json.dumps({"message": message})
    pids = args.pid + args.watch_pid
    gate = asyncio.Semaphore(args.connect_concurrency)
    result: dict = {"count": args.count}

    # Warm-up: log in over HTTP once, then one whole chat on each server (watched from the
    # second server with --watch-url).
    warm = plan["chats"][0]
    cookie = warm["cookie"]
    if args.login:
        t = time.monotonic()
        cookie = http_login(args.url[0], warm["user"], plan["password"], warm["conversation"])
        result["login_seconds"] = time.monotonic() - t
    warm_chats = [
        Chat(0, c["conversation"], cookie if i == 0 else c["cookie"], url)
        for i, (c, url) in enumerate(zip(plan["chats"], args.url, strict=False))
    ]
    if args.watch_url:
        warm_chats.append(Chat(0, warm["conversation"], cookie, args.watch_url, watcher=True))
    for chat in warm_chats:
        await open_chat(chat, args.path, gate)
    if args.watch_url:
        await asyncio.sleep(0.5)
    deadline = time.monotonic() + 60
    readers = [asyncio.create_task(read_chat(c, deadline)) for c in warm_chats]
    for chat in warm_chats:
        if chat.ws is not None and not chat.watcher:
            await chat.ws.send(frame)
    await asyncio.gather(*readers)
    for c in warm_chats:
        check(c, reply)
    await close_all(warm_chats)
    result["warmup_errors"] = [c.error for c in warm_chats if c.error]
    await asyncio.sleep(0.3)
    baseline = {pid: proc_mem(pid)["VmRSS"] for pid in pids}

    # Open every socket, askers first so that the watchers' presence reaches them.
    servers = len(args.url)
    askers = [
        Chat(i, c["conversation"], c["cookie"], args.url[i % servers])
        for i, c in enumerate(plan["chats"][servers : servers + args.count])
    ]
    if len(askers) < args.count:
        raise SystemExit(f"the plan has chats for {len(askers)} of {args.count}")
    watchers = (
        [Chat(c.index, c.conversation, c.cookie, args.watch_url, watcher=True) for c in askers]
        if args.watch_url
        else []
    )
    t = time.monotonic()
    await asyncio.gather(*(open_chat(c, args.path, gate) for c in askers))
    await asyncio.gather(*(open_chat(c, args.path, gate) for c in watchers))
    result["connect_seconds"] = time.monotonic() - t
    await asyncio.sleep(1.0 if watchers else 0.3)
    idle = {pid: proc_mem(pid)["VmRSS"] for pid in pids}

    # The measured window: every asker sends, all replies are read to their end.
    deadline = time.monotonic() + args.timeout
    readers = [asyncio.create_task(read_chat(c, deadline)) for c in askers + watchers]
    cpu0 = {pid: proc_cpu(pid) for pid in pids}
    sys0 = sum(proc_times(pid)[1] for pid in pids)
    redis0 = redis_cpu() if args.redis else None
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    for chat in askers:
        if args.ramp:
            pause = t0 + args.ramp * chat.index / len(askers) - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
        if chat.ws is None:
            continue
        chat.sent = time.monotonic()
        try:
            await chat.ws.send(frame)
        except ConnectionClosed as error:
            chat.error = f"send: {error}"
    await asyncio.gather(*readers)
    t1 = time.monotonic()
    cpu1 = {pid: proc_cpu(pid) for pid in pids}
    sys1 = sum(proc_times(pid)[1] for pid in pids)
    redis1 = redis_cpu() if args.redis else None
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    peak = {pid: proc_mem(pid)["VmHWM"] for pid in pids}
    await close_all(askers + watchers)

    for chat in askers + watchers:
        check(chat, reply)
    ok = [c for c in askers if not c.error]
    done = [c.done for c in askers if c.done is not None]
    end = max(done) if done else t1
    window = end - t0
    tokens = sum(len(TOKEN.findall(normalize("".join(c.texts)))) for c in askers)
    frames = sum(len(c.times) for c in askers)
    gaps = [b - a for c in askers for a, b in zip(c.times, c.times[1:], strict=False)]
    errors: dict[str, int] = {}
    for chat in askers + watchers:
        if chat.error:
            key = ("watcher " if chat.watcher else "") + chat.error
            errors[key] = errors.get(key, 0) + 1
    result.update(
        completed=len(ok),
        failed=len(askers) - len(ok),
        errors=errors,
        window_seconds=window,
        ttfc=[c.times[0] - c.sent for c in askers if c.times and c.sent],
        turn=[c.turn_at - c.sent for c in askers if c.turn_at and c.sent],
        reply_seconds=[c.done - c.sent for c in askers if c.done and c.sent],
        stream_seconds=[c.times[-1] - c.times[0] for c in askers if len(c.times) > 1],
        finish_lag=[c.done - c.times[-1] for c in askers if c.done and c.times],
        gap_p50=pct(gaps, 50),
        gap_p99=pct(gaps, 99),
        gap_max=max(gaps) if gaps else None,
        tokens=tokens,
        frames=frames,
        tokens_per_second=tokens / window if window > 0 else 0,
        frames_per_second=frames / window if window > 0 else 0,
        server_cpu_seconds=sum(cpu1[p] - cpu0[p] for p in pids),
        server_cpu_by_process=[cpu1[p] - cpu0[p] for p in pids],
        server_cpu_system_seconds=sys1 - sys0,
        server_peak_rss=sum(peak.values()),
        server_baseline_rss=sum(baseline.values()),
        server_idle_rss=sum(idle.values()),
        client_cpu_seconds=(usage1.ru_utime + usage1.ru_stime)
        - (usage0.ru_utime + usage0.ru_stime),
        redis_cpu_seconds=(redis1 - redis0) if redis0 is not None and redis1 is not None else None,
    )
    for name in ("ttfc", "turn", "reply_seconds", "stream_seconds", "finish_lag"):
        values = result.pop(name)
        result[f"{name}_p50"], result[f"{name}_p99"] = pct(values, 50), pct(values, 99)
        result[f"{name}_max"] = max(values) if values else None
    if watchers:
        result["watchers"] = {
            "completed": sum(1 for c in watchers if not c.error),
            "failed": sum(1 for c in watchers if c.error),
            "snapshots_per_reply": sum(c.snapshots for c in watchers) / len(watchers),
            "first_snapshot_p99": pct(
                [
                    c.times[0] - a.sent
                    for c, a in zip(watchers, askers, strict=True)
                    if c.times and a.sent
                ],
                99,
            ),
            "finished_lag_p50": pct(
                [
                    c.done - a.done
                    for c, a in zip(watchers, askers, strict=True)
                    if c.done and a.done
                ],
                50,
            ),
            "finished_lag_p99": pct(
                [
                    c.done - a.done
                    for c, a in zip(watchers, askers, strict=True)
                    if c.done and a.done
                ],
                99,
            ),
        }
    if args.timeline:
        with open(args.timeline, "w") as f:
            for c in askers + watchers:
                row = [
                    c.sent,
                    c.turn_at,
                    c.times[0] if c.times else None,
                    c.times[-1] if c.times else None,
                    c.done,
                ]
                f.write(
                    json.dumps(
                        {
                            "watcher": c.watcher,
                            "frames": len(c.times),
                            "t": [None if x is None else round(x - t0, 4) for x in row],
                        }
                    )
                )
                f.write("\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument(
        "--url",
        action="append",
        required=True,
        help="http://host:port of the server; twice: chats spread over two servers",
    )
    parser.add_argument("--path", default="/ws/chat/{id}/")
    parser.add_argument("--pid", type=int, action="append", default=[])
    parser.add_argument("--watch-url")
    parser.add_argument("--watch-pid", type=int, action="append", default=[])
    parser.add_argument("--login", action="store_true", help="log in over HTTP for the warm-up")
    parser.add_argument("--redis", action="store_true", help="read Redis's CPU time too")
    parser.add_argument("--ramp", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--timeline",
        help="write each chat's sent, turn, first and last chunk, "
        "finished times (seconds from the first send) here, a JSON line each",
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
