"""Google's Gemini API, through the google-genai SDK.

https://ai.google.dev/gemini-api/docs/text-generation#streaming
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
from typing import Any, Self
{%- if cookiecutter.consumer == "async" %}
from weakref import WeakKeyDictionary
{%- endif %}

import httpx2
from django.conf import settings
from google import genai
from google.genai import errors, types

from .base import CUT_OFF, TIMED_OUT, UNREACHABLE, ChatMessage, ProviderError, error_for_status
{%- if cookiecutter.consumer == "async" %}

# The SDK keeps a stream's HTTP response to itself, and a stream closed early leaves it open until
# garbage collection. So the responses each task opens are noted here, for stream() to close.
open_responses: WeakKeyDictionary[asyncio.Task, list[httpx2.Response]] = WeakKeyDictionary()


async def note_response(response: httpx2.Response) -> None:
    if task := asyncio.current_task():
        open_responses.setdefault(task, []).append(response)


async def close_responses() -> None:
    """Close the responses the current task opened."""
    if task := asyncio.current_task():
        for response in open_responses.pop(task, []):
            await response.aclose()
{%- endif %}


def make_client(
    api_key: str,
    base_url: str | None,
    timeout: float,
    max_retries: int,
{%- if cookiecutter.consumer == "async" %}
    transport: httpx2.AsyncBaseTransport | None = None,
{%- else %}
    transport: httpx2.BaseTransport | None = None,
{%- endif %}
) -> genai.Client:
{%- if cookiecutter.consumer == "async" %}
    client_args: dict[str, Any] = {"event_hooks": {"response": [note_response]}}
{%- else %}
    client_args: dict[str, Any] = {}
{%- endif %}
    if transport:  # without one, the SDK keeps a connection pool per event loop
        client_args["transport"] = transport
    return genai.Client(
        enterprise=False,
        api_key=api_key,
        http_options=types.HttpOptions(
            base_url=base_url,
            timeout=round(timeout * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1 + max_retries),
{%- if cookiecutter.consumer == "async" %}
            async_client_args=client_args,
{%- else %}
            client_args=client_args,
{%- endif %}
        ),
    )


@lru_cache(maxsize=4)
def shared_client(
    api_key: str, base_url: str | None, timeout: float, max_retries: int
) -> genai.Client:
    """The client for these settings, shared by the instances made for each message.

    Building a client takes ~45 ms and each one keeps its own connection pools.
    """
    return make_client(api_key, base_url, timeout, max_retries)


def provider_error(exc: Exception) -> ProviderError:
    """What to tell the user about an error from the SDK or its HTTP client."""
    if isinstance(exc, errors.APIError) and "API_KEY_INVALID" in str(exc.details):
        return error_for_status(401)  # Gemini answers a wrong key with 400
    if isinstance(exc, errors.APIError) and isinstance(exc.code, int) and exc.code >= 400:
        return error_for_status(exc.code)
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError(TIMED_OUT)
    if isinstance(exc, httpx2.ConnectError):
        return ProviderError(UNREACHABLE)
    return ProviderError(CUT_OFF)


class GeminiChat:
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
        transport: httpx2.AsyncBaseTransport | None = None,
{%- else %}
        transport: httpx2.BaseTransport | None = None,
{%- endif %}
    ) -> None:
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.label = f"{model} via Gemini"
        if transport is None:
            self.client = shared_client(api_key, base_url, timeout, max_retries)
        else:
            self.client = make_client(api_key, base_url, timeout, max_retries, transport)

    @classmethod
    def from_settings(cls) -> Self:
        return cls(
            api_key=settings.LLM_API_KEY,
            base_url=settings.LLM_BASE_URL,
            model=settings.LLM_MODEL,
            timeout=settings.LLM_TIMEOUT,
            max_output_tokens=settings.LLM_MAX_OUTPUT_TOKENS,
        )

    def config(self, system: str) -> types.GenerateContentConfig:
        return types.GenerateContentConfig(
            system_instruction=system,
            max_output_tokens=self.max_output_tokens,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
{%- if cookiecutter.consumer == "async" %}

    async def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        try:
            chunks = await self.client.aio.models.generate_content_stream(
                model=self.model, contents=contents(messages), config=self.config(system)
            )
            async with aclosing(chunks):
                async for chunk in chunks:
                    if text := chunk.text:
                        yield text
        except (errors.APIError, httpx2.TransportError, ValueError) as exc:
            raise provider_error(exc) from exc
        finally:
            await close_responses()
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> Iterator[str]:
        try:
            chunks = self.client.models.generate_content_stream(
                model=self.model, contents=contents(messages), config=self.config(system)
            )
            with closing(chunks):
                for chunk in chunks:
                    if text := chunk.text:
                        yield text
        except (errors.APIError, httpx2.TransportError, ValueError) as exc:
            raise provider_error(exc) from exc
{%- endif %}


def contents(messages: list[ChatMessage]) -> list[types.Content]:
    """The conversation as Gemini takes it, where the assistant's role is "model"."""
    return [
        types.Content(
            role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)]
        )
        for m in messages
    ]
