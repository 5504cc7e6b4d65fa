"""`manage.py devserver`, the Quick start's command, as a developer runs it."""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from typing import IO

from django.conf import settings

READY = "Quit the server with CONTROL-C."  # runserver's last line before it serves


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    """Puts each line of the stream on the queue as it is written, then "" at its end."""
    for line in stream:
        lines.put(line)
    lines.put("")


def test_devserver_migrates_once_then_serves_under_the_autoreloader(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_DEBUG": "true",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "manage.py", "devserver", f"127.0.0.1:{free_port()}"]
    process = subprocess.Popen(  # noqa: S603
        command,
        cwd=settings.BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the autoreloader's child too is stopped with it
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    output = []
    try:
        # Every line up to the one runserver prints when it serves, as each is written.
        while READY not in (line := lines.get(timeout=120)):  # generous: a busy machine
            assert line, "devserver stopped:\n" + "".join(output)
            output.append(line)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)

    log = "".join(output)
    assert "Watching for file changes" in log, log  # served by the autoreloader's child
    assert log.count("Operations to perform:") == 1, log
    assert "Applying chat.0001_initial... OK" in log, log
