"""What the chat needs from a model, whichever provider serves it.

The provider module reads its stream's own end signal (a finish or stop reason, error events
inside the stream, a blocked prompt) and maps it to one EndReason. A stream that ends any other
way than FINISHED with text raises a ProviderError carrying that reason, after the text it
yielded.
"""

{% if cookiecutter.consumer == "async" -%}
from collections.abc import AsyncIterator
{%- else -%}
import socket
import threading
from collections.abc import Callable, Generator
from contextlib import suppress
{%- endif %}
from dataclasses import dataclass
from enum import StrEnum
from typing import {% if cookiecutter.consumer == "sync" %}Any, {% endif %}Literal, Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str


class ChatModel(Protocol):
    label: str
    is_demo: bool
{%- if cookiecutter.consumer == "async" %}

    def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        """Yield the reply piece by piece; closing the iterator closes the upstream stream.

        Raises ProviderError (after the pieces it yielded) unless the reply ended FINISHED.
        """
        ...
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> "ReplyStream":
        """Yield the reply piece by piece; closing the iterator closes the upstream stream.

        Raises ProviderError (after the pieces it yielded) unless the reply ended FINISHED.
        """
        ...
{%- endif %}


class EndReason(StrEnum):
    """How a reply's stream ended, in one vocabulary for every provider."""

    FINISHED = "finished"  # the model ended its turn
    LENGTH = "length"  # cut at the output-token limit
    FILTERED = "filtered"  # the reply was refused or filtered (safety, recitation, policy)
    BLOCKED = "blocked"  # the prompt was blocked before the model answered
    ERROR = "error"  # the provider failed: HTTP error, dropped stream, error event in a 200 stream
    EMPTY = "empty"  # the stream finished without any text


class ProviderError(Exception):
    """The provider failed, or ended the reply short of a whole answer.

    str() is shown to the user: it names no setting and holds no secret. `reason` says how the
    reply ended; `detail` is for the operator's log (the provider's own reason or error text,
    with the API key removed).
    """

    def __init__(self, message: str, reason: EndReason = EndReason.ERROR, detail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail


class IncompleteReply(ProviderError):
    """The stream ended without an HTTP error, but the provider's end signal says the reply is
    not a whole answer (cut at the length limit, filtered, blocked, empty)."""


def error_for_status(status: int, detail: str = "") -> ProviderError:
    if status in (401, 403):
        message = "The model provider did not accept this site's credentials."
    elif status == 429:
        message = "The model provider is rate limiting us. Wait a moment, then retry."
    elif status == 404:
        message = "The model provider does not offer the model this site asks for."
    elif status >= 500:
        message = "The model provider had a server error. Retry in a moment."
    else:
        message = f"The model provider refused the request (HTTP {status})."
    return ProviderError(message, EndReason.ERROR, detail)


TIMED_OUT = "The model provider did not answer in time. Retry in a moment."
UNREACHABLE = "Could not reach the model provider. Retry in a moment."
CUT_OFF = "The model provider broke off the reply. Retry to get a full answer."
CUT_AT_LENGTH = "The reply reached the model's length limit and was cut off."
NO_TEXT_AT_LENGTH = "The model used up its length limit before it wrote any text."
FILTERED = "The model provider's safety filter stopped this reply."
BLOCKED = "The model provider's safety filter blocked this message. Try rephrasing it."
EMPTY = "The model returned no text. Retry, or rephrase your message."

MESSAGES = {
    EndReason.LENGTH: CUT_AT_LENGTH,
    EndReason.FILTERED: FILTERED,
    EndReason.BLOCKED: BLOCKED,
    EndReason.ERROR: CUT_OFF,
    EndReason.EMPTY: EMPTY,
}


def check_end(reason: EndReason | None, *, wrote_text: bool, detail: str) -> None:
    """Raise IncompleteReply unless the stream FINISHED with text.

    reason is None when the stream ended without the provider's end signal: the reply was cut off.
    """
    if reason is None:
        reason = EndReason.ERROR
    if reason is EndReason.FINISHED:
        if wrote_text:
            return
        reason = EndReason.EMPTY
    if reason is EndReason.LENGTH and not wrote_text:
        raise IncompleteReply(NO_TEXT_AT_LENGTH, reason, detail)
    raise IncompleteReply(MESSAGES[reason], reason, detail)


def describe(exc: BaseException, secret: str | None) -> str:
    """The operator's account of an SDK error, without the API key (some providers echo it)."""
    text = f"{type(exc).__name__}: {exc}"
    return text.replace(secret, "[API key]") if secret else text
{%- if cookiecutter.consumer == "sync" %}


class ReplyStream:
    """A reply read piece by piece in one thread, which another thread can cut off at once.

    The reading thread iterates, then close()s it (which closes the HTTP response). cancel() is
    safe from any thread: it shuts down the sockets of the responses this reply opened, so a read
    blocked inside the SDK returns at once and the provider sees the connection close. (Closing an
    httpx response from another thread does not wake a thread blocked in recv(); shutdown() does.)
    A read still waiting for the response headers is not reached: LLM_TIMEOUT bounds it.
    """

    def __init__(self, pieces: Callable[["ReplyStream"], Generator[str]]) -> None:
        self.lock = threading.Lock()
        self.responses: list[Any] = []
        self.cancelled = False
        self.pieces = pieces(self)

    def __iter__(self) -> "ReplyStream":
        return self

    def __next__(self) -> str:
        if self.cancelled:
            raise StopIteration
        current.stream = self  # for on_response: requests are made while the next piece is read
        try:
            return next(self.pieces)
        finally:
            current.stream = None

    def close(self) -> None:
        """Close the upstream stream; from the reading thread."""
        self.pieces.close()

    def cancel(self) -> None:
        """End the reply now, from any thread."""
        with self.lock:
            self.cancelled = True
            responses = list(self.responses)
        for response in responses:
            shut_down(response)

    def opened(self, response: Any) -> None:
        """Note an HTTP response (httpx or httpx2) this reply reads from."""
        with self.lock:
            self.responses.append(response)
            if not self.cancelled:
                return
        shut_down(response)


current = threading.local()  # the ReplyStream whose request this thread is making


def on_response(response: Any) -> None:
    """An httpx event hook (for SDKs that keep their responses to themselves): note the response
    for the ReplyStream whose next piece this thread is reading."""
    if stream := getattr(current, "stream", None):
        stream.opened(response)


def shut_down(response: Any) -> None:
    """Shut down the socket under a response, waking any thread blocked reading it."""
    if response.is_closed:
        return  # read to the end: its connection may be serving another request now
    network_stream = response.extensions.get("network_stream")
    sock = network_stream.get_extra_info("socket") if network_stream else None
    if isinstance(sock, socket.socket):
        with suppress(OSError):  # already closed
            # socket.socket's own method: SSLSocket.shutdown would also drop the TLS state
            # under the reading thread.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class StopSignal(threading.Event):
    """Stop for a reply written in another thread: set() also cancels the stream it watches."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[Any] = []
        self.lock = threading.Lock()

    def watch(self, stream: Any) -> None:
        """Cancel this stream when the signal is set (at once if it already is)."""
        if not callable(cancel := getattr(stream, "cancel", None)):
            return  # a plain iterator: the reply checks the signal between pieces
        with self.lock:
            self.streams.append(stream)
            already = self.is_set()
        if already:
            cancel()

    def set(self) -> None:
        super().set()
        with self.lock:
            streams = list(self.streams)
        for stream in streams:
            stream.cancel()
{%- endif %}
