"""Every combination of the template's choices generates a clean project that works.

Each combination's tests share one generated project (and, from the uv sync on, its own
venv), so they run in the order written: first what the template rendered, then what the
generated project's own tools say about it. Select one combination with, for example,
    python -m pytest tests/test_matrix.py -k "[sync-redis-openai]"
(the brackets keep "sync-..." from also matching "async-...").
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    COMBOS,
    PROVIDER_SDKS,
    TEMPLATE_DIR,
    TEMPLATE_OPTIONS,
    Combo,
    assert_succeeds,
    generate_with_cruft,
    project_env,
    project_files,
    redis_unreachable_reason,
    redis_url_for,
    run,
    uv_bin,
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test runs for every combination, but those marked ``only_where`` with a Combo
    property (runs_on_postgresql, runs_browser_tests: see there for why) run only where it
    holds."""
    if "combo" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("only_where")
    combos = [c for c in COMBOS if marker is None or getattr(c, marker.args[0])]
    params = [pytest.param(combo, id=combo.id) for combo in combos]
    metafunc.parametrize("combo", params, indirect=True, scope="session")


# What a rendered file must never contain: unrendered or stray template syntax. Django
# templates legitimately contain "{% " and "{{ ", so those alone are not flagged.
TEMPLATE_REMNANTS = [b"cookiecutter", b"{%-", b"-%}", b"{{ cookiecutter"]


def _mentions(name: str) -> re.Pattern[str]:
    """A package name as a whole word, with -, _ and . interchangeable."""
    body = r"[-_.]".join(map(re.escape, re.split(r"[-_.]", name)))
    return re.compile(rf"(?<![\w.-]){body}(?![\w-])", re.IGNORECASE)


# Import lines for each provider's SDK.
SDK_IMPORTS = {
    "openai": re.compile(r"^\s*(?:import|from)\s+openai\b", re.MULTILINE),
    "anthropic": re.compile(r"^\s*(?:import|from)\s+anthropic\b", re.MULTILINE),
    "gemini": re.compile(
        r"^\s*(?:(?:import|from)\s+google\.genai\b|from\s+google\s+import\s+genai\b)",
        re.MULTILINE,
    ),
    "ollama": re.compile(r"^\s*(?:import|from)\s+ollama\b", re.MULTILINE),
}


def _normalized(requirement: str) -> str:
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert name, f"unparseable requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", name.group(1)).lower()


def _all_requirements(pyproject: dict) -> set[str]:
    project = pyproject.get("project", {})
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    for group in pyproject.get("dependency-groups", {}).values():
        requirements += [item for item in group if isinstance(item, str)]
    return {_normalized(requirement) for requirement in requirements}


def _texts(project: Path) -> dict[str, str]:
    """Every generated file's text, by relative path (binary files are skipped)."""
    texts = {}
    for path in project_files(project):
        try:
            texts[path.relative_to(project).as_posix()] = path.read_text()
        except UnicodeDecodeError:
            continue
    return texts


# Run with the generated project's own Python: what its README, settings and login page make
# of the text answers, as the tools that read them see it (markdown-it is a dependency).
READ_BACK_ANSWERS = """
import json, os
import django
from markdown_it import MarkdownIt

os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
django.setup()
from django.conf import settings
from django.test import Client
from django.urls import reverse

tokens = MarkdownIt().parse(open("README.md", encoding="utf-8").read())
blocks = [
    "".join(child.content for child in token.children if child.type == "text")
    for token in tokens
    if token.type == "inline"
]
page = Client(HTTP_HOST="localhost").get(reverse(settings.LOGIN_URL))
print(json.dumps({
    "settings": settings.PROJECT_NAME,
    "readme": blocks[:2],
    "page": page.content.decode(),
}))
"""


def _answers(combo: Combo) -> dict[str, str]:
    """The text answers the combination was generated with (cookiecutter.json's defaults)."""
    names = ("project_name", "description", "author_name", "email")
    return {name: TEMPLATE_OPTIONS[name] for name in names} | combo.answers


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def combo(request: pytest.FixtureRequest) -> Combo:
    return request.param


@pytest.fixture(scope="session")
def project(
    combo: Combo, tmp_path_factory: pytest.TempPathFactory, cookiecutter_config: Path
) -> Iterator[Path]:
    """The project generated for this combination with cruft; removed after its tests."""
    output_dir = tmp_path_factory.mktemp(combo.id)
    generated = generate_with_cruft(output_dir, cookiecutter_config, combo)
    yield generated
    shutil.rmtree(output_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def env(combo: Combo) -> dict[str, str]:
    """The generated project's environment; a Redis combination needs a live Redis."""
    if not combo.redis:
        return project_env()
    url = redis_url_for(combo)
    reason = redis_unreachable_reason(url)
    if reason:
        pytest.fail(f"{combo.id} needs Redis (REDIS_URL={url}): {reason}", pytrace=False)
    return project_env(redis_url=url)


@pytest.fixture(scope="session")
def synced(project: Path, env: dict[str, str]) -> Path:
    """The generated project after `uv sync --locked` made its .venv with the dev group.

    --locked: the uv.lock the post-generation hook wrote must match pyproject.toml.
    """
    assert (project / "uv.lock").is_file(), "the post-generation hook wrote no uv.lock"
    assert_succeeds([uv_bin(), "sync", "--locked"], project, env)
    return project


def test_postgresql_and_browser_runs_cover_every_consumer_layer_pair_and_every_provider() -> None:
    pairs = {(c.consumer, c.channel_layer) for c in COMBOS}
    providers = {c.llm_provider for c in COMBOS}
    for where in ("runs_on_postgresql", "runs_browser_tests"):
        chosen = [c for c in COMBOS if getattr(c, where) and not c.hostile]
        assert sorted((c.consumer, c.channel_layer) for c in chosen) == sorted(pairs), where
        assert {c.llm_provider for c in chosen} == providers, where
    both = [c.id for c in COMBOS if c.runs_on_postgresql and c.runs_browser_tests]
    assert both == [], "a provider of its own for each, so the two spread over more code"


# --------------------------------------------------------------------------- rendering


def test_renders_no_template_syntax_or_cookiecutter_remnants(project: Path) -> None:
    found = []
    for path in project_files(project):
        relative = path.relative_to(project).as_posix()
        if "{{" in relative or "cookiecutter" in relative:
            found.append(f"{relative}: unrendered file name")
        content = path.read_bytes()
        found += [f"{relative}: {r.decode()!r}" for r in TEMPLATE_REMNANTS if r in content]
    assert found == []


def test_keeps_only_the_chosen_consumer_as_chat_consumers(project: Path, combo: Combo) -> None:
    assert (project / "chat" / "consumers.py").is_file()
    leftovers = [
        p.relative_to(project).as_posix()
        for name in ("consumers_async.py", "consumers_sync.py")
        for p in project.rglob(name)
    ]
    assert leftovers == []
    batching = [project / "chat" / "batching.py", project / "tests" / "test_batching.py"]
    assert [path.is_file() for path in batching] == [combo.consumer == "async"] * 2


def test_keeps_only_the_chosen_providers_client_and_tests(project: Path, combo: Combo) -> None:
    chosen = combo.llm_provider
    assert (project / "chat" / "llm" / f"{chosen}_chat.py").is_file()
    assert (project / "tests" / f"test_{chosen}_chat.py").is_file()
    leftovers = [
        p.relative_to(project).as_posix()
        for other in PROVIDER_SDKS
        if other != chosen
        for name in (f"{other}_chat.py", f"test_{other}_chat.py")
        for p in project.rglob(name)
    ]
    assert leftovers == []


def test_imports_no_sdk_of_an_unchosen_provider(project: Path, combo: Combo) -> None:
    offenders = [
        f"{name} imports the {other} SDK"
        for name, text in _texts(project).items()
        if name.endswith(".py")
        for other, pattern in SDK_IMPORTS.items()
        if other != combo.llm_provider and pattern.search(text)
    ]
    assert offenders == []


def test_pyproject_depends_on_exactly_the_chosen_provider_sdk_and_layer(
    project: Path, combo: Combo
) -> None:
    text = (project / "pyproject.toml").read_text()
    requirements = _all_requirements(tomllib.loads(text))

    assert PROVIDER_SDKS[combo.llm_provider] in requirements
    assert ("channels-redis" in requirements) == combo.redis
    unwanted = [sdk for p, sdk in PROVIDER_SDKS.items() if p != combo.llm_provider]
    if not combo.redis:
        unwanted.append("channels-redis")
    mentioned = [name for name in unwanted if _mentions(name).search(text)]
    assert mentioned == [], f"pyproject.toml mentions packages of unchosen options: {mentioned}"


def test_mentions_channels_redis_and_redis_url_only_with_the_redis_layer(
    project: Path, combo: Combo
) -> None:
    texts = _texts(project)
    mentions = {
        marker: sorted(name for name, text in texts.items() if marker in text)
        for marker in ("channels_redis", "REDIS_URL")
    }
    if combo.redis:
        assert all(mentions.values()), f"redis layer not wired up: {mentions}"
        assert (project / "tests" / "test_redis_layer.py").is_file()
        assert not (project / "tests" / "test_in_memory_layer.py").exists()
    else:
        assert mentions == {"channels_redis": [], "REDIS_URL": []}
        assert not (project / "tests" / "test_redis_layer.py").exists()
        assert (project / "tests" / "test_in_memory_layer.py").is_file()


def test_text_answers_read_back_intact_from_pyproject(project: Path, combo: Combo) -> None:
    answers = _answers(combo)
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]

    assert metadata["description"] == answers["description"]
    assert metadata["authors"] == [{"name": answers["author_name"], "email": answers["email"]}]


# A setting the app's code reads from the environment, and a key .env.example lists.
ENV_READ = re.compile(r'(?:environ\.get|environ\[|getenv|env_bool|env_list)\(?"([A-Z][A-Z0-9_]*)"')
ENV_EXAMPLE_KEY = re.compile(r"^#? ?([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def test_env_example_lists_every_setting_the_app_reads(project: Path) -> None:
    texts = _texts(project)
    code = [text for path, text in texts.items() if path.endswith(".py") and path[:6] != "tests/"]
    read = {name for text in code for name in ENV_READ.findall(text)}

    assert read - set(ENV_EXAMPLE_KEY.findall(texts[".env.example"])) == set()


def test_compose_passes_every_setting_of_env_example_but_debug(project: Path) -> None:
    """DJANGO_DEBUG stays the image's false: the .env the template wrote says true."""
    import yaml  # cookiecutter's own dependency

    compose = yaml.safe_load((project / "compose.yaml").read_text())
    listed = set(ENV_EXAMPLE_KEY.findall((project / ".env.example").read_text()))
    for name in ("web", "migrate"):
        passed = set(compose["services"][name]["environment"])
        assert listed - passed == {"DJANGO_DEBUG"}, name


def test_passes_ruff_lint(project: Path) -> None:
    assert_succeeds([sys.executable, "-m", "ruff", "check", "--no-cache", "."], project)


def test_passes_ruff_format_check(project: Path) -> None:
    assert_succeeds(
        [sys.executable, "-m", "ruff", "format", "--check", "--diff", "--no-cache", "."], project
    )


# --------------------------------------------------------------------------- the project's tools


def test_installs_with_uv_sync_including_the_dev_group(synced: Path) -> None:
    venv_bin = synced / ".venv" / "bin"
    assert (venv_bin / "python").exists()
    assert (venv_bin / "pytest").exists(), "the dev dependency group was not installed"


def test_text_answers_read_back_intact_from_settings_readme_and_pages(
    synced: Path, env: dict[str, str], combo: Combo
) -> None:
    """The project name as Python data, one line of Markdown text, and escaped HTML."""
    answers = _answers(combo)
    result = assert_succeeds([uv_bin(), "run", "python", "-c", READ_BACK_ANSWERS], synced, env)
    seen = json.loads(result.output.strip().splitlines()[-1])

    assert seen["settings"] == answers["project_name"]
    one_line = [" ".join(answers[name].split()) for name in ("project_name", "description")]
    assert seen["readme"] == one_line
    assert html.escape(answers["project_name"]) in seen["page"]


def test_django_system_check_passes(synced: Path, env: dict[str, str]) -> None:
    assert_succeeds([uv_bin(), "run", "python", "manage.py", "check"], synced, env)


def test_models_have_no_missing_migrations(synced: Path, env: dict[str, str]) -> None:
    assert_succeeds(
        [uv_bin(), "run", "python", "manage.py", "makemigrations", "--check", "--dry-run"],
        synced,
        env,
    )


def test_generated_projects_own_test_suite_passes(synced: Path, env: dict[str, str]) -> None:
    result = assert_succeeds([uv_bin(), "run", "pytest"], synced, env)
    assert re.search(r"\b\d+ passed\b", result.output), result.describe()


@pytest.mark.only_where("runs_on_postgresql")
def test_generated_projects_own_test_suite_passes_on_postgresql(
    synced: Path, env: dict[str, str]
) -> None:
    """The whole suite again on a real PostgreSQL, in a test database of this run's own that
    pytest-django creates and drops, with none left "being accessed by other users"."""
    server = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
    name = f"matrix_{uuid.uuid4().hex[:12]}"
    result = assert_succeeds(
        [uv_bin(), "run", "pytest", "-p", "no:cacheprovider"],
        synced,
        {**env, "DATABASE_URL": f"{server}/{name}"},
    )
    assert re.search(r"\b\d+ passed\b", result.output), result.describe()
    assert not re.search(r"\b\d+ (skipped|failed|error)", result.output), result.describe()
    assert "Error when trying to teardown test databases" not in result.output, result.describe()


@pytest.mark.only_where("runs_browser_tests")
def test_generated_projects_browser_tests_pass(
    synced: Path, env: dict[str, str], combo: Combo
) -> None:
    """The project's end-to-end tests: Debian's Chromium against its real ASGI server."""
    result = run([uv_bin(), "run", "pytest", "-m", "e2e"], synced, env)
    if result.returncode != 0:
        # The project is removed after its tests: keep the screenshots, pages and logs.
        kept = TEMPLATE_DIR / "test-results" / combo.id
        shutil.rmtree(kept, ignore_errors=True)
        if (synced / "test-results" / "e2e").is_dir():
            shutil.copytree(synced / "test-results" / "e2e", kept)
        pytest.fail(f"{result.describe()}\nscreenshots, pages and logs: {kept}", pytrace=False)
    assert re.search(r"\b\d+ passed\b", result.output), result.describe()
    assert not re.search(r"\b\d+ (skipped|xfailed)\b", result.output), result.describe()


# --------------------------------------------------------------------------- conventions

# Hooks that must have run on files (not "(no files to check) Skipped").
HOOKS_THAT_MUST_RUN = [
    "ruff check",
    "ruff format",
    "mypy",
    "djLint",
    "django-upgrade",
    "check yaml",
    "check toml",
    "hadolint (Dockerfile)",
    "GitHub workflows (JSON schema)",
    "actionlint (GitHub workflows)",
    "compose file (JSON schema)",
]


def test_pre_commit_hooks_pass_on_every_file(synced: Path, env: dict[str, str]) -> None:
    """Its own .pre-commit-config.yaml, hooks from PyPI: lint, types, templates, CI, Docker."""
    assert (synced / ".git").is_dir(), "the post-generation hook started no git repository"
    assert_succeeds(["git", "add", "--all"], synced, env)
    command = ["pre-commit", "run", "--all-files", "--show-diff-on-failure", "--color=never"]
    result = assert_succeeds([uv_bin(), "run", "--locked", *command], synced, env)

    outcomes = dict(
        re.findall(r"^(\S.*?)\.{3,}(?:\(no files to check\))?(\w+)$", result.output, re.MULTILINE)
    )
    not_run = {
        hook: outcomes.get(hook) for hook in HOOKS_THAT_MUST_RUN if outcomes.get(hook) != "Passed"
    }
    assert not_run == {}, result.describe()


def test_cruft_check_finds_the_project_up_to_date_with_its_answers(
    project: Path, combo: Combo
) -> None:
    """The update path: .cruft.json names the template's commit and the answers given."""
    from cruft import check

    state = json.loads((project / ".cruft.json").read_text())
    recorded = state["context"]["cookiecutter"]
    assert {name: recorded[name] for name in _answers(combo)} == _answers(combo)
    assert check(project), "cruft check: the project is not at the template's last commit"


def _dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [
        tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")
    ]
    return [(name.upper(), rest) for name, rest in instructions]


def _http_get(port: int, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers={"Host": "localhost", **headers})
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def test_container_commands_serve_production_settings_outside_docker(
    synced: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The Dockerfile's collectstatic, compose's migrate and the image's CMD, run here.

    Docker cannot run on the test machines: this runs the same command lines in the
    project's venv (the image's PATH), with the image's ENV, a SQLite database of its own and
    the request headers a TLS-terminating proxy adds.
    """
    import yaml  # cookiecutter's own dependency

    instructions = _dockerfile_instructions(synced / "Dockerfile")
    stages = [i for i, (name, _) in enumerate(instructions) if name == "FROM"]
    assert len(stages) == 2, "expected a build stage and a run stage"
    build, final = instructions[: stages[1]], instructions[stages[1] :]
    collectstatic = next(rest for name, rest in build if name == "RUN" and "collectstatic" in rest)
    cmd = json.loads(next(rest for name, rest in final if name == "CMD"))
    image_env = {}
    for name, rest in final:
        if name == "ENV":
            image_env |= dict(item.split("=", 1) for item in shlex.split(rest))
    assert image_env.get("DJANGO_DEBUG") == "false"
    assert any(name == "USER" and rest.split(":")[0] != "0" for name, rest in final), "runs as root"
    compose = yaml.safe_load((synced / "compose.yaml").read_text())
    migrate = compose["services"]["migrate"]["command"]

    work = tmp_path_factory.mktemp("container")
    venv_bin = str(synced / ".venv" / "bin")
    port = _free_port()
    run_env = env | {
        "PATH": venv_bin + os.pathsep + env["PATH"],
        "DJANGO_DEBUG": image_env["DJANGO_DEBUG"],
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "localhost",
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "EMAIL_URL": "dummymail://",  # compose requires one; nothing is mailed here
    }
    static_root = synced / "staticfiles"
    shutil.rmtree(static_root, ignore_errors=True)
    build_command = collectstatic.replace("/app/", f"{synced}/")
    assert_succeeds(["bash", "-c", build_command], synced, run_env)
    assert_succeeds(migrate, synced, run_env)

    server_cmd = [str(port) if arg == "8000" else arg for arg in cmd]
    assert server_cmd != cmd, f"CMD does not serve on port 8000: {cmd}"
    log_path = work / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            server_cmd, cwd=synced, env=run_env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        proxied = {"X-Forwarded-Proto": "https"}
        page = _wait_for(port, "/accounts/login/", proxied, server, log_path)
        stylesheet = re.search(r'href="(/static/chat/chat\.[0-9a-f]{12}\.css)"', page)
        assert stylesheet, f"no hashed stylesheet URL in the page:\n{page[:2000]}"
        static = _http_get(port, stylesheet.group(1), proxied)
        plain = _http_get(port, "/accounts/login/", {})
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(static_root, ignore_errors=True)

    assert static.status == 200
    assert "immutable" in (static.getheader("Cache-Control") or "")
    assert plain.status == 301 and plain.getheader("Location", "").startswith("https://")
    log = log_path.read_text()
    assert "must consume synchronous iterators" not in log, log


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(
    port: int, path: str, headers: dict[str, str], server: subprocess.Popen, log_path: Path
) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited:\n{log_path.read_text()}", pytrace=False)
        try:
            response = _http_get(port, path, headers)
        except OSError:
            time.sleep(0.2)
            continue
        assert response.status == 200, f"{path}: {response.status}\n{log_path.read_text()}"
        return response.body.decode()  # type: ignore[attr-defined]
    pytest.fail(f"the server did not answer in 120 s:\n{log_path.read_text()}", pytrace=False)
