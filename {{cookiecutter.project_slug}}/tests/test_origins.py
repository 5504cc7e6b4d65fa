"""A socket opens only for pages of this site's exact origins: scheme, host and port.

The same origins Django's CSRF check accepts on HTTP (request host, CSRF_TRUSTED_ORIGINS).
"""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from config.origins import origin_allowed

from .conftest import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def handshake(host: str, scheme: str = "ws", headers: tuple = ()) -> dict:
    return {
        "type": "websocket",
        "scheme": scheme,
        "path": "/ws/chat/1/",
        "headers": [(b"host", host.encode()), *headers],
    }


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://localhost", "localhost", "ws", True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws", True),
        ("https://localhost", "localhost", "wss", True),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", "ws", False),  # another port
        ("http://127.0.0.1", "127.0.0.1:8000", "ws", False),  # default port is another port
        ("https://localhost", "localhost", "ws", False),  # another scheme
        ("http://localhost", "localhost", "wss", False),
        ("http://evil.example", "localhost", "ws", False),
        ("http://localhost", "evil.example", "ws", False),  # Host not in ALLOWED_HOSTS
        ("null", "localhost", "ws", False),
    ],
)
def test_an_origin_is_allowed_only_when_scheme_host_and_port_match(origin, host, scheme, allowed):
    assert origin_allowed(origin, handshake(host, scheme)) is allowed


def test_behind_a_tls_proxy_the_forwarded_scheme_counts_as_django_reads_it(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = handshake("localhost", "ws", ((b"x-forwarded-proto", b"https"),))

    assert origin_allowed("https://localhost", proxied)
    assert not origin_allowed("http://localhost", proxied)


def test_csrf_trusted_origins_are_trusted_exactly_and_by_subdomain_pattern(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com", "https://*.example.org"]
    scope = handshake("localhost")

    assert origin_allowed("https://app.example.com", scope)
    assert not origin_allowed("https://app.example.com:8443", scope)
    assert not origin_allowed("http://app.example.com", scope)
    assert origin_allowed("https://chat.example.org", scope)
    assert not origin_allowed("http://chat.example.org", scope)
    assert not origin_allowed("https://example.org.evil.com", scope)


async def open_socket(user, conversation_id, host: bytes, origin: bytes | None):
    headers = [(b"host", host), (b"cookie", await sync_to_async(session_cookie)(user))]
    if origin is not None:
        headers.append((b"origin", origin))
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers)
    accepted, code = await socket.connect(timeout=5)
    await socket.disconnect(timeout=5)
    return accepted, code


@pytest.mark.parametrize(
    ("origin", "opens"),
    [
        (b"http://127.0.0.1:8000", True),
        (b"http://127.0.0.1:8001", False),
        (b"https://127.0.0.1:8000", False),
        (None, False),
    ],
    ids=["same-origin", "other-port", "other-scheme", "no-origin"],
)
async def test_the_socket_opens_only_for_the_pages_own_origin(user, conversation, origin, opens):
    accepted, _ = await open_socket(user, conversation.pk, b"127.0.0.1:8000", origin)
    assert accepted is opens
