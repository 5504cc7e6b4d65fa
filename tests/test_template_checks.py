"""The template repository's own pre-commit configuration passes on every file it ships."""

from __future__ import annotations

import re
import sys

from helpers import assert_succeeds, template_git_repo

# Hooks that must have run on files (not "(no files to check) Skipped").
HOOKS_THAT_MUST_RUN = [
    "ruff check",
    "ruff format",
    "check yaml",
    "GitHub workflows (JSON schema)",
    "actionlint (GitHub workflows)",
]


def test_template_repository_passes_its_pre_commit_hooks() -> None:
    repo = template_git_repo()  # the shippable files, committed: pre-commit needs git
    command = [sys.executable, "-m", "pre_commit", "run", "--all-files", "--show-diff-on-failure"]
    result = assert_succeeds([*command, "--color=never"], repo)

    for hook in HOOKS_THAT_MUST_RUN:
        assert re.search(rf"^{re.escape(hook)}\.+Passed$", result.output, re.MULTILINE), (
            result.describe()
        )
