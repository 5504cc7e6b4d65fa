"""Anthropic's Messages API.

https://docs.anthropic.com/en/api/messages-streaming
"""
{%- if cookiecutter.consumer == "async" %}

import asyncio
from collections.abc import AsyncIterator
{%- else %}

from collections.abc import Generator
{%- endif %}
from functools import lru_cache
from typing import Any, Self

import anthropic
import httpx2
{%- if cookiecutter.consumer == "async" %}
from anthropic import AsyncAnthropic
{%- else %}
from anthropic import Anthropic
{%- endif %}
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
)
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


# stop_reason of a message; anything else the model ended on its own.
# https://docs.anthropic.com/en/api/handling-stop-reasons
STOP_REASONS = {
    "end_turn": EndReason.FINISHED,
    "stop_sequence": EndReason.FINISHED,
    "tool_use": EndReason.FINISHED,  # no tools are offered: what text came is the reply
    "max_tokens": EndReason.LENGTH,  # thinking tokens included
    "model_context_window_exceeded": EndReason.LENGTH,
    "refusal": EndReason.FILTERED,  # Claude's streaming classifiers stopped the reply
    "pause_turn": EndReason.ERROR,  # a paused server-tool turn: the reply is not whole
}


def read_event(event: Any) -> tuple[str, str | None]:
    """The text an event adds to the reply, and the stop_reason it carries.

    Only text deltas are text: thinking, signature, citation and tool-input deltas, block starts
    and stops, and pings add nothing. (Error events are raised by the SDK.)
    """
    kind = getattr(event, "type", None)
    delta = getattr(event, "delta", None)
    if kind == "content_block_delta" and getattr(delta, "type", None) == "text_delta":
        text = getattr(delta, "text", None)
        return (text if isinstance(text, str) else ""), None
    if kind == "message_delta":
        return "", getattr(delta, "stop_reason", None)
    return "", None


def end_of(stop_reason: str | None) -> EndReason | None:
    if stop_reason is None:
        return None  # the stream ended without one: cut off
    return STOP_REASONS.get(stop_reason, EndReason.FINISHED)


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
        thinking_budget: int | None = 0,
        max_retries: int = 1,
{%- if cookiecutter.consumer == "async" %}
        http_client: httpx2.AsyncClient | None = None,
{%- else %}
        http_client: httpx2.Client | None = None,
{%- endif %}
    ) -> None:
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.thinking_budget = thinking_budget
        self.api_key = api_key
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
            thinking_budget=settings.LLM_THINKING_BUDGET,
        )

    def request(self, system: str, messages: list[ChatMessage]) -> dict[str, Any]:
        options: dict[str, Any] = {
            "model": self.model,
            "system": system,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": self.max_output_tokens,
            "stream": True,
        }
        # https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking
        if self.thinking_budget == 0:
            options["thinking"] = {"type": "disabled"}
        elif self.thinking_budget:  # at least 1024, and less than max_tokens
            options["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_budget}
        return options

    def request_error(self, exc: anthropic.APIError) -> ProviderError:
        """What to tell the user when the request failed before the reply started."""
        detail = describe(exc, self.api_key)
        if isinstance(exc, anthropic.APIStatusError):
            return error_for_status(exc.status_code, detail)
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderError(TIMED_OUT, EndReason.ERROR, detail)
        return ProviderError(UNREACHABLE, EndReason.ERROR, detail)

    def reply_error(self, exc: Exception) -> ProviderError:
        """What to tell the user when the reply broke off after it started.

        An error event in the stream (such as overloaded_error, sent with HTTP 200) ends up here.
        """
        detail = describe(exc, self.api_key)
        if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
            return ProviderError(TIMED_OUT, EndReason.ERROR, detail)
        return ProviderError(CUT_OFF, EndReason.ERROR, detail)
{%- if cookiecutter.consumer == "async" %}

    async def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        try:
            response = await self.client.messages.create(**self.request(system, messages))
        except anthropic.APIError as exc:
            raise self.request_error(exc) from exc
        stop_reason, wrote_text = None, False
        async with response:
            try:
                async for event in response:
                    text, stop = read_event(event)
                    stop_reason = stop or stop_reason
                    if text:
                        wrote_text = True
                        yield text
            except (anthropic.APIError, httpx2.TransportError, ValueError, TypeError) as exc:
                raise self.reply_error(exc) from exc
        check_end(end_of(stop_reason), wrote_text=wrote_text, detail=f"stop_reason={stop_reason!r}")
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> ReplyStream:
        return ReplyStream(lambda upstream: self.pieces(system, messages, upstream))

    def pieces(
        self, system: str, messages: list[ChatMessage], upstream: ReplyStream
    ) -> Generator[str]:
        try:
            response = self.client.messages.create(**self.request(system, messages))
        except anthropic.APIError as exc:
            raise self.request_error(exc) from exc
        upstream.opened(response.response)
        stop_reason, wrote_text = None, False
        with response:
            try:
                for event in response:
                    text, stop = read_event(event)
                    stop_reason = stop or stop_reason
                    if text:
                        wrote_text = True
                        yield text
            except (anthropic.APIError, httpx2.TransportError, ValueError, TypeError) as exc:
                raise self.reply_error(exc) from exc
        check_end(end_of(stop_reason), wrote_text=wrote_text, detail=f"stop_reason={stop_reason!r}")
{%- endif %}
