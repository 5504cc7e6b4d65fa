"""OpenAI, or any server that speaks its Chat Completions API (set OPENAI_BASE_URL).

https://platform.openai.com/docs/api-reference/chat-streaming
"""
{%- if cookiecutter.consumer == "async" %}

import asyncio
from collections.abc import AsyncIterator
{%- else %}

from collections.abc import Generator
{%- endif %}
from functools import lru_cache
from typing import Any, Self

import httpx2
import openai
from django.conf import settings
{%- if cookiecutter.consumer == "async" %}
from openai import AsyncOpenAI
{%- else %}
from openai import OpenAI
{%- endif %}

from .base import (
    BLOCKED,
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
)
{%- if cookiecutter.consumer == "async" %}


def shared_client(
    api_key: str, base_url: str | None, timeout: float, max_retries: int
) -> AsyncOpenAI:
    """The client for these settings, shared by the instances made for each message.

    Building a client takes ~20 ms and each one keeps its own connection pool. Pooled connections
    belong to the event loop that opened them, so each loop gets its own client; outside a loop
    (when only the label is wanted) a client is built but not kept.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return AsyncOpenAI(
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
) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
{%- else %}


@lru_cache(maxsize=4)
def shared_client(api_key: str, base_url: str | None, timeout: float, max_retries: int) -> OpenAI:
    """The client for these settings, shared by the instances made for each message.

    Building a client takes ~20 ms and each one keeps its own connection pool.
    """
    return OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
{%- endif %}


# finish_reason of a Chat Completions choice; anything else the model ended on its own.
# https://platform.openai.com/docs/api-reference/chat-streaming/streaming#chat-streaming/streaming-choices-finish_reason
FINISH_REASONS = {
    "stop": EndReason.FINISHED,
    "length": EndReason.LENGTH,  # max_completion_tokens, reasoning tokens included
    "content_filter": EndReason.FILTERED,
    "tool_calls": EndReason.FINISHED,  # no tools are offered: what text came is the reply
    "function_call": EndReason.FINISHED,
    "error": EndReason.ERROR,  # sent by some compatible gateways (OpenRouter)
}


def read_chunk(chunk: Any) -> tuple[str, str | None]:
    """The text a chunk adds to the reply, and its finish_reason.

    Compatible servers send chunks without choices (usage, Azure's prompt_filter_results), with a
    null or missing delta (content-filter annotations), role-only deltas and reasoning deltas
    (reasoning_content): none of them adds text, none is an error.
    """
    for choice in getattr(chunk, "choices", None) or ():
        if getattr(choice, "index", 0) != 0:
            continue
        text = getattr(getattr(choice, "delta", None), "content", None)
        return (text if isinstance(text, str) else ""), getattr(choice, "finish_reason", None)
    return "", None


def end_of(finish_reason: str | None) -> EndReason | None:
    if finish_reason is None:
        return None  # the stream ended without one: cut off
    return FINISH_REASONS.get(finish_reason, EndReason.FINISHED)


class OpenAIChat:
    is_demo = False

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        timeout: float,
        max_output_tokens: int,
        reasoning_effort: str = "",
        max_retries: int = 1,
{%- if cookiecutter.consumer == "async" %}
        http_client: httpx2.AsyncClient | None = None,
{%- else %}
        http_client: httpx2.Client | None = None,
{%- endif %}
    ) -> None:
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.reasoning_effort = reasoning_effort
        self.api_key = api_key
        self.label = f"{model} via OpenAI"
        if http_client is None:
            self.client = shared_client(api_key, base_url, timeout, max_retries)
        else:
{%- if cookiecutter.consumer == "async" %}
            self.client = AsyncOpenAI(
{%- else %}
            self.client = OpenAI(
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
            reasoning_effort=settings.LLM_REASONING_EFFORT,
        )

    def request(self, system: str, messages: list[ChatMessage]) -> dict[str, Any]:
        options: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                *({"role": m.role, "content": m.content} for m in messages),
            ],
            "max_completion_tokens": self.max_output_tokens,
            "stream": True,
        }
        if self.reasoning_effort:  # reasoning models only; other models reject the field
            options["reasoning_effort"] = self.reasoning_effort
        return options

    def request_error(self, exc: openai.APIError) -> ProviderError:
        """What to tell the user when the request failed before the reply started."""
        detail = describe(exc, self.api_key)
        if isinstance(exc, openai.APIStatusError):
            if exc.code == "content_filter":  # Azure OpenAI's filter on the prompt
                return ProviderError(BLOCKED, EndReason.BLOCKED, detail)
            return error_for_status(exc.status_code, detail)
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(TIMED_OUT, EndReason.ERROR, detail)
        return ProviderError(UNREACHABLE, EndReason.ERROR, detail)

    def reply_error(self, exc: Exception) -> ProviderError:
        """What to tell the user when the reply broke off after it started.

        An error object in the stream (sent with HTTP 200 by OpenAI and by gateways) ends up here.
        """
        detail = describe(exc, self.api_key)
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(TIMED_OUT, EndReason.ERROR, detail)
        return ProviderError(CUT_OFF, EndReason.ERROR, detail)
{%- if cookiecutter.consumer == "async" %}

    async def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        try:
            response = await self.client.chat.completions.create(**self.request(system, messages))
        except openai.APIError as exc:
            raise self.request_error(exc) from exc
        finish_reason, wrote_text = None, False
        async with response:
            try:
                async for chunk in response:
                    text, finish = read_chunk(chunk)
                    finish_reason = finish or finish_reason
                    if text:
                        wrote_text = True
                        yield text
            except (openai.APIError, ValueError, TypeError) as exc:
                raise self.reply_error(exc) from exc
        check_end(
            end_of(finish_reason), wrote_text=wrote_text, detail=f"finish_reason={finish_reason!r}"
        )
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> ReplyStream:
        return ReplyStream(lambda upstream: self.pieces(system, messages, upstream))

    def pieces(
        self, system: str, messages: list[ChatMessage], upstream: ReplyStream
    ) -> Generator[str]:
        try:
            response = self.client.chat.completions.create(**self.request(system, messages))
        except openai.APIError as exc:
            raise self.request_error(exc) from exc
        upstream.opened(response.response)
        finish_reason, wrote_text = None, False
        with response:
            try:
                for chunk in response:
                    text, finish = read_chunk(chunk)
                    finish_reason = finish or finish_reason
                    if text:
                        wrote_text = True
                        yield text
            except (openai.APIError, ValueError, TypeError) as exc:
                raise self.reply_error(exc) from exc
        check_end(
            end_of(finish_reason), wrote_text=wrote_text, detail=f"finish_reason={finish_reason!r}"
        )
{%- endif %}
