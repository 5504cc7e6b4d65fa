from django import template
from django.utils.safestring import SafeString, mark_safe

from chat.markdown import render_markdown

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    """Model output as HTML: markdown-it with raw HTML off, then nh3's allow-list."""
    return mark_safe(render_markdown(text))  # noqa: S308 - sanitised by nh3
