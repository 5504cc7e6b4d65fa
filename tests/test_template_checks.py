"""The template repository's own pre-commit configuration passes on every file it ships."""

from __future__ import annotations

import re
import sys

from helpers import assert_succeeds, template_git_repo


def test_template_repository_passes_its_pre_commit_hooks() -> None:
    repo = template_git_repo()  # the shippable files, committed: pre-commit needs git
    command = [sys.executable, "-m", "pre_commit", "run", "--all-files", "--show-diff-on-failure"]
    result = assert_succeeds([*command, "--color=never"], repo)

    for hook in ("ruff check", "ruff format", "check yaml", "GitHub workflows (JSON schema)"):
        assert re.search(rf"^{re.escape(hook)}\.+Passed$", result.output, re.MULTILINE), (
            result.describe()
        )
