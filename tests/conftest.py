"""Fixtures for the template's own test suite.

The suite generates projects from the template in this repository with cookiecutter's
Python API and runs the generated projects' own tooling (uv, Django, pytest) on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import generate_project

# --------------------------------------------------------------------------- generation


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cookiecutter user config that keeps replay files out of the user's home."""
    base = tmp_path_factory.mktemp("cookiecutter-home")
    config = base / "config.yaml"
    config.write_text(
        f"cookiecutters_dir: {json.dumps(str(base / 'cookiecutters'))}\n"
        f"replay_dir: {json.dumps(str(base / 'replay'))}\n"
    )
    return config


@pytest.fixture
def generate(cookiecutter_config: Path):
    """generate(output_dir, **extra_context) -> the generated project's directory."""

    def _generate(output_dir: Path, **extra_context: str) -> Path:
        return generate_project(output_dir, cookiecutter_config, **extra_context)

    return _generate


# --------------------------------------------------------------------------- xdist


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Send all tests of one template combination to the same xdist worker.

    The matrix tests of one combination share a generated project and its venv through
    session-scoped fixtures; split across workers, each worker would build them again.
    (xdist's own --dist loadgroup does this by rewriting node ids, which pytest 9.2 no
    longer allows, so group here by the parametrization id instead.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class CombinationScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if "[" in nodeid and nodeid.endswith("]"):
                return nodeid[nodeid.rindex("[") :]
            return nodeid

    return CombinationScheduling(config, log)
