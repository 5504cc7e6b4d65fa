from django.conf import settings

{% if cookiecutter.llm_provider == "anthropic" -%}
from .anthropic_chat import AnthropicChat
{% endif -%}
from .base import ChatMessage, ChatModel, EndReason, IncompleteReply, ProviderError
from .demo import DemoModel
{%- if cookiecutter.llm_provider == "gemini" %}
from .gemini_chat import GeminiChat
{%- elif cookiecutter.llm_provider == "ollama" %}
from .ollama_chat import OllamaChat
{%- elif cookiecutter.llm_provider == "openai" %}
from .openai_chat import OpenAIChat
{%- endif %}

__all__ = [
    "ChatMessage",
    "ChatModel",
    "EndReason",
    "IncompleteReply",
    "ProviderError",
    "get_chat_model",
]


def get_chat_model() -> ChatModel:
    """The configured provider, or the offline demo model when none is configured."""
{%- if cookiecutter.llm_provider == "openai" %}
    if settings.LLM_API_KEY:
        return OpenAIChat.from_settings()
{%- elif cookiecutter.llm_provider == "anthropic" %}
    if settings.LLM_API_KEY:
        return AnthropicChat.from_settings()
{%- elif cookiecutter.llm_provider == "gemini" %}
    if settings.LLM_API_KEY:
        return GeminiChat.from_settings()
{%- elif cookiecutter.llm_provider == "ollama" %}
    if settings.LLM_BASE_URL:
        return OllamaChat.from_settings()
{%- endif %}
    return DemoModel(delay=settings.DEMO_MODEL_DELAY)
