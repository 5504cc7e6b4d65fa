"""A model served by Ollama, on this machine or another (set OLLAMA_HOST).

https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
"""
{%- if cookiecutter.consumer == "async" %}

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
{%- else %}

import os
from collections.abc import Generator
from contextlib import closing
{%- endif %}
from functools import lru_cache
from typing import Any, Self

import httpx
import ollama
from django.conf import settings

from .base import (
    CUT_OFF,
    TIMED_OUT,
    UNREACHABLE,
    ChatMessage,
    EndReason,
    ProviderError,
{%- if cookiecutter.consumer == "sync" %}
    ReplyStream,
{%- endif %}
    check_end,
    describe,
    error_for_status,
{%- if cookiecutter.consumer == "sync" %}
    on_response,
{%- endif %}
)
{%- if cookiecutter.consumer == "async" %}


def shared_client(host: str | None, timeout: float) -> ollama.AsyncClient:
    """The client for these settings, shared by the instances made for each message.

    Building a client takes ~20 ms and each one keeps its own connection pool. Pooled connections
    belong to the event loop that opened them, so each loop gets its own client; outside a loop
    (when only the label is wanted) a client is built but not kept.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return ollama.AsyncClient(host=host, timeout=timeout)
    return client_for_loop(loop, host, timeout)


@lru_cache(maxsize=4)
def client_for_loop(
    loop: asyncio.AbstractEventLoop, host: str | None, timeout: float
) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=host, timeout=timeout)
{%- else %}


@lru_cache(maxsize=4)
def shared_client(host: str | None, timeout: float) -> ollama.Client:
    """The client for these settings, shared by the instances made for each message.

    Building a client takes ~20 ms and each one keeps its own connection pool.
    """
    return ollama.Client(host=host, timeout=timeout, event_hooks=EVENT_HOOKS)


# Ollama's client keeps its responses to itself: they are noted for ReplyStream.cancel().
EVENT_HOOKS = {"response": [on_response]}
{%- endif %}


# done_reason of the last line (done: true); a line with "error" is raised by the SDK.
# https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
DONE_REASONS = {
    "stop": EndReason.FINISHED,
    "length": EndReason.LENGTH,  # num_predict, thinking included
    "load": EndReason.FINISHED,  # the model was only loaded: no text, so EMPTY
    "unload": EndReason.FINISHED,
}


def read_part(part: Any) -> tuple[str, bool, str | None]:
    """The text a line adds to the reply, whether it is the last line, and its done_reason.

    Thinking (message.thinking) and tool calls add no text.
    """
    text = getattr(getattr(part, "message", None), "content", None)
    return (
        text if isinstance(text, str) else "",
        bool(getattr(part, "done", False)),
        getattr(part, "done_reason", None),
    )


class Ending:
    """What the lines said about how the reply ends."""

    def __init__(self) -> None:
        self.done = False
        self.done_reason: str | None = None
        self.wrote_text = False

    def note(self, part: Any) -> str:
        text, done, done_reason = read_part(part)
        self.done = self.done or done
        self.done_reason = done_reason or self.done_reason
        self.wrote_text = self.wrote_text or bool(text)
        return text

    def check(self) -> None:
        reason = None  # no last line: cut off
        if self.done:  # servers before done_reason existed end with done alone
            reason = DONE_REASONS.get(self.done_reason or "stop", EndReason.FINISHED)
        check_end(reason, wrote_text=self.wrote_text, detail=f"done_reason={self.done_reason!r}")


def provider_error(exc: Exception) -> ProviderError:
    """What to tell the user about an error from the SDK or its HTTP client."""
    detail = describe(exc, os.environ.get("OLLAMA_API_KEY"))  # the SDK sends it, if set
    if isinstance(exc, ollama.ResponseError) and exc.status_code >= 400:
        return error_for_status(exc.status_code, detail)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(TIMED_OUT, EndReason.ERROR, detail)
    if isinstance(exc, httpx.ConnectError):
        return ProviderError(UNREACHABLE, EndReason.ERROR, detail)
    # A dropped connection, a malformed line or an error line in the middle of the reply.
    return ProviderError(CUT_OFF, EndReason.ERROR, detail)


class OllamaChat:
    is_demo = False

    def __init__(
        self,
        *,
        base_url: str | None,
        model: str,
        timeout: float,
        max_output_tokens: int,
        think: bool | str | None = None,
{%- if cookiecutter.consumer == "async" %}
        transport: httpx.AsyncBaseTransport | None = None,
{%- else %}
        transport: httpx.BaseTransport | None = None,
{%- endif %}
    ) -> None:
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.think = think
        self.label = f"{model} via Ollama"
        if transport is None:
            self.client = shared_client(base_url, timeout)
        else:
{%- if cookiecutter.consumer == "async" %}
            self.client = ollama.AsyncClient(host=base_url, timeout=timeout, transport=transport)
{%- else %}
            self.client = ollama.Client(
                host=base_url, timeout=timeout, transport=transport, event_hooks=EVENT_HOOKS
            )
{%- endif %}

    @classmethod
    def from_settings(cls) -> Self:
        return cls(
            base_url=settings.LLM_BASE_URL,
            model=settings.LLM_MODEL,
            timeout=settings.LLM_TIMEOUT,
            max_output_tokens=settings.LLM_MAX_OUTPUT_TOKENS,
            think=settings.LLM_THINK,
        )

    def request(self, system: str, messages: list[ChatMessage]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                *({"role": m.role, "content": m.content} for m in messages),
            ],
            "options": {"num_predict": self.max_output_tokens},
            "think": self.think,  # None: the model's own default
            "stream": True,
        }
{%- if cookiecutter.consumer == "async" %}

    async def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        ending = Ending()
        try:
            parts = await self.client.chat(**self.request(system, messages))
            async with aclosing(parts):
                async for part in parts:
                    if text := ending.note(part):
                        yield text
        except (ollama.ResponseError, httpx.TransportError, ValueError, TypeError) as exc:
            raise provider_error(exc) from exc
        ending.check()
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> ReplyStream:
        return ReplyStream(lambda upstream: self.pieces(system, messages))

    def pieces(self, system: str, messages: list[ChatMessage]) -> Generator[str]:
        ending = Ending()
        try:
            parts = self.client.chat(**self.request(system, messages))
            with closing(parts):
                for part in parts:
                    if text := ending.note(part):
                        yield text
        except (ollama.ResponseError, httpx.TransportError, ValueError, TypeError) as exc:
            raise provider_error(exc) from exc
        ending.check()
{%- endif %}
