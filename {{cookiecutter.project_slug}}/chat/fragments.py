"""The HTML a consumer sends: out-of-band swaps rendered from templates, text always escaped."""

from collections.abc import Callable

from django.template.loader import get_template, render_to_string
from django.utils.html import escape

from .models import Conversation, Message

chunk_template = get_template("chat/oob/chunk.html")
MARKER = "\x00"  # stands in for the text while the template renders once


def turn(question: Message | None, reply: Message) -> str:
    """The user's bubble (none on a retry), the empty reply, and the Stop button."""
    return render_to_string("chat/oob/turn.html", {"question": question, "reply": reply})


def chunk_for(reply: Message) -> Callable[[str], str]:
    """Text appended to a streaming reply: frame after frame, the hot path.

    The template is rendered once per reply around a marker; each frame then only escapes
    its text into place, as the template itself would.
    """
    before, after = chunk_template.render({"reply": reply, "text": MARKER}).split(MARKER)
    return lambda text: before + escape(text) + after


def snapshot(reply: Message, text: str) -> str:
    """The whole reply so far, for connections that did not ask for it."""
    return render_to_string("chat/oob/snapshot.html", {"reply": reply, "text": text})


def finished(reply: Message) -> str:
    """The reply re-rendered as Markdown with its final status; Stop hidden again."""
    return render_to_string("chat/oob/finished.html", {"reply": reply})


def title(conversation: Conversation) -> str:
    return render_to_string("chat/oob/title.html", {"conversation": conversation})


def error(text: str) -> str:
    return render_to_string("chat/oob/error.html", {"text": text})


def live_status(up: bool) -> str:
    """Whether this page's updates reach the conversation's other tabs (one slot, replaced)."""
    return render_to_string("chat/oob/live_status.html", {"up": up})
