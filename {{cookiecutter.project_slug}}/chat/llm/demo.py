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
        # Each token is due on a schedule, like a model's output: a busy server that falls
        # behind gets the late tokens at once rather than stretching the reply.
        start = time.monotonic()
        for index, token in enumerate(tokens(compose_reply(messages)), start=1):
            await asyncio.sleep(max(0.0, start + index * self.delay - time.monotonic()))
            yield token
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> ReplyStream:
        return ReplyStream(lambda upstream: self.pieces(messages))

    def pieces(self, messages: list[ChatMessage]) -> Generator[str]:
        # Each token is due on a schedule, like a model's output: a busy server that falls
        # behind gets the late tokens at once rather than stretching the reply.
        start = time.monotonic()
        for index, token in enumerate(tokens(compose_reply(messages)), start=1):
            time.sleep(max(0.0, start + index * self.delay - time.monotonic()))
            yield token
{%- endif %}
