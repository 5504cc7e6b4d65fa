"""Remove the files of the options that were not chosen and write a local .env."""

import secrets
import shutil
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


def remove_other_provider_files() -> None:
    for provider in PROVIDERS:
        if provider != LLM_PROVIDER:
            remove(f"chat/llm/{provider}_chat.py", f"tests/test_{provider}_chat.py")


def remove_redis_files() -> None:
    remove("tests/test_redis_layer.py", "tests/e2e/test_redis_outage.py")


def write_env_file() -> None:
    """Start from the documented example, with a secret key of this project's own."""
    example = Path(".env.example").read_text()
    key = secrets.token_urlsafe(50)
    Path(".env").write_text(example.replace("DJANGO_SECRET_KEY=change-me", f"DJANGO_SECRET_KEY={key}"))


def main() -> None:
    keep_chosen_consumer()
    remove_other_provider_files()
    if CHANNEL_LAYER != "redis":
        remove_redis_files()
    write_env_file()


if __name__ == "__main__":
    main()
