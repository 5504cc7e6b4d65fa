"""The hooks: the slug and e-mail checks, the default slug, .env, git and uv.lock."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException

SECRET_LINE = re.compile(r"^DJANGO_SECRET_KEY=(.*)$", re.MULTILINE)

BAD_SLUGS = [
    pytest.param("My Project", "is not a valid package name", id="capitals-and-space"),
    pytest.param("1abc", "is not a valid package name", id="leading-digit"),
    pytest.param("class", "is a Python keyword", id="python-keyword"),
    pytest.param("django", "would shadow", id="shadows-django"),
    pytest.param("openai", "would shadow", id="shadows-openai-sdk"),
    pytest.param("test", "would shadow", id="shadows-stdlib-test"),
    pytest.param("json", "would shadow", id="shadows-stdlib-json"),
]


@pytest.mark.parametrize(("slug", "reason"), BAD_SLUGS)
def test_bad_slug_is_rejected_with_its_reason_and_nothing_is_left_behind(
    generate, tmp_path: Path, capfd: pytest.CaptureFixture[str], slug: str, reason: str
) -> None:
    with pytest.raises(FailedHookException):
        generate(tmp_path, project_slug=slug)

    # The hook runs in a subprocess that inherits the test's stderr file descriptor.
    stderr = capfd.readouterr().err
    assert f"ERROR: project_slug {slug!r} {reason}" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == [], "a rejected project must not be left on disk"


@pytest.mark.parametrize(
    ("project_name", "slug"),
    [
        pytest.param("Zoë's Chat", "zoe_s_chat", id="non-ascii-and-apostrophe"),
        pytest.param("123 Chat", "project_123_chat", id="leading-digit"),
        pytest.param("JSON", "json_project", id="stdlib-name"),
        pytest.param("Django", "django_project", id="dependency-name"),
    ],
)
def test_default_slug_from_any_project_name_is_accepted(
    generate, tmp_path: Path, project_name: str, slug: str
) -> None:
    project = generate(tmp_path, project_name=project_name)

    assert project == tmp_path / slug


def test_bad_email_is_rejected_with_its_reason(
    generate, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FailedHookException):
        generate(tmp_path, email="not an address")

    stderr = capfd.readouterr().err
    assert "ERROR: email 'not an address' is not an e-mail address" in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_project_starts_as_a_git_repository_with_a_uv_lock(generate, tmp_path: Path) -> None:
    project = generate(tmp_path)

    assert (project / ".git").is_dir()
    lock = (project / "uv.lock").read_text()
    assert 'name = "chat-project"' in lock  # the project itself, normalized
    assert 'name = "django"' in lock


def test_good_slug_generates_a_project_named_after_it(generate, tmp_path: Path) -> None:
    project = generate(tmp_path, project_slug="my_chat")

    assert project == tmp_path / "my_chat"
    assert 'name = "my_chat"' in (project / "pyproject.toml").read_text()


def _secret_key(env_file: Path) -> str:
    match = SECRET_LINE.search(env_file.read_text())
    assert match, f"{env_file.name} has no DJANGO_SECRET_KEY= line"
    return match.group(1).strip()


def test_env_file_gets_a_real_secret_key_and_otherwise_matches_the_example(
    generate, tmp_path: Path
) -> None:
    project = generate(tmp_path)

    assert (project / ".env").is_file()
    key = _secret_key(project / ".env")
    assert key not in {"", "change-me"}, "the .env secret key is still a placeholder"
    assert len(key) >= 50
    # Only the secret key line differs from the documented example.
    masked = SECRET_LINE.sub("DJANGO_SECRET_KEY=change-me", (project / ".env").read_text())
    assert masked == (project / ".env.example").read_text()


def test_env_example_keeps_the_change_me_placeholder(generate, tmp_path: Path) -> None:
    project = generate(tmp_path)

    assert _secret_key(project / ".env.example") == "change-me"


def test_each_generation_gets_a_different_secret_key(generate, tmp_path: Path) -> None:
    first = generate(tmp_path / "first")
    second = generate(tmp_path / "second")

    same = _secret_key(first / ".env") == _secret_key(second / ".env")
    assert not same, "two generated projects share one DJANGO_SECRET_KEY"
