"""Every combination of the template's choices generates a clean project that works.

Each combination's tests share one generated project (and, from the uv sync on, its own
venv), so they run in the order written: first what the template rendered, then what the
generated project's own tools say about it. Select one combination with, for example,
    python -m pytest tests/test_matrix.py -k "[sync-redis-openai]"
(the brackets keep "sync-..." from also matching "async-...").
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    COMBOS,
    PROVIDER_SDKS,
    TEMPLATE_DIR,
    Combo,
    assert_succeeds,
    generate_project,
    project_env,
    project_files,
    redis_unreachable_reason,
    redis_url_for,
    run,
    uv_bin,
)

pytestmark = pytest.mark.parametrize(
    "combo", [pytest.param(combo, id=combo.id) for combo in COMBOS], indirect=True, scope="session"
)

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


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def combo(request: pytest.FixtureRequest) -> Combo:
    return request.param


@pytest.fixture(scope="session")
def project(
    combo: Combo, tmp_path_factory: pytest.TempPathFactory, cookiecutter_config: Path
) -> Iterator[Path]:
    """The project generated for this combination; removed when its tests are done."""
    output_dir = tmp_path_factory.mktemp(combo.id)
    generated = generate_project(output_dir, cookiecutter_config, **combo.context)
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
    """The generated project after `uv sync` made its own .venv with the dev group."""
    assert_succeeds([uv_bin(), "sync"], project, env)
    return project


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


def test_keeps_only_the_chosen_consumer_as_chat_consumers(project: Path) -> None:
    assert (project / "chat" / "consumers.py").is_file()
    leftovers = [
        p.relative_to(project).as_posix()
        for name in ("consumers_async.py", "consumers_sync.py")
        for p in project.rglob(name)
    ]
    assert leftovers == []


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
    else:
        assert mentions == {"channels_redis": [], "REDIS_URL": []}
        assert not (project / "tests" / "test_redis_layer.py").exists()


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


def test_generated_projects_database_edge_cases_pass_on_postgresql(
    synced: Path, env: dict[str, str]
) -> None:
    """The tests marked postgres (NUL characters, the rate limit across processes and
    connections) on a real PostgreSQL, in a test database of this run's own that pytest-django
    creates and drops."""
    server = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
    name = f"matrix_{uuid.uuid4().hex[:12]}"
    result = assert_succeeds(
        [uv_bin(), "run", "pytest", "-m", "postgres", "-p", "no:cacheprovider"],
        synced,
        {**env, "DATABASE_URL": f"{server}/{name}"},
    )
    assert re.search(r"\b\d+ passed\b", result.output), result.describe()
    assert not re.search(r"\b\d+ (skipped|failed|error)", result.output), result.describe()
    assert "Error when trying to teardown test databases" not in result.output, result.describe()


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
