"""Remove the files of the options that were not chosen, write a local .env, start a git
repository and lock the dependencies (when git and uv are there)."""

import secrets
import shutil
import subprocess
import sys
from pathlib import Path

CONSUMER = {{ cookiecutter.consumer | tojson }}
CHANNEL_LAYER = {{ cookiecutter.channel_layer | tojson }}
LLM_PROVIDER = {{ cookiecutter.llm_provider | tojson }}

PROVIDERS = ("openai", "anthropic", "gemini", "ollama")
CONSUMERS = ("async", "sync")


def remove(*paths: str) -> None:
    for path in map(Path, paths):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def keep_chosen_consumer() -> None:
    for consumer in CONSUMERS:
        if consumer != CONSUMER:
            remove(f"chat/consumers_{consumer}.py")
    Path(f"chat/consumers_{CONSUMER}.py").rename("chat/consumers.py")
    if CONSUMER != "async":  # the async consumer's group commit
        remove("chat/batching.py", "tests/test_batching.py")


def remove_other_provider_files() -> None:
    for provider in PROVIDERS:
        if provider != LLM_PROVIDER:
            remove(f"chat/llm/{provider}_chat.py", f"tests/test_{provider}_chat.py")


def remove_redis_files() -> None:
    remove("tests/test_redis_layer.py", "tests/e2e/test_redis_outage.py")


def remove_in_memory_layer_files() -> None:
    remove("tests/test_in_memory_layer.py")


def write_env_file() -> None:
    """Start from the documented example, with a secret key of this project's own."""
    example = Path(".env.example").read_text()
    key = secrets.token_urlsafe(50)
    Path(".env").write_text(example.replace("DJANGO_SECRET_KEY=change-me", f"DJANGO_SECRET_KEY={key}"))


def find_uv() -> str | None:
    """uv on PATH, or the one installed next to cookiecutter (pip install uv)."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return None


def init_git_repository() -> None:
    """A git repository, as `uv init` makes one: pre-commit needs it (nothing is committed)."""
    git = shutil.which("git")
    if git is None:
        print("Note: git not found; run `git init` before `pre-commit install`.", file=sys.stderr)
        return
    subprocess.run([git, "init", "--quiet"], check=True)


def lock_dependencies() -> None:
    """Write uv.lock, so every machine and CI install the same versions (uv sync --locked).

    https://docs.astral.sh/uv/concepts/projects/sync/
    """
    uv = find_uv()
    if uv is None:
        print("Note: uv not found; `uv lock` will write uv.lock.", file=sys.stderr)
        return
    result = subprocess.run([uv, "lock", "--quiet"], capture_output=True, text=True)
    if result.returncode != 0:
        # Offline, say: the project is complete, and the first `uv run` writes the lock.
        print(f"Note: `uv lock` failed; run it again later.\n{result.stderr}", file=sys.stderr)


def main() -> None:
    keep_chosen_consumer()
    remove_other_provider_files()
    if CHANNEL_LAYER == "redis":
        remove_in_memory_layer_files()
    else:
        remove_redis_files()
    write_env_file()
    init_git_repository()
    lock_dependencies()


if __name__ == "__main__":
    main()
