"""Generating without any choices gives the documented default combination."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import project_files

SECRET_LINE = re.compile(r"^DJANGO_SECRET_KEY=.*$", re.MULTILINE)


def _tree(project: Path) -> dict[str, bytes]:
    tree = {}
    for path in project_files(project):
        content = path.read_bytes()
        if path.name == ".env":  # its secret key is random on every generation
            content = SECRET_LINE.sub("DJANGO_SECRET_KEY=<random>", content.decode()).encode()
        tree[path.relative_to(project).as_posix()] = content
    return tree


def test_default_generation_is_the_async_in_memory_openai_combination(
    generate, tmp_path: Path
) -> None:
    default = generate(tmp_path / "default")
    explicit = generate(
        tmp_path / "explicit", consumer="async", channel_layer="in-memory", llm_provider="openai"
    )

    default_tree, explicit_tree = _tree(default), _tree(explicit)
    assert sorted(default_tree) == sorted(explicit_tree)
    differing = [name for name in default_tree if default_tree[name] != explicit_tree[name]]
    assert differing == []
