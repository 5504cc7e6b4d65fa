"""The HTML a consumer sends: out-of-band swaps rendered from templates.

User text is always escaped; model text is rendered by chat.markdown (markdown-it with raw
HTML off, then nh3), while it streams and once it is finished.
"""

from collections.abc import Callable

from django.template.loader import get_template, render_to_string

from .markdown import LiveMarkdown
from .models import Conversation, Message

live_template = get_template("chat/oob/live.html")
MARKER = "\x00"  # stands in for the HTML while the template renders once


def turn(question: Message | None, reply: Message) -> str:
    """The user's bubble (none on a retry), the empty reply, and the Stop button."""
    return render_to_string("chat/oob/turn.html", {"question": question, "reply": reply})


def live_for(reply: Message) -> Callable[[str], str]:
    """The reply so far, rendered as Markdown, replacing the streaming bubble's content.

    Takes the whole text so far (str); returns one frame (str). Every connection watching
    gets the same frame: the one that asked at CHAT_RENDER_INTERVAL, the others at
    CHAT_FANOUT_INTERVAL. The template is rendered once per reply around a marker; each
    frame then renders only the Markdown that can still change (markdown.LiveMarkdown),
    and a text already rendered (both cadences due at once) is not rendered again.
    """
    before, after = live_template.render({"reply": reply, "html": MARKER}).split(MARKER)
    markdown = LiveMarkdown()
    last: dict[str, str | None] = {"text": None, "frame": ""}

    def frame(text: str) -> str:
        if text != last["text"]:
            last["text"], last["frame"] = text, before + markdown.render(text) + after
        return last["frame"] or ""

    return frame


def live(reply: Message, text: str) -> str:
    """One frame of live_for(reply), for a single use."""
    return live_for(reply)(text)


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
