"""Jinja filters that write a user's answer as data in the language of the file it lands in.

Loaded by cookiecutter through ``_extensions`` in cookiecutter.json (the template's directory
is on sys.path while it renders; cruft does the same). A project name or description may hold
anything a person can type: quotes, backslashes, newlines, non-ASCII, ``{{``. Each filter
returns text that the target file's parser reads back as exactly that value (or, for prose,
as that text on one line), so no answer can break a generated file.

Jinja's own ``tojson`` is not enough: it writes characters outside the Basic Multilingual
Plane as UTF-16 surrogate pairs (``"\\ud83d\\ude00"``), which TOML rejects and Python reads
as two lone surrogates instead of one character.
"""

from __future__ import annotations

import keyword
import re
import sys

from jinja2.ext import Extension
from slugify import slugify

# TOML basic strings: these characters must be escaped, every other one may appear as is.
# https://toml.io/en/v1.0.0#string
_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_TOML_SPECIAL = re.compile(r'["\\\x00-\x1f\x7f]')


def toml_string(value: object) -> str:
    """A TOML basic string (with its quotes) that reads back as ``str(value)``."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return _TOML_ESCAPES.get(char) or f"\\u{ord(char):04X}"

    return '"' + _TOML_SPECIAL.sub(escape, str(value)) + '"'


def python_string(value: object) -> str:
    """A Python string literal that reads back as ``str(value)``.

    Quotes are chosen the way ruff format (and Black) would: double quotes unless the text
    holds more double than single quotes, so ``ruff format --check`` accepts the result.
    https://docs.astral.sh/ruff/settings/#format_quote-style
    """
    text = str(value)
    quote = "'" if text.count('"') > text.count("'") else '"'

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in {"\\", quote}:
            return "\\" + char
        return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}.get(char) or f"\\x{ord(char):02x}"

    return quote + re.sub(rf"[\\{quote}\x00-\x1f\x7f]", escape, text) + quote


# Every ASCII punctuation character may be backslash-escaped in CommonMark; these are the
# ones that can start markup inside a line (emphasis, code, links, HTML, entities, tables).
# https://spec.commonmark.org/0.31.2/#backslash-escapes
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~#!{}])")


def markdown_text(value: object) -> str:
    """``str(value)`` as literal Markdown text on one line (whitespace runs become a space)."""
    one_line = " ".join(str(value).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", one_line)


# Names a project package must not take: what the generated project imports (the
# pre-generation hook refuses them with the reason; keep the two lists in step).
_TAKEN = {
    "anthropic", "asgiref", "channels", "channels_redis", "daphne", "django",
    "django_htmx", "google", "httpx", "markdown_it", "nh3", "ollama", "openai",
    "pytest", "redis", "test", "tests", "uvicorn", "websockets",
}  # fmt: skip


def package_name(value: object) -> str:
    """The default project_slug: ``str(value)`` as a Python package name that always works.

    Transliterated to ASCII and joined with underscores by python-slugify (as cookiecutter's
    own ``slugify`` filter does): "Zoë's Chat" gives ``zoe_s_chat``. A name that would still
    be refused gets a word added: ``project_123`` for "123", ``json_project`` for "JSON".
    """
    name = slugify(str(value), separator="_") or "project"
    if name[0].isdigit():
        name = f"project_{name}"
    if keyword.iskeyword(name) or name in _TAKEN or name in sys.stdlib_module_names:
        name = f"{name}_project"
    return name


class UserValueFilters(Extension):
    """Registers toml_string, python_string, markdown_text and package_name."""

    def __init__(self, environment):
        super().__init__(environment)
        environment.filters["package_name"] = package_name
        environment.filters["toml_string"] = toml_string
        environment.filters["python_string"] = python_string
        environment.filters["markdown_text"] = markdown_text
