"""Markdown for finished replies: no raw HTML in, only sanitised HTML out."""

import nh3
from markdown_it import MarkdownIt

md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_markdown(text: str) -> str:
    return nh3.clean(md.render(text), link_rel="noopener noreferrer")
