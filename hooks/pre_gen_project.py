"""Reject a project slug or e-mail address that cannot work, before any file is written."""

import keyword
import re
import sys

SLUG = {{ cookiecutter.project_slug | python_string }}
EMAIL = {{ cookiecutter.email | python_string }}

# Packages the generated project imports or depends on. The slug is also the project's
# distribution name, and a project named like one of its own dependencies cannot be
# installed (uv refuses a project that requires itself) or shadows it on sys.path.
SHADOWED = {
    "anthropic", "asgiref", "channels", "channels_redis", "daphne", "django",
    "django_htmx", "google", "httpx", "markdown_it", "nh3", "ollama", "openai",
    "pytest", "redis", "test", "tests", "uvicorn", "websockets",
}


def slug_error(slug: str) -> str | None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", slug):
        return (
            f"project_slug {slug!r} is not a valid package name: use lowercase letters, "
            "digits and underscores, starting with a letter or underscore "
            "(e.g. project_slug=my_chat on the command line)."
        )
    if keyword.iskeyword(slug):
        return f"project_slug {slug!r} is a Python keyword."
    if slug in SHADOWED or slug in sys.stdlib_module_names:
        return f"project_slug {slug!r} would shadow the {slug!r} package the project imports."
    return None


def email_error(email: str) -> str | None:
    """pyproject.toml's authors table needs an address (PEP 621: RFC 5322 addr-spec)."""
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s.]+", email):
        return f"email {email!r} is not an e-mail address (like you@example.com)."
    return None


if __name__ == "__main__":
    errors = [error for error in (slug_error(SLUG), email_error(EMAIL)) if error]
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    if errors:
        sys.exit(1)
