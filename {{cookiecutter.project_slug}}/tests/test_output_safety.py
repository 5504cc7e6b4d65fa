"""Model and user text never becomes markup: not while streaming, not in history, not in titles."""

import json
from html.parser import HTMLParser

import pytest

from chat.markdown import render_markdown
from chat.models import Conversation, Message

from .conftest import live_text, read_reply

pytestmark = pytest.mark.django_db(transaction=True)

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<div hx-get="/x" hx-trigger="load">x</div>',
]


class Elements(HTMLParser):
    """Every element and attribute the browser would build from some HTML."""

    def __init__(self, markup: str):
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.values: list[tuple[str, str]] = []
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]
        self.values += [(name, value or "") for name, value in attrs]


def assert_inert(markup: str) -> None:
    elements = Elements(markup)
    assert not {"script", "img", "iframe"} & set(elements.tags)
    assert not [a for a in elements.attributes if a.startswith("on")]
    # The page's own htmx requests go to its own chat URLs (the sidebar's rename and
    # delete); nothing from the text.
    requests = [v for name, v in elements.values if name in {"hx-get", "hx-post", "hx-trigger"}]
    assert "/x" not in requests and "load" not in requests
    assert all(value.startswith("/chat/") for name, value in elements.values if name == "hx-get")


@pytest.mark.parametrize("payload", PAYLOADS, ids=["script", "img-onerror", "htmx-attribute"])
async def test_hostile_user_text_is_shown_as_text(user, conversation, connect, payload):
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": payload}))
    frames = [await socket.receive_from(timeout=5), *await read_reply(socket)]

    assert_inert("".join(frames))
    assert payload in live_text(frames)  # the demo echoes it back, as text


async def test_hostile_model_output_is_inert_while_streaming_and_when_finished(
    user, conversation, connect, scripted
):
    # One tag split across two chunks, then whole ones.
    scripted(["<scr", "ipt>alert(1)</script>", *PAYLOADS], delay=0.03)
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "attack"}))
    frames = [await socket.receive_from(timeout=5), *await read_reply(socket)]

    assert_inert("".join(frames))
    assert live_text(frames) == "<script>alert(1)</script>" + "".join(PAYLOADS)
    stored = await Message.objects.aget(conversation=conversation, role="assistant")
    assert stored.content.startswith("<script>")  # stored as written, escaped on output


def test_stored_history_and_titles_are_escaped_on_the_page(client, user):
    conversation = Conversation.objects.create(owner=user, title=PAYLOADS[0])
    for payload in PAYLOADS:
        conversation.messages.create(role="user", content=payload)
        conversation.messages.create(role="assistant", content=payload)
    client.force_login(user)

    page = client.get(f"/chat/{conversation.pk}/").content.decode()

    main = page[page.index("<main") :]
    assert_inert(main.replace(page[page.index("<script") : page.index("</head>")], ""))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_markdown_keeps_formatting_drops_raw_html_and_guards_links():
    rendered = render_markdown(
        "**bold** [site](https://example.com) <img src=x onerror=alert(1)> "
        '[js](javascript:alert(1)) <div hx-get="/x">'
    )

    assert "<strong>bold</strong>" in rendered
    assert 'rel="noopener noreferrer"' in rendered
    assert 'href="javascript:' not in rendered
    assert_inert(rendered)


@pytest.mark.parametrize(
    "image",
    [
        "![a chart](https://tracker.example/pixel.png?user=alice)",
        "![](//tracker.example/pixel.png)",
        "![same site](/static/chat/chat.css)",
        "![data](data:image/png;base64,iVBORw0KGgo=)",
    ],
)
def test_an_image_in_a_reply_becomes_a_link_and_loads_nothing(image):
    rendered = render_markdown(f"Look: {image}")

    assert "<img" not in rendered and "src=" not in rendered
    assert_inert(rendered)
    if "tracker" in image:
        assert '<a href="' in rendered and 'rel="noopener noreferrer"' in rendered
