"""Model output as HTML: markdown-it with raw HTML off, then nh3's allow-list.

The same pipeline renders a finished reply and each live frame of a streaming one, so a
reply looks the same while it streams and after it ends.

Policy of the allow-list (everything else is removed, tags and attributes alike):

- Code blocks are highlighted on the server by Pygments into ``<span class="...">`` with
  Pygments' short token classes; colours come from ``chat/static/chat/highlight.css``
  (nothing inline, so the Content-Security-Policy needs no ``unsafe-inline``). A block has a
  language label and a Copy button (``chat.js`` handles its click).
- Images are never loaded: an image in Markdown (``![alt](url)``) becomes a link to its
  address showing its alt text. A reply could otherwise make the browser fetch any URL the
  moment it renders, carrying data in the query string (the "Markdown image exfiltration"
  attack); a link is only followed if the reader chooses to. The CSP's ``img-src 'self'``
  blocks such requests too; this keeps the page free of broken images and CSP reports.
- Table cell alignment, which markdown-it writes as ``style="text-align:..."``, becomes a
  class (inline styles would break the CSP).
- Links get ``rel="noopener noreferrer"``; only http(s) and mailto addresses are kept.
"""

import re
from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

LIGHT_STYLE = "default"
DARK_STYLE = "github-dark"
LANGUAGE_LABEL_LENGTH = 24
ALIGNMENTS = ("left", "center", "right")

md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
formatter = HtmlFormatter(nowrap=True)


@lru_cache(maxsize=256)
def lexer_for(language: str) -> Lexer | None:
    """Pygments' lexer for a fence's language name ("python", "js", ...), or None."""
    if not language:
        return None
    try:
        return get_lexer_by_name(language.lower(), stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None


def render_fence(tokens, idx, options, env) -> str:
    token = tokens[idx]
    info = token.info.strip()
    language = info.split(maxsplit=1)[0] if info else ""
    lexer = lexer_for(language)
    code = highlight(token.content, lexer, formatter) if lexer else escapeHtml(token.content)
    label = escapeHtml(language[:LANGUAGE_LABEL_LENGTH] or "text")
    return (
        '<div class="code-block"><div class="code-head">'
        f'<span class="code-language">{label}</span>'
        '<button type="button" class="copy-code">Copy</button>'
        f'</div><pre><code class="highlight">{code}</code></pre></div>\n'
    )


def render_image(tokens, idx, options, env) -> str:
    """An image as a link to it, never loaded (see the module's policy)."""
    token = tokens[idx]
    src = escapeHtml(token.attrGet("src") or "")
    alt = escapeHtml(alt_text(token.children or []) or "image")
    return f'<a href="{src}" class="image-link">{alt}</a>'


def alt_text(children) -> str:
    return "".join(child.content for child in children)


def alignment_classes(state) -> None:
    """markdown-it's style="text-align:x" on table cells, as class="align-x"."""
    for token in state.tokens:
        if token.type in {"th_open", "td_open"} and token.attrs.get("style"):
            style = token.attrs.pop("style")
            side = style.removeprefix("text-align:")
            if side in ALIGNMENTS:
                token.attrSet("class", f"align-{side}")


# markdown-it's RendererProtocol does not declare the HTML renderer's rules.
md.renderer.rules["fence"] = render_fence  # type: ignore[attr-defined]
md.renderer.rules["code_block"] = render_fence  # type: ignore[attr-defined]
md.renderer.rules["image"] = render_image  # type: ignore[attr-defined]
md.core.ruler.push("alignment_classes", alignment_classes)

cleaner = nh3.Cleaner(
    tags=(nh3.ALLOWED_TAGS - {"img", "area", "map"}) | {"button"},
    attributes={
        "a": {"href", "hreflang"},
        "ol": {"start"},
        "th": {"colspan", "rowspan", "scope"},
        "td": {"colspan", "rowspan"},
        "button": {"type"},
    },
    allowed_classes={
        "a": {"image-link"},
        "div": {"code-block", "code-head"},
        "span": {"code-language", *(name for name in STANDARD_TYPES.values() if name)},
        "code": {"highlight"},
        "button": {"copy-code"},
        "th": {f"align-{side}" for side in ALIGNMENTS},
        "td": {f"align-{side}" for side in ALIGNMENTS},
    },
    url_schemes={"http", "https", "mailto"},
    link_rel="noopener noreferrer",
)


def render_markdown(text: str) -> str:
    """Sanitised HTML for a finished reply's Markdown."""
    return cleaner.clean(md.render(text))


# A link or image still being written at the end of the text: "[label](http://exa".
UNFINISHED_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\s]*$")


def render_partial_markdown(text: str) -> str:
    """Sanitised HTML for the text of a reply still streaming.

    What is unfinished at its end renders as what it will become: an open code fence is
    a code block already (CommonMark closes it at the end of the text), and a link whose
    address is still arriving shows its label only, so the address does not flash by as
    text.
    """
    return render_markdown(UNFINISHED_LINK.sub(r"\1", text))


FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
BLOCK_CONTINUES = re.compile(r"^(?:[ \t]|[-+*>](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$))")


class LiveMarkdown:
    """Renders a text that keeps growing, as render_partial_markdown would, in linear time.

    Rendering the whole text at every frame costs O(length) per frame and O(length²) per
    reply. A top-level block that a blank line and a new, unindented block have ended can
    no longer change, so its HTML is kept and only the text after it is rendered again.
    Reference-style link definitions ("[x]: url") are the one construct that can change
    earlier blocks; they are rare in model output, and the finished reply is rendered whole.
    """

    def __init__(self) -> None:
        self.stable_text = ""  # a prefix of the text that ends where a new block starts
        self.stable_html = ""

    def render(self, text: str) -> str:
        if not text.startswith(self.stable_text):
            self.stable_text, self.stable_html = "", ""
        end = self.stable_end(text)
        if end > len(self.stable_text):
            self.stable_html += render_markdown(text[len(self.stable_text) : end])
            self.stable_text = text[:end]
        return self.stable_html + render_partial_markdown(text[len(self.stable_text) :])

    def stable_end(self, text: str) -> int:
        """Where the last complete line after a blank one starts a new top-level block."""
        start = end = position = len(self.stable_text)
        fence = ""  # the open code fence's marker ("```", "~~~~", ...), if any
        after_blank = False
        while (newline := text.find("\n", position)) != -1:
            line = text[position:newline]
            if fence:
                bare = line.strip()
                indent = len(line) - len(line.lstrip(" "))
                if indent < 4 and len(bare) >= len(fence) and set(bare) == {fence[0]}:
                    fence = ""  # the closing fence
                after_blank = False
            elif not line.strip():
                after_blank = True
            else:
                if after_blank and position > start and not BLOCK_CONTINUES.match(line):
                    end = position
                if opener := FENCE.match(line):
                    fence = opener.group(1)
                after_blank = False
            position = newline + 1
        return end


def highlight_css() -> str:
    """The stylesheet shipped as chat/static/chat/highlight.css (a test keeps them equal).

    Light colours by default; dark ones when the page's theme is dark, or when the system
    asks for dark and the reader has not chosen light.
    """
    light = HtmlFormatter(style=LIGHT_STYLE).get_style_defs(".highlight")
    dark = HtmlFormatter(style=DARK_STYLE).get_style_defs([":root[data-theme=dark] .highlight"])
    system_dark = HtmlFormatter(style=DARK_STYLE).get_style_defs(
        [":root:not([data-theme=light]) .highlight"]
    )
    return (
        "/* Pygments token colours, written by chat.markdown.highlight_css(). */\n"
        f"{_tokens_only(light)}\n{_tokens_only(dark)}\n"
        + "@media (prefers-color-scheme: dark) {\n"
        + _tokens_only(system_dark)
        + "\n}\n"
    )


def _tokens_only(css: str) -> str:
    """Token colours only: the block's own background and line numbers come from chat.css."""
    return "\n".join(
        line
        for line in css.splitlines()
        if re.search(r"\.highlight \.\w+ \{", line) and " .hll " not in line
    )
