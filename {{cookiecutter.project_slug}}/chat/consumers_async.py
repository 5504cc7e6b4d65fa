"""The chat socket: one connection watching one conversation.

A reply streams in its own task, so this connection keeps reading frames (Stop among
them) while the model writes. Chunks go straight to the socket that asked; other
connections watching the conversation get a snapshot a few times a second through the
channel layer.
"""

import asyncio
import logging
{%- if cookiecutter.channel_layer == "redis" %}
from contextlib import suppress
{%- endif %}

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
{%- if cookiecutter.channel_layer == "redis" %}
from redis.exceptions import RedisError
{%- endif %}

from . import fragments, services
from .frames import FrameError, parse_frame
from .llm import ProviderError, get_chat_model
from .models import Message
from .streaming import Every, FrameBuffer

logger = logging.getLogger(__name__)

FAILED = "Something went wrong while writing the reply. Retry in a moment."
TOO_LONG = "The reply ran past the time limit and was cut off."
{%- if cookiecutter.channel_layer == "redis" %}
LAYER_DOWN = "Live updates to your other tabs are paused: Redis is unreachable."
UNAVAILABLE = "The chat cannot reach Redis right now. Reconnecting..."
{%- endif %}

# Replies being written in this process, by conversation id, so Stop from any tab finds them.
replies: dict[int, asyncio.Task] = {}


class ChatConsumer(AsyncWebsocketConsumer):
{%- if cookiecutter.channel_layer == "redis" %}
    async def __call__(self, scope, receive, send) -> None:
        """Explain a Redis outage to the page instead of failing the handshake.

        Channels subscribes this connection's channel before connect() runs, so with Redis
        down the error comes from here. Close code 1013 makes htmx reconnect later.
        """
        try:
            await super().__call__(scope, receive, send)
        except (OSError, RedisError):
            if hasattr(self, "group"):
                raise  # the connection was up: not an outage at connect time
            logger.exception("Channel layer unreachable: refusing a connection for now")
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": fragments.error(UNAVAILABLE)})
            await send({"type": "websocket.close", "code": 1013})
{% endif %}
    async def connect(self) -> None:
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.conversation = await database_sync_to_async(services.conversation_of)(
            self.scope["user"], conversation_id
        )
        if self.conversation is None:
            # Anonymous, someone else's or missing: one answer, so nothing leaks.
            await self.close(code=4403)
            return
        self.peers: set[str] = set()
        self.live = True
{%- if cookiecutter.channel_layer == "redis" %}
        self.layer_up = True
{%- endif %}
        await self.channel_layer.group_add(self.conversation.group_name, self.channel_name)
        self.group = self.conversation.group_name
        await self.accept()
        await self.broadcast("chat.presence", event="joined")

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "group"):
            return
        self.live = False
        await self.broadcast("chat.presence", event="left")
{%- if cookiecutter.channel_layer == "redis" %}
        with suppress(OSError, RedisError):  # Redis dropped it with the connection
            await self.channel_layer.group_discard(self.group, self.channel_name)
{%- else %}
        await self.channel_layer.group_discard(self.group, self.channel_name)
{%- endif %}
        reply = replies.get(self.conversation.pk)
        if reply and not self.peers:
            reply.cancel()  # nobody is left to read it: stop paying for tokens

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        try:
            frame = parse_frame(
                text_data,
                bytes_data,
                conversation_id=self.conversation.pk,
                max_length=settings.CHAT_MAX_MESSAGE_LENGTH,
            )
        except FrameError as error:
            await self.send_live(fragments.error(str(error)))
            return
        if frame.action == "stop":
            await self.stop()
        elif frame.action == "retry":
            await self.retry()
        else:
            await self.ask(frame.message)

    async def ask(self, text: str) -> None:
        try:
            question, reply = await database_sync_to_async(services.start_turn)(
                self.conversation, text
            )
        except services.Refused as refused:
            await self.send_live(fragments.error(str(refused)))
            return
        await self.show(fragments.turn(question, reply))
        if reply.conversation.title != self.conversation.title:
            self.conversation = reply.conversation
            await self.show(fragments.title(self.conversation))
        self.start_reply(reply)

    async def retry(self) -> None:
        try:
            reply = await database_sync_to_async(services.start_retry)(self.conversation)
        except services.Refused as refused:
            await self.send_live(fragments.error(str(refused)))
            return
        await self.show(fragments.turn(None, reply))
        self.start_reply(reply)

    async def stop(self) -> None:
        reply = replies.get(self.conversation.pk)
        if reply:
            reply.cancel()
        else:  # the reply may be written by a connection in another process
            await self.broadcast("chat.stop")

    def start_reply(self, reply: Message) -> None:
        key = self.conversation.pk
        task = replies[key] = asyncio.create_task(self.write_reply(reply))

        def forget(done: asyncio.Task) -> None:
            if replies.get(key) is done:
                del replies[key]

        task.add_done_callback(forget)

    async def write_reply(self, reply: Message) -> None:
        chunk = fragments.chunk_for(reply)
        frames = FrameBuffer(settings.CHAT_FRAME_INTERVAL)
        snapshots = Every(settings.CHAT_FANOUT_INTERVAL)
        parts: list[str] = []
        status, error = Message.Status.COMPLETE, ""
        stream = None
        try:
            async with asyncio.timeout(settings.CHAT_GENERATION_TIMEOUT):
                history = await database_sync_to_async(services.model_input)(reply)
                stream = get_chat_model().stream(settings.CHAT_SYSTEM_PROMPT, history)
                async for piece in stream:
                    parts.append(piece)
                    if text := frames.add(piece):
                        await self.send_live(chunk(text))
                    if self.peers and snapshots.due():
                        snapshot = fragments.snapshot(reply, "".join(parts))
                        await self.broadcast("chat.html", html=snapshot)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()
            status = Message.Status.STOPPED
        except TimeoutError:
            status, error = Message.Status.ERROR, TOO_LONG
        except ProviderError as exc:
            reply.detail = exc.detail or repr(exc.__cause__ or exc)  # for the operator
            logger.warning(
                "Reply %s failed at the provider (%s): %s", reply.pk, exc.reason, reply.detail
            )
            status, error = services.status_of(exc.reason), str(exc)
        except Exception:
            logger.exception("Reply %s failed", reply.pk)
            status, error = Message.Status.ERROR, FAILED
        finally:
            if stream is not None:
                await stream.aclose()  # closes the upstream HTTP stream
        if tail := frames.drain():
            await self.send_live(chunk(tail))
        reply = await database_sync_to_async(services.finish_reply)(
            reply, "".join(parts), status, error
        )
        await self.show(fragments.finished(reply))

    async def show(self, html: str) -> None:
        """Send to this socket and to every other connection watching the conversation."""
        await self.send_live(html)
        if self.peers:  # nobody else watching: the layer has nothing to carry
            await self.broadcast("chat.html", html=html)

    async def send_live(self, html: str) -> None:
        if not self.live:
            return
        try:
            await self.send(text_data=html)
        except OSError:
            self.live = False  # the client went away; disconnect() follows

    async def broadcast(self, type: str, **fields) -> None:
        message = {"type": type, "sender": self.channel_name, **fields}
{%- if cookiecutter.channel_layer == "redis" %}
        try:
            await self.channel_layer.group_send(self.group, message)
        except (OSError, RedisError) as error:
            await self.layer_failed(error)
        else:
            self.layer_up = True

    async def layer_failed(self, error: Exception) -> None:
        """Fan-out is lost, not the reply: say so once, log it, and keep streaming here."""
        if self.layer_up:
            self.layer_up = False
            logger.warning("Channel layer unreachable: %r", error)
            await self.send_live(fragments.error(LAYER_DOWN))
{%- else %}
        await self.channel_layer.group_send(self.group, message)
{%- endif %}

    # Channel-layer messages from other connections on this conversation.

    async def chat_presence(self, event: dict) -> None:
        sender = event["sender"]
        if sender == self.channel_name:
            return
        if event["event"] == "left":
            self.peers.discard(sender)
            return
        self.peers.add(sender)
        if event["event"] == "joined":
            here = {"type": "chat.presence", "event": "here", "sender": self.channel_name}
{%- if cookiecutter.channel_layer == "redis" %}
            try:
                await self.channel_layer.send(sender, here)
            except (OSError, RedisError) as error:
                await self.layer_failed(error)
{%- else %}
            await self.channel_layer.send(sender, here)
{%- endif %}

    async def chat_html(self, event: dict) -> None:
        if event["sender"] != self.channel_name:
            await self.send_live(event["html"])

    async def chat_stop(self, event: dict) -> None:
        reply = replies.get(self.conversation.pk)
        if reply:
            reply.cancel()
