"""The floor: a minimal raw `websockets` server doing the same streaming as the project.

No Django, no database, no channel layer: one message in, the same fragments out (a turn
fragment, the reply's tokens at the same pace coalesced into frames at the same interval,
a finished fragment). Whatever the generated project costs above this is its overhead.

    python floor.py --port 8100 --reply-file reply.txt --delay 0.005 --frame-interval 0.03
"""

import argparse
import asyncio
import html
import itertools
import json
import re
import signal
import time

from websockets.asyncio.server import serve

TOKEN = re.compile(r"\s*\S{1,4}|\s+")  # the demo model's tokens


async def stream(reply_tokens: list[str], delay: float):
    """One token per sleep, as the project's demo model does."""
    for token in reply_tokens:
        await asyncio.sleep(delay)
        yield token


async def stream_on_schedule(reply_tokens: list[str], delay: float):
    """Token i is due at start + i * delay; a reader that falls behind gets all due tokens."""
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), 0
    while sent < len(reply_tokens):
        wait = start + (sent + 1) * delay - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        due = max(sent + 1, int((loop.time() - start) / delay)) if delay else len(reply_tokens)
        yield "".join(reply_tokens[sent:due])
        sent = due


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reply-file", required=True)
    parser.add_argument("--delay", type=float, default=0.005)
    parser.add_argument("--frame-interval", type=float, default=0.03)
    parser.add_argument(
        "--pacing",
        choices=["per-token", "schedule"],
        default="per-token",
        help="per-token: sleep before each token; schedule: token i is due at "
        "i x delay and late tokens come together (match the demo model)",
    )
    args = parser.parse_args()
    with open(args.reply_file) as f:
        reply = f.read()
    reply_tokens = TOKEN.findall(reply)
    ids = itertools.count(1)
    pace = stream if args.pacing == "per-token" else stream_on_schedule

    async def handler(ws) -> None:
        async for raw in ws:
            question = json.loads(raw)["message"]
            asked, n = next(ids), next(ids)
            await ws.send(
                '<div hx-swap-oob="beforeend:#messages">'
                f'<article id="message-{asked}" class="message user complete">'
                f'<div class="text">{html.escape(question)}</div></article>'
                f'<article id="message-{n}" class="message assistant streaming">'
                f'<div id="message-{n}-text" class="text streaming"></div></article></div>'
            )
            pending: list[str] = []
            last = float("-inf")
            async for token in pace(reply_tokens, args.delay):
                pending.append(token)
                now = time.monotonic()
                if now - last >= args.frame_interval:
                    last = now
                    text = html.escape("".join(pending))
                    pending.clear()
                    await ws.send(
                        f'<div id="message-{n}-text" hx-swap-oob="beforeend">{text}</div>'
                    )
            if pending:
                text = html.escape("".join(pending))
                await ws.send(f'<div id="message-{n}-text" hx-swap-oob="beforeend">{text}</div>')
            await ws.send(
                f'<article id="message-{n}" class="message assistant complete" hx-swap-oob="true">'
                f'<div class="text markdown"><p>{html.escape(reply)}</p></div></article>'
            )

    async def run() -> None:
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
        async with serve(
            handler, args.host, args.port, compression=None, max_size=None, backlog=4096
        ):
            print(f"floor serving on {args.host}:{args.port}", flush=True)
            await stop

    try:
        import uvloop  # the same event loop uvicorn uses
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
