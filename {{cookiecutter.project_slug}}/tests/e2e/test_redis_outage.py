"""Redis goes away while a reply streams: the asking tab keeps its reply, others catch up."""

import socket
import threading
from collections.abc import Iterator
from contextlib import suppress
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from playwright.sync_api import expect

from . import chat
from .chat import send, sign_up, wait_connected, wait_finished
from .conftest import Server

pytestmark = pytest.mark.e2e

LONG = "Tell me everything. " + "This reply goes on while Redis goes away. " * 8


class RedisRelay:
    """A TCP relay to the real Redis, in a thread, that a test can cut and restore."""

    def __init__(self, target: str) -> None:
        url = urlsplit(target)
        self.target = (url.hostname or "127.0.0.1", url.port or 6379)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = urlunsplit(url._replace(netloc=f"127.0.0.1:{self.listener.getsockname()[1]}"))
        self.up = True
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(source, sink), daemon=True).start()

    def pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for connection in self.sockets:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def relay() -> Iterator[RedisRelay]:
    address = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"]
    relay = RedisRelay(address)
    yield relay
    relay.close()


@pytest.fixture
def relayed_server(tmp_path_factory, results_dir, relay) -> Iterator[Server]:
    """A server of this test's own, whose channel layer reaches Redis through the relay."""
    server = Server(tmp_path_factory.mktemp("e2e-relayed"), results_dir / "server-relayed.log")
    server.env["REDIS_URL"] = relay.url
    server.migrate()
    server.start()
    yield server
    server.stop()


def test_a_redis_outage_spanning_a_reply_end_costs_the_reply_nothing_and_tabs_catch_up(
    browsing, relayed_server, relay, monkeypatch
):
    browsing.server = relayed_server
    monkeypatch.setattr(chat, "mailbox", relayed_server.mailbox)  # its sign-up mail
    sender = browsing.page()
    sign_up(sender)
    watcher = browsing.page(sender.context)
    watcher.goto(sender.url)
    wait_connected(watcher)
    wait_finished(watcher, send(sender, "Hello"))  # both tabs hear each other

    reply = send(sender, LONG)
    expect(watcher.locator(f"#{reply}")).to_be_attached()
    relay.cut()

    # The asking tab gets its whole reply, and one notice that the other tabs miss out.
    wait_finished(sender, reply)
    expect(sender.locator(f"#{reply}")).to_have_class("message assistant complete")
    expect(sender.locator(".live-status.down")).to_have_count(1)
    expect(sender.locator(".live-status.down")).to_be_visible()

    # The other tab heard nothing of the end; it checks the stalled reply by itself.
    wait_finished(watcher, reply, timeout=60)  # generous: checks every few seconds
    expect(watcher.locator(f"#{reply}")).to_have_class("message assistant complete")
    expect(watcher.locator("#stop-form")).to_be_hidden()

    relay.restore()
    # The sender hears that fan-out is back (its outbox retries at least every 10 s), and a
    # tab opened now follows the conversation live again.
    expect(sender.locator(".live-status.up")).to_have_count(1, timeout=60_000)
    watcher.reload()
    wait_connected(watcher)
    after = send(sender, "After the outage")
    wait_finished(watcher, after, timeout=60)
    expect(watcher.locator("#messages article.message.user").last).to_have_text("After the outage")
