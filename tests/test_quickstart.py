"""The template README's Quick start, followed as written in a clean environment.

The commands are read from the README's Quick start block, so the README cannot drift from
what is tested. They run in a fresh virtual environment of the suite's own Python (one with
only pip in it: the README's first line installs uv from PyPI), in a copy of this repository,
with a PATH on which a pyenv-style `python3.12` shim is broken (the issue's stock machine)
and uv must find Python 3.13 by the generated project's `.python-version` (no UV_PYTHON).

Two departures, both forced by a shared machine: uv may not download a Python
(UV_PYTHON_DOWNLOADS=never; a Python 3.13 is on PATH instead), and the last command, the
development server, gets a free port instead of 8000.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import TEMPLATE_DIR, generated_python, shippable_template

SERVER_START_TIMEOUT = 15 * 60  # the first `uv run` installs every dependency
QUICK_START = re.compile(r"^## Quick start\n(.*?)^## ", re.MULTILINE | re.DOTALL)
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def quick_start_commands() -> list[str]:
    section = QUICK_START.search((TEMPLATE_DIR / "README.md").read_text())
    assert section, "README.md has no '## Quick start' section"
    block = SH_BLOCK.search(section.group(1))
    assert block, "the Quick start has no ```sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env(tmp_path: Path, venv: Path) -> dict[str, str]:
    """A newcomer's shell: the fresh venv active, a broken pyenv shim, Python 3.13 findable."""
    shims = tmp_path / "pyenv-shims"
    shims.mkdir()
    shim = shims / "python3.12"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    python = generated_python()
    if python is None:
        pytest.fail("no Python 3.12+ for the generated project: set UV_PYTHON", pytrace=False)
    path = [
        str(venv / "bin"),
        str(shims),
        str(Path(python).parent),
        "/usr/local/bin",
        "/usr/bin",
        "/bin",
    ]
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("UV_", "VIRTUAL_ENV", "PYTHON", "PYTEST_", "DJANGO_", "PIP_"))
        and not name.endswith("_API_KEY")
        and name not in {"REDIS_URL", "OLLAMA_HOST"}
    }
    env |= {
        "PATH": os.pathsep.join(path),
        "VIRTUAL_ENV": str(venv),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "UV_PYTHON_DOWNLOADS": "never",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    return env


def test_readme_quick_start_generates_and_serves_the_default_project(tmp_path: Path) -> None:
    commands = quick_start_commands()
    assert commands[0].startswith("pip install uv"), commands
    assert commands[-1] == "uv run manage.py devserver", commands

    clone = tmp_path / "work" / "template"
    shutil.copytree(shippable_template(), clone)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = clean_env(tmp_path, venv)

    port = free_port()
    script = "set -eux\n" + "\n".join([*commands[:-1], f"exec {commands[-1]} 127.0.0.1:{port}"])
    log_path = tmp_path / "quickstart.log"
    with log_path.open("w") as log:
        shell = subprocess.Popen(
            ["bash", "-c", script],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        page = wait_for_page(f"http://127.0.0.1:{port}/accounts/login/", shell, log_path)
        stylesheet = re.search(r'href="(/static/[^"]+\.css)"', page)
        assert stylesheet, page
        css = wait_for_page(f"http://127.0.0.1:{port}{stylesheet.group(1)}", shell, log_path)
    finally:
        stop(shell)

    project = tmp_path / "work" / "chat_project"
    assert (project / ".python-version").read_text().strip() == "3.13"
    assert (project / "uv.lock").is_file()
    venv_python = os.path.realpath(project / ".venv" / "bin" / "python")
    assert "3.13" in venv_python, f"uv picked {venv_python}, not .python-version's 3.13"
    assert "<title>" in page and "Chat Project" in page
    assert "{" in css, "the development server did not serve the stylesheet"


def wait_for_page(url: str, shell: subprocess.Popen, log_path: Path) -> str:
    """The page's HTML once the server answers; a failure shows the commands' output."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if shell.poll() is not None:
            pytest.fail(f"the Quick start stopped:\n{log_path.read_text()[-6000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except urllib.error.HTTPError as error:  # the server answers, wrongly
            pytest.fail(f"{url}: HTTP {error.code}\n{log_path.read_text()[-6000:]}", pytrace=False)
        except (urllib.error.URLError, OSError):  # not listening yet
            time.sleep(0.5)
    pytest.fail(f"no answer from {url}:\n{log_path.read_text()[-6000:]}", pytrace=False)


def stop(shell: subprocess.Popen) -> None:
    """SIGTERM to the whole session: uv, runserver and its autoreload child."""
    try:
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(timeout=10)
