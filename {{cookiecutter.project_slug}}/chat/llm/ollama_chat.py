"""A model served by Ollama, on this machine or another (set OLLAMA_HOST).

https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
"""
{%- if cookiecutter.consumer == "async" %}

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
{%- else %}

from collections.abc import Iterator
from contextlib import closing
{%- endif %}
from functools import lru_cache
from typing import Self

import httpx
import ollama
from django.conf import settings

from .base import CUT_OFF, TIMED_OUT, UNREACHABLE, ChatMessage, ProviderError, error_for_status
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
    return ollama.Client(host=host, timeout=timeout)
{%- endif %}


def provider_error(exc: Exception) -> ProviderError:
    """What to tell the user about an error from the SDK or its HTTP client."""
    if isinstance(exc, ollama.ResponseError) and exc.status_code >= 400:
        return error_for_status(exc.status_code)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(TIMED_OUT)
    if isinstance(exc, httpx.ConnectError):
        return ProviderError(UNREACHABLE)
    # A dropped connection, a malformed line or an error line in the middle of the reply.
    return ProviderError(CUT_OFF)


class OllamaChat:
    is_demo = False

    def __init__(
        self,
        *,
        base_url: str | None,
        model: str,
        timeout: float,
        max_output_tokens: int,
{%- if cookiecutter.consumer == "async" %}
        transport: httpx.AsyncBaseTransport | None = None,
{%- else %}
        transport: httpx.BaseTransport | None = None,
{%- endif %}
    ) -> None:
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.label = f"{model} via Ollama"
        if transport is None:
            self.client = shared_client(base_url, timeout)
        else:
{%- if cookiecutter.consumer == "async" %}
            self.client = ollama.AsyncClient(host=base_url, timeout=timeout, transport=transport)
{%- else %}
            self.client = ollama.Client(host=base_url, timeout=timeout, transport=transport)
{%- endif %}

    @classmethod
    def from_settings(cls) -> Self:
        return cls(
            base_url=settings.LLM_BASE_URL,
            model=settings.LLM_MODEL,
            timeout=settings.LLM_TIMEOUT,
            max_output_tokens=settings.LLM_MAX_OUTPUT_TOKENS,
        )
{%- if cookiecutter.consumer == "async" %}

    async def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        try:
            parts = await self.client.chat(
                model=self.model,
                messages=[
                    {"role": "system", "content": system},
                    *({"role": m.role, "content": m.content} for m in messages),
                ],
                options={"num_predict": self.max_output_tokens},
                stream=True,
            )
            async with aclosing(parts):
                async for part in parts:
                    if text := part.message.content:
                        yield text
        except (ollama.ResponseError, httpx.TransportError, ValueError) as exc:
            raise provider_error(exc) from exc
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> Iterator[str]:
        try:
            parts = self.client.chat(
                model=self.model,
                messages=[
                    {"role": "system", "content": system},
                    *({"role": m.role, "content": m.content} for m in messages),
                ],
                options={"num_predict": self.max_output_tokens},
                stream=True,
            )
            with closing(parts):
                for part in parts:
                    if text := part.message.content:
                        yield text
        except (ollama.ResponseError, httpx.TransportError, ValueError) as exc:
            raise provider_error(exc) from exc
{%- endif %}
