"""What the chat needs from a model, whichever provider serves it."""

from collections.abc import {% if cookiecutter.consumer == "async" %}AsyncIterator{% else %}Iterator{% endif %}
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str


class ChatModel(Protocol):
    label: str
    is_demo: bool

{%- if cookiecutter.consumer == "async" %}

    def stream(self, system: str, messages: list[ChatMessage]) -> AsyncIterator[str]:
        """Yield the reply piece by piece; closing the iterator closes the upstream stream."""
        ...
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]) -> Iterator[str]:
        """Yield the reply piece by piece; closing the iterator closes the upstream stream."""
        ...
{%- endif %}


class ProviderError(Exception):
    """The provider failed. The message is shown to the user, so it never holds a secret."""


def error_for_status(status: int) -> ProviderError:
    if status in (401, 403):
        return ProviderError("The model provider rejected the API key. Check it in .env.")
    if status == 429:
        return ProviderError("The model provider is rate limiting us. Wait a moment, then retry.")
    if status == 404:
        return ProviderError("The model provider does not know that model. Check its name in .env.")
    if status >= 500:
        return ProviderError("The model provider had a server error. Retry in a moment.")
    return ProviderError(f"The model provider refused the request (HTTP {status}).")


TIMED_OUT = "The model provider did not answer in time. Retry in a moment."
UNREACHABLE = "Could not reach the model provider. Check the base URL and your network."
CUT_OFF = "The model provider broke off the reply. Retry to get a full answer."
