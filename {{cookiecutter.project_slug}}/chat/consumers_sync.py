"""The chat socket: one connection watching one conversation, written as plain sync code.

Channels runs every sync consumer of a process in one shared thread, so a handler that
looped over a model's stream would make every other user wait (django/channels#2132).
Handlers here only do quick database work; each reply is written in a thread of its own
pool, where self.send() still reaches the socket through the event loop. Stop sets a
StopSignal that cancels the provider's stream at once, even while the provider is silent
(its socket is shut down under the blocked read), and the reply ends as stopped. What
other connections watching the conversation should see goes into this connection's
outbox (chat/fanout.py), sent on the event loop: the reply never waits on the layer. Its
text is written back every second (chat/checkpoints.py), and it outlives this socket for a
while, for a reloaded page (chat/resume.py).
"""

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import WebsocketConsumer
from django import db
from django.conf import settings
{%- if cookiecutter.channel_layer == "redis" %}
from redis.exceptions import RedisError
{%- endif %}

from . import fragments, limits, services
from .checkpoints import checkpoints
from .fanout import Fanout, leave_layer, renew_membership
from .frames import FrameError, parse_frame, storable_text
from .llm import ProviderError, get_chat_model
from .llm.base import StopSignal
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
replies: dict[int, StopSignal] = {}
reply_threads = ThreadPoolExecutor(
    max_workers=settings.CHAT_REPLY_THREADS, thread_name_prefix="chat-reply"
)
{%- if cookiecutter.channel_layer == "redis" %}
# Whether the last connection refused for a Redis outage was logged: one line per outage.
outage_logged = False
{%- endif %}


background: set[asyncio.Task] = set()
exiting = threading.Event()  # set when the process exits: nothing more is sent


def stop_replies() -> None:
    """At exit (SIGTERM, a devserver reload), stop every reply so each is saved as stopped.

    Registered like concurrent.futures registers its own exit hook, which waits for the
    pool's threads: this one runs first (hooks run newest first), or exit would wait for
    every reply to end.
    """
    exiting.set()
    for stop in list(replies.values()):
        stop.set()


threading._register_atexit(stop_replies)  # noqa: SLF001


async def run_in_reply_thread(func, *args) -> None:
    """Start func in the reply pool and return at once; runs on the event loop."""
    write = database_sync_to_async(func, thread_sensitive=False, executor=reply_threads)
    task = asyncio.create_task(write(*args))
    background.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(background.discard)


class ChatConsumer(WebsocketConsumer):
    live = False  # True while the socket is open and accepted
    reply_stop: StopSignal | None = None  # stops the reply this connection asked for
    keeper: asyncio.Task | None = None  # keeps that reply going once the socket closed

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

    def connect(self) -> None:
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.conversation = services.conversation_of(self.scope["user"], conversation_id)
        if self.conversation is None:
            # Anonymous, someone else's or missing: one answer, so nothing leaks.
            self.close(code=4403)
            return
        self.limits = limits.ConnectionLimits(self.scope["user"].pk)
        if refusal := self.limits.admit():
            self.accept()
            self.send(text_data=fragments.error(refusal))
            self.close(code=limits.CLOSE_OVER_LIMIT)
            return
        self.live = True
        async_to_sync(self.channel_layer.group_add)(self.conversation.group_name, self.channel_name)
        self.group = self.conversation.group_name
{%- if cookiecutter.channel_layer == "redis" %}
        global outage_logged
        if outage_logged:
            outage_logged = False
            logger.warning("Channel layer reachable again: accepting connections")
{%- endif %}
        self.fanout = async_to_sync(self.open_fanout)()
        self.presence = Presence(self.fanout)
        try:
            self.accept()
        except OSError:  # the client left during the handshake (uvicorn's ClientDisconnected)
            self.disconnect(1006)  # Channels only calls it for a socket that opened
            raise
        self.presence.announce("joined")

    async def open_fanout(self) -> Fanout:
        """The outbox lives on the server's event loop, where the layer's sends run; so does
        the task that keeps this connection in its groups."""
        fanout = Fanout(
            asyncio.get_running_loop(),
            self.channel_layer,
            self.channel_name,
            self.group,
            on_change=self.fanout_changed,
        )
        self.membership = asyncio.create_task(renew_membership(fanout))
        return fanout

    def disconnect(self, code: int) -> None:
        if hasattr(self, "limits"):
            self.limits.release()
        if not hasattr(self, "group"):
            return
        self.live = False
        self.presence.announce("left")
        self.fanout.close()
        self.fanout.loop.call_soon_threadsafe(self.membership.cancel)
        if self.reply_stop is not None and replies.get(self.conversation.pk) is self.reply_stop:
            # Maybe a reload: the reply goes on while a tab may come back (chat/resume.py).
            self.keeper = async_to_sync(self.keep_reply)(self.reply_stop)

    async def keep_reply(self, stop: StopSignal) -> asyncio.Task:
        task = asyncio.create_task(
            keep_reply(
                self.channel_layer,
                self.group,
                self.presence.watchers,
                stop=stop.set,
                grace=settings.CHAT_RESUME_GRACE,
            )
        )
        background.add(task)
        task.add_done_callback(background.discard)
        return task

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.live:  # refused at connect, or already closing
            return
        if (refusal := self.limits.refuse_frame()) is not None:
            if refusal:
                self.send_live(fragments.error(refusal))
            return
        try:
            if not services.signed_in(self.scope):
                # Logged out, a new password or deactivated since the socket opened.
                self.send_live(fragments.error(SIGNED_OUT))
                self.live = False
                self.close(code=CLOSE_SIGNED_OUT)
                return
            frame = parse_frame(
                text_data,
                bytes_data,
                conversation_id=self.conversation.pk,
                max_length=settings.CHAT_MAX_MESSAGE_LENGTH,
                max_bytes=settings.CHAT_MAX_FRAME_BYTES,
            )
            if frame.action == "stop":
                self.stop()
            elif frame.action == "retry":
                self.retry()
            else:
                self.ask(frame.message)
        except FrameError as error:
            self.send_live(fragments.error(str(error)))
        except services.CONNECTION_ERRORS:
            logger.warning("Frame on conversation %s: the database failed", self.conversation.pk)
            self.send_live(fragments.error(services.NOT_SAVED))
        except Exception:
            # Whatever went wrong, this connection (and any reply it streams) lives on.
            logger.exception("Frame on conversation %s failed", self.conversation.pk)
            self.send_live(fragments.error(UNEXPECTED))

    def ask(self, text: str) -> None:
        try:
            question, reply = services.start_turn(self.conversation, text)
        except services.Refused as refused:
            self.send_live(fragments.error(str(refused)))
            return
        self.show(fragments.turn(question, reply), key=f"turn-{reply.pk}")
        if reply.conversation.title != self.conversation.title:
            self.conversation = reply.conversation
            self.show(fragments.title(self.conversation), key="title")
        self.start_reply(reply)

    def retry(self) -> None:
        try:
            reply = services.start_retry(self.conversation)
        except services.Refused as refused:
            self.send_live(fragments.error(str(refused)))
            return
        self.show(fragments.turn(None, reply), key=f"turn-{reply.pk}")
        self.start_reply(reply)

    def stop(self) -> None:
        stop = replies.get(self.conversation.pk)
        if stop:
            stop.set()
        else:  # the reply may be written by a connection in another process
            self.broadcast("stop", "chat.stop")

    def start_reply(self, reply: Message) -> None:
        stop = replies[self.conversation.pk] = self.reply_stop = StopSignal()
        async_to_sync(run_in_reply_thread)(self.write_reply, reply, stop)

    def write_reply(self, reply: Message, stop: StopSignal) -> None:
        live = fragments.live_for(reply)
        frames = FrameBuffer(settings.CHAT_FRAME_INTERVAL)
        snapshots = Every(settings.CHAT_FANOUT_INTERVAL)
        parts: list[str] = []
        status, error = Message.Status.COMPLETE, ""
        stream = None
        deadline = time.monotonic() + settings.CHAT_GENERATION_TIMEOUT
        checkpoints.track(reply.pk, parts)  # its text is written back every second
        self.presence.listen()  # who watches: they get snapshots
        try:
            history = services.model_input(reply)
            db.connection.close()  # back to the pool: no connection is held across the stream
            stream = get_chat_model().stream(settings.CHAT_SYSTEM_PROMPT, history)
            stop.watch(stream)  # Stop cancels it at once, even while the provider is silent
            for piece in stream:
                if stop.is_set():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError
                parts.append(storable_text(piece))  # nothing a page or the database refuses
                if frames.add(piece):
                    self.send_live(live("".join(parts)))
                # Snapshots for the other tabs, or for a tab coming back after a reload.
                if (self.presence.watchers or not self.live) and snapshots.due():
                    snapshot = live("".join(parts))
                    self.broadcast(f"message-{reply.pk}", "chat.html", html=snapshot)
            if stop.is_set():
                status = Message.Status.STOPPED
        except TimeoutError:
            status, error = Message.Status.ERROR, TOO_LONG
        except ProviderError as exc:
            if stop.is_set():  # Stop cut the upstream connection under the read
                status = Message.Status.STOPPED
            else:
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
                stream.close()  # closes the upstream HTTP stream
            if replies.get(self.conversation.pk) is stop:
                del replies[self.conversation.pk]
        if frames.drain():  # the last pieces, so the bubble is whole before it finishes
            self.send_live(live("".join(parts)))
        try:
            reply = services.finish_reply(reply, "".join(parts), status, error)
        except Exception:  # the page still sees it end; the stored one soon shows interrupted
            logger.exception("Reply %s could not be stored", reply.pk)
            reply.status, reply.error = Message.Status.ERROR, NOT_STORED
        finally:
            checkpoints.forget(reply.pk)
            if self.keeper is not None:
                with suppress(RuntimeError):  # the server's loop has closed
                    self.fanout.loop.call_soon_threadsafe(self.keeper.cancel)
        self.show(fragments.finished(reply), key=f"message-{reply.pk}", replay=True)

    def show(self, html: str, key: str, replay: bool = False) -> None:
        """Send to this socket and to every other connection watching the conversation.

        key names what the HTML updates on the page: a newer update replaces one still
        waiting in the outbox, and it is kept for watchers across a layer outage (sent
        again a while after it with replay, for HTML that replaces itself).
        """
        self.send_live(html)
        # Sent whether or not others are known to watch: a tab that opened a moment ago
        # may not have been heard of yet. Only snapshots wait for watchers.
        self.broadcast(key, "chat.html", keep=True, replay=replay, html=html)

    def send_live(self, html: str) -> None:
        """Send to this socket, from any thread but the event loop's.

        Waits until the server has taken the frame, like self.send(), but gives up when the
        process is exiting: a server that stopped its event loop (daphne on SIGTERM) would
        never take it, and exit waits for every reply thread.
        """
        if not self.live:
            return
        sent = asyncio.run_coroutine_threadsafe(self.send_frame(html), self.fanout.loop)
        while not exiting.is_set():
            try:
                sent.result(timeout=1)
                return
            except TimeoutError:
                continue  # a busy loop: wait on, unless the process is exiting
            except OSError:
                self.live = False  # the client went away; disconnect() follows
                return

    async def send_frame(self, html: str) -> None:
        # A sync consumer's base_send is the server's send wrapped in async_to_sync.
        await self.base_send.awaitable({"type": "websocket.send", "text": html})

    def broadcast(
        self, key: str, type: str, keep: bool = False, replay: bool = False, **fields
    ) -> None:
        """Queue a message for the conversation's group; returns at once (chat/fanout.py)."""
        message = {"type": type, "sender": self.channel_name, **fields}
        self.fanout.put(key, message, keep=keep, replay=replay)

    async def fanout_changed(self, up: bool) -> None:
        """Tell this page once when fan-out pauses and once when it resumes.

        Runs on the event loop, where sync send() cannot be called: hand it to a thread.
        """
        await sync_to_async(self.send_live, thread_sensitive=False)(fragments.live_status(up))
        if up:
            self.presence.reconnected()

    # Channel-layer messages from other connections on this conversation.

    def chat_presence(self, event: dict) -> None:
        self.presence.heard(event)

    def chat_html(self, event: dict) -> None:
        if event["sender"] != self.channel_name:
            self.send_live(event["html"])

    def chat_stop(self, event: dict) -> None:
        stop = replies.get(self.conversation.pk)
        if stop:
            stop.set()
