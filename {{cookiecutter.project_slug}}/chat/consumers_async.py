"""The chat socket: one connection watching one conversation.

A reply streams in its own task, so this connection keeps reading frames (Stop among
them) while the model writes. Chunks go straight to the socket that asked; other
connections watching the conversation get a snapshot a few times a second through the
channel layer, sent from this connection's outbox (chat/fanout.py): the reply never
waits on the layer, and a layer outage costs it nothing. Its text is written back every
second (chat/checkpoints.py), and it outlives this socket for a while, for a reloaded page
(chat/resume.py).
"""

import asyncio
import logging

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
{%- if cookiecutter.channel_layer == "redis" %}
from redis.exceptions import RedisError
{%- endif %}

from . import fragments, limits, services
from .batching import Batch
from .checkpoints import checkpoints
from .fanout import Fanout, leave_layer, renew_membership
from .frames import FrameError, parse_frame, storable_text
from .llm import ChatMessage, ProviderError, get_chat_model
from .models import Message
from .presence import Presence
from .resume import keep_reply
from .streaming import Every, FrameBuffer

logger = logging.getLogger(__name__)

CLOSE_SIGNED_OUT = 4401  # htmx's ws extension does not reconnect on it
FAILED = "Something went wrong while writing the reply. Retry in a moment."
TOO_LONG = "The reply ran past the time limit and was cut off."
NOT_STORED = "The reply could not be saved: the database is not answering. Retry in a moment."
UNEXPECTED = "Something went wrong with that request. Try again in a moment."
SIGNED_OUT = "You have been signed out. Sign in again to go on."

# Replies being written in this process, by conversation id, so Stop from any tab finds them.
replies: dict[int, asyncio.Task] = {}
# The turns starting and the replies ending at the same moment, each kind stored in one trip
# to the database thread (chat/batching.py).
begin_turn = Batch(services.begin_turns)
finish_reply = Batch(services.finish_replies)
{%- if cookiecutter.channel_layer == "redis" %}
# Whether the last connection refused for a Redis outage was logged: one line per outage.
outage_logged = False
{%- endif %}


class ChatConsumer(AsyncWebsocketConsumer):
    live = False  # True while the socket is open and accepted
    reply_task: asyncio.Task | None = None  # the reply this connection asked for

    async def __call__(self, scope, receive, send) -> None:
        """Channels' consumer loop; whatever ends it, the connection leaves the channel layer
        (chat/layers.py: Channels alone may leave its channel behind).
{%- if cookiecutter.channel_layer == "redis" %}

        While Redis is unreachable the handshake is refused, and the page reconnects by
        itself. Channels subscribes this connection's channel before connect() runs, so with
        Redis down the error comes from here. A refused handshake reaches the browser as close
        code 1006, on which htmx's ws extension reconnects, under uvicorn and daphne alike
        (daphne refuses to send 1013, "try again later"). The page shows "Reconnecting...".
{%- endif %}
        """
{%- if cookiecutter.channel_layer == "redis" %}
        global outage_logged
{%- endif %}
        try:
            await super().__call__(scope, receive, send)
{%- if cookiecutter.channel_layer == "redis" %}
        except (OSError, RedisError) as error:
            if hasattr(self, "group"):
                raise  # the connection was up: not an outage at connect time
            if not outage_logged:
                outage_logged = True
                logger.warning("Channel layer unreachable, refusing connections: %r", error)
            await send({"type": "websocket.close"})
{%- endif %}
        finally:
            if hasattr(self, "channel_name"):  # also when connect() failed halfway
                groups = list(self.fanout.groups) if hasattr(self, "fanout") else []
                await leave_layer(self.channel_layer, self.channel_name, groups)

    async def dispatch(self, message: dict) -> None:
        """Channels' dispatch, without its trip to the database thread before every message.

        AsyncConsumer.dispatch awaits aclose_old_connections() before each frame and each
        channel-layer message: a hop through the one database thread per chunk a watcher
        receives. This consumer touches the database only through database_sync_to_async
        (and Batch, which uses it), which closes stale connections before and after.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.conversation = await database_sync_to_async(services.conversation_of)(
            self.scope["user"], conversation_id
        )
        if self.conversation is None:
            # Anonymous, someone else's or missing: one answer, so nothing leaks.
            await self.close(code=4403)
            return
        self.limits = limits.ConnectionLimits(self.scope["user"].pk)
        if refusal := self.limits.admit():
            await self.accept()
            await self.send(text_data=fragments.error(refusal))
            await self.close(code=limits.CLOSE_OVER_LIMIT)
            return
        self.live = True
        await self.channel_layer.group_add(self.conversation.group_name, self.channel_name)
        self.group = self.conversation.group_name
{%- if cookiecutter.channel_layer == "redis" %}
        global outage_logged
        if outage_logged:
            outage_logged = False
            logger.warning("Channel layer reachable again: accepting connections")
{%- endif %}
        self.fanout = Fanout(
            asyncio.get_running_loop(),
            self.channel_layer,
            self.channel_name,
            self.group,
            on_change=self.fanout_changed,
        )
        self.presence = Presence(self.fanout)
        self.membership = asyncio.create_task(renew_membership(self.fanout))
        try:
            await self.accept()
        except OSError:  # the client left during the handshake (uvicorn's ClientDisconnected)
            await self.disconnect(1006)  # Channels only calls it for a socket that opened
            raise
        self.presence.announce("joined")

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "limits"):
            self.limits.release()
        if not hasattr(self, "group"):
            return
        self.live = False
        self.presence.announce("left")
        self.fanout.close()
        self.membership.cancel()
        if self.reply_task and not self.reply_task.done():
            # Maybe a reload: the reply goes on while a tab may come back (chat/resume.py).
            keeper = asyncio.create_task(
                keep_reply(
                    self.channel_layer,
                    self.group,
                    self.presence.watchers,
                    stop=self.reply_task.cancel,
                    grace=settings.CHAT_RESUME_GRACE,
                )
            )
            self.reply_task.add_done_callback(lambda _: keeper.cancel())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        if not self.live:  # refused at connect, or already closing
            return
        if (refusal := self.limits.refuse_frame()) is not None:
            if refusal:
                await self.send_live(fragments.error(refusal))
            return
        try:
            frame = parse_frame(
                text_data,
                bytes_data,
                conversation_id=self.conversation.pk,
                max_length=settings.CHAT_MAX_MESSAGE_LENGTH,
                max_bytes=settings.CHAT_MAX_FRAME_BYTES,
            )
            # Every frame that acts checks that the session still signs its user in; a
            # message checks it in the same trip to the database that starts its turn.
            if frame.action == "send":
                await self.ask(frame.message)
            elif not await database_sync_to_async(services.signed_in)(self.scope):
                raise services.SignedOut
            elif frame.action == "stop":
                await self.stop()
            else:
                await self.retry()
        except FrameError as error:
            await self.send_live(fragments.error(str(error)))
        except services.SignedOut:
            # Logged out, a new password or deactivated since the socket opened.
            await self.send_live(fragments.error(SIGNED_OUT))
            self.live = False
            await self.close(code=CLOSE_SIGNED_OUT)
        except services.CONNECTION_ERRORS:
            logger.warning("Frame on conversation %s: the database failed", self.conversation.pk)
            await self.send_live(fragments.error(services.NOT_SAVED))
        except Exception:
            # Whatever went wrong, this connection (and any reply it streams) lives on.
            logger.exception("Frame on conversation %s failed", self.conversation.pk)
            await self.send_live(fragments.error(UNEXPECTED))

    async def ask(self, text: str) -> None:
        try:
            turn = await begin_turn(services.NewTurn(self.conversation, text, self.scope))
        except services.Refused as refused:
            await self.send_live(fragments.error(str(refused)))
            return
        reply = turn.reply
        await self.show(fragments.turn(turn.question, reply), key=f"turn-{reply.pk}")
        if reply.conversation.title != self.conversation.title:
            self.conversation = reply.conversation
            await self.show(fragments.title(self.conversation), key="title")
        self.start_reply(reply, turn.history)

    async def retry(self) -> None:
        try:
            reply = await database_sync_to_async(services.start_retry)(self.conversation)
        except services.Refused as refused:
            await self.send_live(fragments.error(str(refused)))
            return
        await self.show(fragments.turn(None, reply), key=f"turn-{reply.pk}")
        self.start_reply(reply)

    async def stop(self) -> None:
        reply = replies.get(self.conversation.pk)
        if reply:
            reply.cancel()
        else:  # the reply may be written by a connection in another process
            self.broadcast("stop", "chat.stop")

    def start_reply(self, reply: Message, history: list[ChatMessage] | None = None) -> None:
        key = self.conversation.pk
        writer = self.write_reply(reply, history)
        task = replies[key] = self.reply_task = asyncio.create_task(writer)

        def forget(done: asyncio.Task) -> None:
            if replies.get(key) is done:
                del replies[key]

        task.add_done_callback(forget)

    async def write_reply(self, reply: Message, history: list[ChatMessage] | None) -> None:
        """Stream the reply; history is what the model is given (read here when None)."""
        live = fragments.live_for(reply)
        frames = FrameBuffer(settings.CHAT_FRAME_INTERVAL)
        snapshots = Every(settings.CHAT_FANOUT_INTERVAL)
        parts: list[str] = []
        status, error = Message.Status.COMPLETE, ""
        stream = None
        checkpoints.track(reply.pk, parts)  # its text is written back every second
        self.presence.listen()  # who watches: they get snapshots
        try:
            async with asyncio.timeout(settings.CHAT_GENERATION_TIMEOUT):
                if history is None:
                    history = await database_sync_to_async(services.model_input)(reply)
                stream = get_chat_model().stream(settings.CHAT_SYSTEM_PROMPT, history)
                async for piece in stream:
                    parts.append(storable_text(piece))  # nothing a page or the database refuses
                    if frames.add(piece):
                        await self.send_live(live("".join(parts)))
                    # Snapshots for the other tabs, or for a tab coming back after a reload.
                    if (self.presence.watchers or not self.live) and snapshots.due():
                        snapshot = live("".join(parts))
                        self.broadcast(f"message-{reply.pk}", "chat.html", html=snapshot)
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
        if frames.drain():  # the last pieces, so the bubble is whole before it finishes
            await self.send_live(live("".join(parts)))
        try:
            reply = await finish_reply(services.Ending(reply, "".join(parts), status, error))
        except Exception:  # the page still sees it end; the stored one soon shows interrupted
            logger.exception("Reply %s could not be stored", reply.pk)
            reply.status, reply.error = Message.Status.ERROR, NOT_STORED
        finally:
            checkpoints.forget(reply.pk)
        await self.show(fragments.finished(reply), key=f"message-{reply.pk}", replay=True)

    async def show(self, html: str, key: str, replay: bool = False) -> None:
        """Send to this socket and to every other connection watching the conversation.

        key names what the HTML updates on the page: a newer update replaces one still
        waiting in the outbox, and it is kept for watchers across a layer outage (sent
        again a while after it with replay, for HTML that replaces itself).
        """
        await self.send_live(html)
        # Sent whether or not others are known to watch: a tab that opened a moment ago
        # may not have been heard of yet. Only snapshots wait for watchers.
        self.broadcast(key, "chat.html", keep=True, replay=replay, html=html)

    async def send_live(self, html: str) -> None:
        if not self.live:
            return
        try:
            await self.send(text_data=html)
        except OSError:
            self.live = False  # the client went away; disconnect() follows

    def broadcast(
        self, key: str, type: str, keep: bool = False, replay: bool = False, **fields
    ) -> None:
        """Queue a message for the conversation's group; returns at once (chat/fanout.py)."""
        message = {"type": type, "sender": self.channel_name, **fields}
        self.fanout.put(key, message, keep=keep, replay=replay)

    async def fanout_changed(self, up: bool) -> None:
        """Tell this page once when fan-out pauses and once when it resumes."""
        await self.send_live(fragments.live_status(up))
        if up:
            self.presence.reconnected()

    # Channel-layer messages from other connections on this conversation.

    async def chat_presence(self, event: dict) -> None:
        self.presence.heard(event)

    async def chat_html(self, event: dict) -> None:
        if event["sender"] != self.channel_name:
            await self.send_live(event["html"])

    async def chat_stop(self, event: dict) -> None:
        reply = replies.get(self.conversation.pk)
        if reply:
            reply.cancel()
