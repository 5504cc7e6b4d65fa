"""One ASGI application for both protocols: Django for HTTP, Channels for WebSockets, and the
lifespan protocol for a shutdown that saves the replies still streaming."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

# Imported after Django is set up: the consumers use the ORM and templates.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.checkpoints import lifespan  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from config.origins import SameOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Refuses pages of other origins (scheme, host and port, as Django's CSRF check does)
        # and clients that send no Origin, before any auth work.
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        "lifespan": lifespan,
    }
)
