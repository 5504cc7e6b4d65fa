"""Google's Gemini API, through the google-genai SDK.

https://ai.google.dev/gemini-api/docs/text-generation#streaming
"""
{%- if cookiecutter.consumer == "async" %}

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
{%- else %}

from collections.abc import Generator
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
    client_args: dict[str, Any] = {"event_hooks": {"response": [on_response]}}
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


# finishReason of a candidate and promptFeedback.blockReason; any other finishReason, the model
# ended on its own. https://ai.google.dev/api/generate-content#FinishReason
FINISH_REASONS = {
    "STOP": EndReason.FINISHED,
    "MAX_TOKENS": EndReason.LENGTH,  # thinking tokens included
    "CONTINUATION": EndReason.LENGTH,
    "SAFETY": EndReason.FILTERED,
    "RECITATION": EndReason.FILTERED,
    "LANGUAGE": EndReason.FILTERED,
    "BLOCKLIST": EndReason.FILTERED,
    "PROHIBITED_CONTENT": EndReason.FILTERED,
    "SPII": EndReason.FILTERED,
    "IMAGE_SAFETY": EndReason.FILTERED,
    "IMAGE_PROHIBITED_CONTENT": EndReason.FILTERED,
    "IMAGE_RECITATION": EndReason.FILTERED,
    "MODEL_ARMOR": EndReason.FILTERED,
    "ESCALATION": EndReason.FILTERED,
    "OTHER": EndReason.ERROR,
    "FINISH_REASON_UNSPECIFIED": EndReason.ERROR,
    "MALFORMED_FUNCTION_CALL": EndReason.ERROR,
    "UNEXPECTED_TOOL_CALL": EndReason.ERROR,
    "TOO_MANY_TOOL_CALLS": EndReason.ERROR,
    "MALFORMED_RESPONSE": EndReason.ERROR,
    "MISSING_THOUGHT_SIGNATURE": EndReason.ERROR,
    "PUP_LIMITED_DISABLED": EndReason.ERROR,
    "IMAGE_OTHER": EndReason.ERROR,
    "NO_IMAGE": EndReason.ERROR,
}


def name_of(value: Any) -> str | None:
    """An enum field's name as the API sends it, whether the SDK parsed it or kept the string."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def read_chunk(chunk: types.GenerateContentResponse) -> tuple[str, str | None, str | None]:
    """The text a chunk adds to the reply, its finishReason, and the prompt's blockReason.

    Thought parts, function calls, chunks without candidates or content (usage metadata) add no
    text.
    """
    feedback = chunk.prompt_feedback
    blocked = name_of(feedback.block_reason) if feedback else None
    if not chunk.candidates:
        return "", None, blocked
    candidate = chunk.candidates[0]
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    text = "".join(p.text for p in parts if isinstance(p.text, str) and not p.thought)
    return text, name_of(candidate.finish_reason), blocked


class Ending:
    """What the chunks said about how the reply ends."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.block_reason: str | None = None
        self.wrote_text = False

    def note(self, chunk: types.GenerateContentResponse) -> str:
        text, finish_reason, block_reason = read_chunk(chunk)
        self.finish_reason = finish_reason or self.finish_reason
        self.block_reason = block_reason or self.block_reason
        self.wrote_text = self.wrote_text or bool(text)
        return text

    def check(self) -> None:
        detail = f"finishReason={self.finish_reason!r} blockReason={self.block_reason!r}"
        if self.block_reason:
            check_end(EndReason.BLOCKED, wrote_text=self.wrote_text, detail=detail)
        if self.finish_reason is None:
            check_end(None, wrote_text=self.wrote_text, detail=detail)
        reason = FINISH_REASONS.get(self.finish_reason, EndReason.FINISHED)
        check_end(reason, wrote_text=self.wrote_text, detail=detail)


def provider_error(exc: Exception, api_key: str) -> ProviderError:
    """What to tell the user about an error from the SDK or its HTTP client.

    An error object in the stream (sent with HTTP 200) is raised by the SDK as an APIError.
    """
    detail = describe(exc, api_key)
    if isinstance(exc, errors.APIError) and "API_KEY_INVALID" in str(exc.details):
        return error_for_status(401, detail)  # Gemini answers a wrong key with 400
    if isinstance(exc, errors.APIError) and isinstance(exc.code, int) and exc.code >= 400:
        return error_for_status(exc.code, detail)
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError(TIMED_OUT, EndReason.ERROR, detail)
    if isinstance(exc, httpx2.ConnectError):
        return ProviderError(UNREACHABLE, EndReason.ERROR, detail)
    return ProviderError(CUT_OFF, EndReason.ERROR, detail)


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
        thinking_budget: int | None = None,
        max_retries: int = 1,
{%- if cookiecutter.consumer == "async" %}
        transport: httpx2.AsyncBaseTransport | None = None,
{%- else %}
        transport: httpx2.BaseTransport | None = None,
{%- endif %}
    ) -> None:
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.thinking_budget = thinking_budget
        self.api_key = api_key
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
            thinking_budget=settings.LLM_THINKING_BUDGET,
        )

    def config(self, system: str) -> types.GenerateContentConfig:
        # https://ai.google.dev/gemini-api/docs/thinking#set-budget
        thinking = (
            None
            if self.thinking_budget is None
            else types.ThinkingConfig(thinking_budget=self.thinking_budget)
        )
        return types.GenerateContentConfig(
            system_instruction=system,
            max_output_tokens=self.max_output_tokens,
            thinking_config=thinking,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
{%- if cookiecutter.consumer == "async" %}

    async def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        ending = Ending()
        try:
            chunks = await self.client.aio.models.generate_content_stream(
                model=self.model, contents=contents(messages), config=self.config(system)
            )
            async with aclosing(chunks):
                async for chunk in chunks:
                    if text := ending.note(chunk):
                        yield text
        except (errors.APIError, httpx2.TransportError, ValueError, TypeError) as exc:
            raise provider_error(exc, self.api_key) from exc
        finally:
            await close_responses()
        ending.check()
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> ReplyStream:
        return ReplyStream(lambda upstream: self.pieces(system, messages))

    def pieces(self, system: str, messages: list[ChatMessage]) -> Generator[str]:
        ending = Ending()
        try:
            chunks = self.client.models.generate_content_stream(
                model=self.model, contents=contents(messages), config=self.config(system)
            )
            with closing(chunks):
                for chunk in chunks:
                    if text := ending.note(chunk):
                        yield text
        except (errors.APIError, httpx2.TransportError, ValueError, TypeError) as exc:
            raise provider_error(exc, self.api_key) from exc
        ending.check()
{%- endif %}


def contents(messages: list[ChatMessage]) -> list[types.Content]:
    """The conversation as Gemini takes it, where the assistant's role is "model"."""
    return [
        types.Content(
            role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)]
        )
        for m in messages
    ]
