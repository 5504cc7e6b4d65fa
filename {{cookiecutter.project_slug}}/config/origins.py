"""Which pages may open a WebSocket: exactly the origins Django's CSRF check accepts on HTTP.

Channels' AllowedHostsOriginValidator compares host names only, so a page served from
another port or scheme of an allowed host could open the socket with the user's cookies
(SameSite cookies ignore ports). This validator compares scheme, host and port, from the
settings the CSRF check reads, so a deployment configures them once:

- the request's own origin: its Host (validated against ALLOWED_HOSTS, X-Forwarded-Host
  under USE_X_FORWARDED_HOST) and its scheme (wss is https; SECURE_PROXY_SSL_HEADER is
  honoured), as ``request.get_host()`` and ``request.is_secure()`` compute them;
- CSRF_TRUSTED_ORIGINS: exact origins, and ``https://*.example.com`` for subdomains.

It mirrors ``CsrfViewMiddleware._origin_verified`` (django/middleware/csrf.py) and
https://docs.djangoproject.com/en/6.1/ref/settings/#csrf-trusted-origins. A handshake
without an Origin header (not a browser) or from any other origin is refused with HTTP 403
before the session is read.
"""

import io
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.utils.http import is_same_domain

HTTP_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def handshake_request(scope: dict) -> ASGIRequest:
    """The handshake as a Django request, so Host and scheme follow Django's own rules."""
    http_scope = {
        **scope,
        "type": "http",
        "method": "GET",
        "scheme": HTTP_SCHEMES.get(scope.get("scheme", "ws"), "http"),
    }
    return ASGIRequest(http_scope, io.BytesIO())


def origin_of(scope: dict) -> str | None:
    """The Origin header of a handshake, or None when it has none (or it is not text)."""
    for name, value in scope.get("headers", []):
        if name == b"origin":
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


def origin_allowed(origin: str, scope: dict) -> bool:
    """True when ``origin`` ("scheme://host[:port]") may open a socket for this handshake."""
    request = handshake_request(scope)
    try:
        own = f"{'https' if request.is_secure() else 'http'}://{request.get_host()}"
    except DisallowedHost:
        pass
    else:
        if origin == own:
            return True
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in {exact for exact in trusted if "*" not in exact}:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        for pattern in map(urlsplit, (wild for wild in trusted if "*" in wild))
        if pattern.scheme == parsed.scheme
    )


class SameOriginValidator:
    """ASGI middleware for the websocket protocol: refuses handshakes from other origins."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator only handles WebSocket connections.")
        origin = origin_of(scope)
        if origin is not None and origin_allowed(origin, scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
