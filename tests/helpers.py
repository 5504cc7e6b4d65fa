"""Helpers shared by the template's tests: the combinations, generation, subprocesses."""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
TEMPLATE_OPTIONS = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())

# Every subprocess the suite starts (uv sync, manage.py, the generated test suite) gets this.
SUBPROCESS_TIMEOUT = 20 * 60

DEFAULT_PYTHON = Path("/root/.pyenv/versions/3.13.0/bin/python3")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# Each LLM provider choice and the PyPI distribution of its SDK.
PROVIDER_SDKS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google-genai",
    "ollama": "ollama",
}


# Text answers that have broken generated files in other templates: quotes of both kinds,
# backslashes, newlines and tabs, non-ASCII (outside the BMP too), HTML, Markdown, TOML and
# shell syntax, and Jinja's own delimiters. One matrix combination is generated with them.
HOSTILE_ANSWERS = {
    "project_name": 'Zoë\'s "Chat" \\ {{ x }} {% y %} <b>&amp;</b> 😀',
    "description": 'Line one "quoted" \\n\nline two\t# not a comment\n[x](y) *z* {% raw %} $HOME `',
    "author_name": 'O\'Brien "Bob" \\ Zoë <script>',
    "email": "o'brien+chat@example.org",
}


@dataclass(frozen=True)
class Combo:
    """One combination of the template's choice variables (and, for one, hostile answers)."""

    index: int
    consumer: str
    channel_layer: str
    llm_provider: str
    hostile: bool = False

    @property
    def id(self) -> str:
        # e.g. "async-redis-openai". Select one combination with -k "[sync-redis-openai]":
        # with the brackets, "sync-..." no longer also matches "async-...".
        suffix = "-hostile" if self.hostile else ""
        return f"{self.consumer}-{self.channel_layer}-{self.llm_provider}{suffix}"

    @property
    def context(self) -> dict[str, str]:
        return {
            "consumer": self.consumer,
            "channel_layer": self.channel_layer,
            "llm_provider": self.llm_provider,
        }

    @property
    def answers(self) -> dict[str, str]:
        """The text answers this combination is generated with (the defaults: none)."""
        return dict(HOSTILE_ANSWERS) if self.hostile else {}

    @property
    def redis(self) -> bool:
        return self.channel_layer == "redis"

    @property
    def runs_on_postgresql(self) -> bool:
        """Whether the matrix also runs this combination's own suite on PostgreSQL.

        What PostgreSQL changes (types, locks, transactions, the connection pool) meets the
        code that the consumer and the channel layer choose; the provider only adds its client.
        So each consumer x layer pair runs there once, and the pairs take the providers in
        turn, so that each provider's tests meet PostgreSQL once too.
        """
        return not self.hostile and self._turn == 0

    @property
    def runs_browser_tests(self) -> bool:
        """Whether the matrix runs this combination's browser tests.

        They always talk to the offline demo model (tests/e2e/conftest.py), whatever the
        provider, so each consumer x layer pair runs them once, with a provider of its own
        (another than on PostgreSQL); and so does the project with hostile answers, whose
        pages show them.
        """
        return self.hostile or self._turn == 2

    @property
    def _turn(self) -> int:
        """This combination's place in the rotation of providers over consumer x layer pairs."""
        pair = TEMPLATE_OPTIONS["consumer"].index(self.consumer) * len(
            TEMPLATE_OPTIONS["channel_layer"]
        ) + TEMPLATE_OPTIONS["channel_layer"].index(self.channel_layer)
        providers = TEMPLATE_OPTIONS["llm_provider"]
        return (providers.index(self.llm_provider) - pair) % len(providers)


COMBOS = [
    Combo(index, *values)
    for index, values in enumerate(
        itertools.product(
            TEMPLATE_OPTIONS["consumer"],
            TEMPLATE_OPTIONS["channel_layer"],
            TEMPLATE_OPTIONS["llm_provider"],
        )
    )
]
# The 17th: the default options, with every text answer hostile.
COMBOS.append(
    Combo(
        len(COMBOS),
        TEMPLATE_OPTIONS["consumer"][0],
        TEMPLATE_OPTIONS["channel_layer"][0],
        TEMPLATE_OPTIONS["llm_provider"][0],
        hostile=True,
    )
)


@functools.cache
def shippable_template() -> Path:
    """A copy of the template holding only what git would ship.

    Caches and test output that tools leave in a working tree (.ruff_cache, __pycache__,
    test-results) would otherwise be rendered as templates, and binary ones break Jinja.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=TEMPLATE_DIR,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = Path(tempfile.mkdtemp(prefix="template-")) / TEMPLATE_DIR.name
    for name in filter(None, listed.split("\0")):
        source = TEMPLATE_DIR / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def generate_project(output_dir: Path, config_file: Path, **extra_context: str) -> Path:
    """Generate a project from this template without prompting; returns its directory."""
    return Path(
        cookiecutter(
            str(shippable_template()),
            no_input=True,
            extra_context=extra_context,
            output_dir=str(output_dir),
            config_file=str(config_file),
        )
    )


@functools.cache
def template_git_repo() -> Path:
    """The shippable template committed to a local git repository, as cruft needs it.

    cruft records the template's URL and commit in .cruft.json and clones the template again
    to check or update a project; a local path is a git URL that works offline.
    """
    repo = Path(tempfile.mkdtemp(prefix="template-repo-")) / TEMPLATE_DIR.name
    shutil.copytree(shippable_template(), repo)
    git = ["git", "-c", "user.name=Template tests", "-c", "user.email=tests@example.com"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "template"]):
        subprocess.run([*git, *command], cwd=repo, check=True, capture_output=True)
    return repo


def as_typed(answer: str) -> str:
    """An answer that cookiecutter's --no-input/extra_context path takes verbatim.

    cookiecutter renders those values as Jinja (unlike answers typed at its prompts), so a
    value holding "{%" would not even reach the template; Jinja's raw block passes it intact.
    """
    return "{% raw %}" + answer + "{% endraw %}"


def generate_with_cruft(output_dir: Path, config_file: Path, combo: Combo) -> Path:
    """Generate a combination the way a project that wants template updates starts: cruft."""
    from cruft import create

    context = combo.context | {name: as_typed(value) for name, value in combo.answers.items()}
    return create(
        str(template_git_repo()),
        output_dir=output_dir,
        config_file=config_file,
        extra_context=context,
        no_input=True,
    )


# These directories are made by the tools the suite runs, not by the template.
TOOL_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "node_modules",
}
TOOL_FILES = {"uv.lock", ".cruft.json"}


def project_files(project: Path) -> list[Path]:
    """Every file the template generated (skipping what uv, pytest and ruff add later)."""
    files = []
    for root, dirs, names in os.walk(project):
        dirs[:] = sorted(d for d in dirs if d not in TOOL_DIRS)
        files.extend(Path(root, name) for name in sorted(names) if name not in TOOL_FILES)
    return files


# --------------------------------------------------------------------------- subprocesses


def uv_bin() -> str:
    """The uv installed in the template's test environment (falls back to PATH)."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            pytest.fail("uv is not installed: pip install -r requirements-dev.txt")
        return found


def generated_python() -> str | None:
    """The Python that generated projects run on; None lets uv choose one it finds."""
    if os.environ.get("UV_PYTHON"):
        return os.environ["UV_PYTHON"]
    if DEFAULT_PYTHON.exists():
        return str(DEFAULT_PYTHON)
    return None


# Variables of the outer environment that must not leak into a generated project's tools:
# the template suite's own venv, pytest/xdist state, Django settings, real LLM credentials.
_LEAKY_PREFIXES = ("PYTEST_", "DJANGO_", "RUFF_")
_LEAKY_NAMES = {
    "VIRTUAL_ENV",
    "UV_PROJECT_ENVIRONMENT",
    "PYTHONPATH",
    "PYTHONHOME",
    "REDIS_URL",
    "OLLAMA_HOST",
}


def project_env(redis_url: str | None = None) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _LEAKY_NAMES
        and not name.startswith(_LEAKY_PREFIXES)
        and not name.endswith("_API_KEY")
    }
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["NO_COLOR"] = "1"
    # uv on PATH: the project's mypy pre-commit hook runs `uv run`, as on a developer's machine.
    # Appended, so that it adds uv and shadows nothing.
    env["PATH"] = os.pathsep.join([env.get("PATH", os.defpath), str(Path(uv_bin()).parent)])
    python = generated_python()
    if python:
        env["UV_PYTHON"] = python
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


@dataclass
class Result:
    command: list[str]
    cwd: Path
    returncode: int
    output: str

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.command)}  (in {self.cwd})\n"
            f"exit status {self.returncode}\n{self.output}"
        )


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> Result:
    """Run a command with stdout and stderr merged; a timeout is a failure."""
    try:
        completed = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        output = timeout.output or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        pytest.fail(
            f"$ {' '.join(command)}  (in {cwd})\ntimed out after {SUBPROCESS_TIMEOUT} s\n{output}",
            pytrace=False,
        )
    return Result(command, cwd, completed.returncode, completed.stdout)


def assert_succeeds(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> Result:
    result = run(command, cwd, env)
    if result.returncode != 0:
        pytest.fail(result.describe(), pytrace=False)
    return result


# --------------------------------------------------------------------------- redis


def redis_url_for(combo: Combo) -> str:
    """REDIS_URL (or the default) with a database of this combination's own."""
    parts = urlsplit(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    return urlunsplit(parts._replace(path=f"/{combo.index % 16}"))


def redis_unreachable_reason(url: str) -> str | None:
    """None when a Redis server answers PING at url, else why not."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"PING\r\n")
            reply = conn.recv(64)
    except OSError as error:
        return f"cannot connect to Redis at {host}:{port}: {error}"
    # A server that wants a password still proves it is there.
    if reply.startswith((b"+PONG", b"-NOAUTH")):
        return None
    return f"{host}:{port} did not answer PING like Redis: {reply!r}"
