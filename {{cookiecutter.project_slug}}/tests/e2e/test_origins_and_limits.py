"""Seen from a browser: only this site's exact origin opens the socket; big frames are refused.

A page on another port of the same host shares the user's cookies (cookies ignore ports, and
so does SameSite), so only the Origin check stands between it and the user's chat.
"""

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .chat import sign_up

pytestmark = pytest.mark.e2e

# Opens the chat socket from whatever page runs it and reports what happened.
PROBE = """([url, frame]) => new Promise(resolve => {
    const socket = new WebSocket(url);
    const result = {opened: false, received: [], code: null};
    socket.onopen = () => { result.opened = true; socket.send(frame); };
    socket.onmessage = event => { result.received.push(event.data); socket.close(); };
    socket.onclose = event => { result.code = event.code; resolve(result); };
})"""
HELLO = '{"message": "hello from the probe"}'


class OtherSite(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another port of the same host</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def other_port() -> Iterator[str]:
    """A page served from 127.0.0.1 on another port than the app's."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), OtherSite)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def socket_url(page) -> str:
    conversation = re.search(r"/chat/(\d+)/", page.url).group(1)
    return page.url.split("/chat/")[0].replace("http", "ws", 1) + f"/ws/chat/{conversation}/"


def test_a_page_on_another_port_of_the_same_host_cannot_open_the_socket(browsing, other_port):
    page = browsing.page()
    sign_up(page)
    url = socket_url(page)
    own = page.evaluate(PROBE, [url, HELLO])  # the app's own page: opens (the control)
    assert own["opened"] is True, own

    page.goto(other_port)  # same browser profile: the session cookie goes along
    other = page.evaluate(PROBE, [url, HELLO])

    assert other == {"opened": False, "received": [], "code": 1006}


def test_the_server_refuses_oversized_frames_and_the_consumer_explains_large_ones(browsing):
    page = browsing.page()
    sign_up(page)
    url = socket_url(page)

    large = page.evaluate(PROBE, [url, '{"message": "' + "x" * 100_000 + '"}'])
    assert large["opened"] and "the limit is 65536 bytes" in large["received"][0]
    assert large["code"] == 1005  # closed by the probe after the answer, not by the server

    huge = page.evaluate(PROBE, [url, '{"message": "' + "x" * 200_000 + '"}'])
    assert huge["opened"] and huge["received"] == []
    assert huge["code"] == 1009  # "message too big", closed by uvicorn before any parsing
