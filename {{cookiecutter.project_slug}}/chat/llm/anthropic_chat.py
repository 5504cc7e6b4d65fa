"""Anthropic's Messages API.

https://docs.anthropic.com/en/api/messages-streaming
"""
{%- if cookiecutter.consumer == "async" %}

import asyncio
from collections.abc import AsyncIterator
{%- else %}

from collections.abc import Iterator
{%- endif %}
from functools import lru_cache
from typing import Self

import anthropic
import httpx2
{%- if cookiecutter.consumer == "async" %}
from anthropic import AsyncAnthropic
{%- else %}
from anthropic import Anthropic
{%- endif %}
from anthropic.types import RawMessageStreamEvent
from django.conf import settings

from .base import CUT_OFF, TIMED_OUT, UNREACHABLE, ChatMessage, ProviderError, error_for_status
{%- if cookiecutter.consumer == "async" %}


def shared_client(
    api_key: str, base_url: str | None, timeout: float, max_retries: int
) -> AsyncAnthropic:
    """The client for these settings, shared by the instances made for each message.

    Building a client takes ~20 ms and each one keeps its own connection pool. Pooled connections
    belong to the event loop that opened them, so each loop gets its own client; outside a loop
    (when only the label is wanted) a client is built but not kept.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )
    return client_for_loop(loop, api_key, base_url, timeout, max_retries)


@lru_cache(maxsize=4)
def client_for_loop(
    loop: asyncio.AbstractEventLoop,
    api_key: str,
    base_url: str | None,
    timeout: float,
    max_retries: int,
) -> AsyncAnthropic:
    return AsyncAnthropic(
        api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
    )
{%- else %}


@lru_cache(maxsize=4)
def shared_client(
    api_key: str, base_url: str | None, timeout: float, max_retries: int
) -> Anthropic:
    """The client for these settings, shared by the instances made for each message.

    Building a client takes ~20 ms and each one keeps its own connection pool.
    """
    return Anthropic(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
{%- endif %}


def request_error(exc: anthropic.APIError) -> ProviderError:
    """What to tell the user when the request failed before the reply started."""
    if isinstance(exc, anthropic.APIStatusError):
        return error_for_status(exc.status_code)
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError(TIMED_OUT)
    return ProviderError(UNREACHABLE)


def reply_error(exc: Exception) -> ProviderError:
    """What to tell the user when the reply broke off after it started.

    An error event in the stream (such as overloaded_error) also ends up here.
    """
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return ProviderError(TIMED_OUT)
    return ProviderError(CUT_OFF)


def text_of(event: RawMessageStreamEvent) -> str:
    """The text an event adds to the reply: text deltas only, not thinking or tool input."""
    if event.type == "content_block_delta" and event.delta.type == "text_delta":
        return event.delta.text
    return ""


class AnthropicChat:
    is_demo = False

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        timeout: float,
        max_output_tokens: int,
        max_retries: int = 1,
{%- if cookiecutter.consumer == "async" %}
        http_client: httpx2.AsyncClient | None = None,
{%- else %}
        http_client: httpx2.Client | None = None,
{%- endif %}
    ) -> None:
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.label = f"{model} via Anthropic"
        if http_client is None:
            self.client = shared_client(api_key, base_url, timeout, max_retries)
        else:
{%- if cookiecutter.consumer == "async" %}
            self.client = AsyncAnthropic(
{%- else %}
            self.client = Anthropic(
{%- endif %}
                api_key=api_key,
                base_url=base_url,
                timeout=timeout,
                max_retries=max_retries,
                http_client=http_client,
            )

    @classmethod
    def from_settings(cls) -> Self:
        return cls(
            api_key=settings.LLM_API_KEY,
            base_url=settings.LLM_BASE_URL,
            model=settings.LLM_MODEL,
            timeout=settings.LLM_TIMEOUT,
            max_output_tokens=settings.LLM_MAX_OUTPUT_TOKENS,
        )

{%- if cookiecutter.consumer == "async" %}

    async def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        try:
            response = await self.client.messages.create(
                model=self.model,
                system=system,
                messages=[{"role": m.role, "content": m.content} for m in messages],
                max_tokens=self.max_output_tokens,
                stream=True,
            )
        except anthropic.APIError as exc:
            raise request_error(exc) from exc
        async with response:
            try:
                async for event in response:
                    if text := text_of(event):
                        yield text
            except (anthropic.APIError, httpx2.TransportError, ValueError) as exc:
                raise reply_error(exc) from exc
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> Iterator[str]:
        try:
            response = self.client.messages.create(
                model=self.model,
                system=system,
                messages=[{"role": m.role, "content": m.content} for m in messages],
                max_tokens=self.max_output_tokens,
                stream=True,
            )
        except anthropic.APIError as exc:
            raise request_error(exc) from exc
        with response:
            try:
                for event in response:
                    if text := text_of(event):
                        yield text
            except (anthropic.APIError, httpx2.TransportError, ValueError) as exc:
                raise reply_error(exc) from exc
{%- endif %}
