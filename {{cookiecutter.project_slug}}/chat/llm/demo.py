"""An offline model that answers without an API key, with a model-like token rhythm."""

{% if cookiecutter.consumer == "async" -%}
import asyncio
{% endif -%}
import re
import time
from collections.abc import {% if cookiecutter.consumer == "async" %}AsyncIterator{% else %}Generator{% endif %}

from .base import ChatMessage{% if cookiecutter.consumer == "sync" %}, ReplyStream{% endif %}

TOKEN = re.compile(r"\s*\S{1,4}|\s+")


def compose_reply(messages: list[ChatMessage]) -> str:
    """Echo what the model was given, so a reader can see history reach it."""
    user_messages = [m.content for m in messages if m.role == "user"]
    latest = user_messages[-1] if user_messages else ""
    lines = [
        "**Demo model** (offline): no provider is configured, so I echo what I was given.",
        "",
        f"You said: {latest}",
    ]
    if len(user_messages) > 1:
        lines += [
            "",
            f"I can see {len(messages) - 1} earlier messages in this conversation.",
            f"- Your first message: {user_messages[0]}",
            f"- Your previous message: {user_messages[-2]}",
        ]
    lines += ["", "Configure a provider in `.env` to talk to a real model."]
    return "\n".join(lines)


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


class DemoModel:
    label = "Demo model (offline)"
    is_demo = True

    def __init__(self, delay: float) -> None:
        self.delay = delay
{%- if cookiecutter.consumer == "async" %}

    async def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        reply = tokens(compose_reply(messages))
        start, sent = time.monotonic(), 0
        while sent < len(reply):
            await asyncio.sleep(max(0.0, start + (sent + 1) * self.delay - time.monotonic()))
            due = self.due(reply, start, sent)
            yield "".join(reply[sent:due])
            sent = due
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> ReplyStream:
        return ReplyStream(lambda upstream: self.pieces(messages))

    def pieces(self, messages: list[ChatMessage]) -> Generator[str]:
        reply = tokens(compose_reply(messages))
        start, sent = time.monotonic(), 0
        while sent < len(reply):
            time.sleep(max(0.0, start + (sent + 1) * self.delay - time.monotonic()))
            due = self.due(reply, start, sent)
            yield "".join(reply[sent:due])
            sent = due
{%- endif %}

    def due(self, reply: list[str], start: float, sent: int) -> int:
        """How many tokens are due now: token i at start + i * delay, like a model's output.

        A busy server that falls behind gets every late token at once, in one piece, as a
        provider's HTTP stream hands over all that has arrived: it catches up instead of
        stretching the reply (and paying a loop pass, or a frame, per token).
        """
        if not self.delay:
            return len(reply)
        return min(len(reply), max(sent + 1, int((time.monotonic() - start) / self.delay)))
