"""The update path: a project made with cruft pulls in a later change of the template."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from helpers import shippable_template

GIT = ["git", "-c", "user.name=Template tests", "-c", "user.email=tests@example.com"]
CHANGE = "\nA line the template added after the project was generated.\n"


def git(*args: str, cwd: Path) -> None:
    subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True)


def test_cruft_update_applies_a_template_change_and_keeps_the_projects_own_files(
    tmp_path: Path, cookiecutter_config: Path
) -> None:
    from cruft import check, create, update

    template = tmp_path / "template"
    shutil.copytree(shippable_template(), template)
    git("init", "-q", cwd=template)
    git("add", "-A", cwd=template)
    git("commit", "-q", "-m", "first", cwd=template)

    project = create(
        str(template), output_dir=tmp_path / "out", config_file=cookiecutter_config, no_input=True
    )
    git("add", "-A", cwd=project)  # the newcomer's first commit (.env is ignored)
    git("commit", "-q", "-m", "generated", cwd=project)
    secret = (project / ".env").read_text()
    lock = (project / "uv.lock").read_text()

    readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(readme.read_text() + CHANGE)
    git("commit", "-q", "-am", "second", cwd=template)

    assert not check(project), "cruft check missed the template's new commit"
    assert update(project, skip_apply_ask=True)

    assert (project / "README.md").read_text().endswith(CHANGE)
    assert check(project)
    assert (project / ".env").read_text() == secret, "the update replaced the project's .env"
    assert (project / "uv.lock").read_text() == lock, "the update replaced the project's lock"
