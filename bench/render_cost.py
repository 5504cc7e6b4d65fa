"""CPU cost of showing a streaming reply formatted: per reply and per 1,000 tokens.

Replays the consumer's write_reply pacing on a simulated clock (no sleeping, so a busy
machine changes the CPU figures little and the frame counts not at all) over a Markdown
reply with prose, a list, a code block and a table, cut into the demo model's tokens:

- before: raw text appended to the asker's bubble every 30 ms (escaped), the whole reply
  rendered as Markdown once at the end (the template as it was up to issue 14);
- after: the reply so far rendered as Markdown (markdown-it, Pygments, nh3) every
  CHAT_FRAME_INTERVAL (100 ms), once more for the last pieces, and once at the end.

Only the asker's frames are counted: watchers get the same frames at the fan-out cadence,
a subset of the asker's (fragments.live_for renders a text once for both).

Run it with a generated project's environment:

    uv run --project PROJECT python bench/render_cost.py PROJECT [--tokens-per-second 50]
"""

import argparse
import os
import sys
import time
from pathlib import Path

PROSE = (
    "Django's **Channels** adds WebSockets to a project. Each connection is a *consumer*; "
    "a channel layer carries messages between processes, see [the docs]"
    "(https://channels.readthedocs.io/en/latest/topics/channel_layers.html).\n\n"
)
SECTION = (
    "## Step {n}\n\n"
    + PROSE
    + "- install `channels` and `daphne`\n- add the ASGI application\n- route `ws/chat/`\n\n"
    "```python\nclass ChatConsumer(AsyncWebsocketConsumer):\n"
    "    async def receive(self, text_data=None, bytes_data=None):\n"
    "        await self.send(text_data=text_data)  # echo\n```\n\n"
    "| Setting | Default | Meaning |\n|:--|:-:|--:|\n"
    "| CHAT_FRAME_INTERVAL | 0.1 | seconds between frames |\n"
    "| CHAT_FANOUT_INTERVAL | 0.25 | seconds between snapshots |\n\n"
)


def reply_tokens(count: int, tokenize) -> list[str]:
    text, n = "", 1
    while len(tokenize(text)) < count:
        text += SECTION.format(n=n)
        n += 1
    return tokenize(text)[:count]


def cpu(run) -> tuple[float, int]:
    """CPU seconds of run() (best of 5 runs) and the frames it sent."""
    best, frames = float("inf"), 0
    for _ in range(5):
        started = time.process_time()
        frames = run()
        best = min(best, time.process_time() - started)
    return best, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path, help="a generated project's directory")
    parser.add_argument("--tokens-per-second", type=float, default=50.0)
    parser.add_argument("--lengths", default="200,2000", help="tokens per reply")
    args = parser.parse_args()

    sys.path.insert(0, str(args.project.resolve()))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "render-cost-benchmark")
    import django

    django.setup()
    from chat import fragments
    from chat.llm.demo import tokens as tokenize
    from chat.markdown import render_markdown
    from chat.models import Message
    from chat.streaming import FrameBuffer
    from django.conf import settings
    from django.utils.html import escape

    reply = Message(pk=1, conversation_id=1, role="assistant", status="streaming")
    step = 1 / args.tokens_per_second

    def replay(pieces: list[str], interval: float, frame) -> int:
        now = [0.0]
        frames = FrameBuffer(interval, clock=lambda: now[0])
        parts: list[str] = []
        sent = 0
        for piece in pieces:
            now[0] += step
            parts.append(piece)
            if text := frames.add(piece):
                frame(text, parts)
                sent += 1
        if frames.drain():
            frame("", parts)
            sent += 1
        render_markdown("".join(parts))  # the finished reply, both before and after
        return sent

    def before(pieces: list[str]) -> int:
        head, tail = '<div id="message-1-text" hx-swap-oob="beforeend">', "</div>"
        return replay(pieces, 0.03, lambda text, parts: head + escape(text) + tail)

    def after(pieces: list[str]) -> int:
        live = fragments.live_for(reply)
        return replay(pieces, settings.CHAT_FRAME_INTERVAL, lambda _, parts: live("".join(parts)))

    print(
        f"{args.tokens_per_second:g} tokens/s, CHAT_FRAME_INTERVAL={settings.CHAT_FRAME_INTERVAL}"
    )
    print(
        f"{'tokens':>7} {'variant':>7} {'frames':>7} {'CPU ms/reply':>13} {'CPU ms/1k tokens':>17}"
    )
    for count in (int(n) for n in args.lengths.split(",")):
        pieces = reply_tokens(count, tokenize)
        for name, variant in (("before", before), ("after", after)):
            seconds, frames = cpu(lambda v=variant, p=pieces: v(p))
            print(
                f"{count:>7} {name:>7} {frames:>7} {seconds * 1000:>13.1f} "
                f"{seconds * 1000 * 1000 / count:>17.1f}"
            )


if __name__ == "__main__":
    main()
