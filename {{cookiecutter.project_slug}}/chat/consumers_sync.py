"""The chat socket: one connection watching one conversation, written as plain sync code.

Channels runs every sync consumer of a process in one shared thread, so a handler that
looped over a model's stream would make every other user wait (django/channels#2132).
Handlers here only do quick database work; each reply is written in a thread of its own
pool, where self.send() still reaches the socket through the event loop. Stop sets a
StopSignal that cancels the provider's stream at once, even while the provider is silent
(its socket is shut down under the blocked read), and the reply ends as stopped.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
{%- if cookiecutter.channel_layer == "redis" %}
from contextlib import suppress
{%- endif %}

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.generic.websocket import WebsocketConsumer
from django.conf import settings
{%- if cookiecutter.channel_layer == "redis" %}
from redis.exceptions import RedisError
{%- endif %}

from . import fragments, services
from .frames import FrameError, parse_frame
from .llm import ProviderError, get_chat_model
from .llm.base import StopSignal
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
replies: dict[int, StopSignal] = {}
reply_threads = ThreadPoolExecutor(
    max_workers=settings.CHAT_REPLY_THREADS, thread_name_prefix="chat-reply"
)


background: set[asyncio.Task] = set()


async def run_in_reply_thread(func, *args) -> None:
    """Start func in the reply pool and return at once; runs on the event loop."""
    write = database_sync_to_async(func, thread_sensitive=False, executor=reply_threads)
    task = asyncio.create_task(write(*args))
    background.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(background.discard)


class ChatConsumer(WebsocketConsumer):
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
    def connect(self) -> None:
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.conversation = services.conversation_of(self.scope["user"], conversation_id)
        if self.conversation is None:
            # Anonymous, someone else's or missing: one answer, so nothing leaks.
            self.close(code=4403)
            return
        self.peers: set[str] = set()
        self.live = True
{%- if cookiecutter.channel_layer == "redis" %}
        self.layer_up = True
{%- endif %}
        async_to_sync(self.channel_layer.group_add)(self.conversation.group_name, self.channel_name)
        self.group = self.conversation.group_name
        self.accept()
        self.broadcast("chat.presence", event="joined")

    def disconnect(self, code: int) -> None:
        if not hasattr(self, "group"):
            return
        self.live = False
        self.broadcast("chat.presence", event="left")
{%- if cookiecutter.channel_layer == "redis" %}
        with suppress(OSError, RedisError):  # Redis dropped it with the connection
            async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)
{%- else %}
        async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)
{%- endif %}
        stop = replies.get(self.conversation.pk)
        if stop and not self.peers:
            stop.set()  # nobody is left to read it: stop paying for tokens

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            frame = parse_frame(
                text_data,
                bytes_data,
                conversation_id=self.conversation.pk,
                max_length=settings.CHAT_MAX_MESSAGE_LENGTH,
            )
        except FrameError as error:
            self.send_live(fragments.error(str(error)))
            return
        if frame.action == "stop":
            self.stop()
        elif frame.action == "retry":
            self.retry()
        else:
            self.ask(frame.message)

    def ask(self, text: str) -> None:
        try:
            question, reply = services.start_turn(self.conversation, text)
        except services.Refused as refused:
            self.send_live(fragments.error(str(refused)))
            return
        self.show(fragments.turn(question, reply))
        if reply.conversation.title != self.conversation.title:
            self.conversation = reply.conversation
            self.show(fragments.title(self.conversation))
        self.start_reply(reply)

    def retry(self) -> None:
        try:
            reply = services.start_retry(self.conversation)
        except services.Refused as refused:
            self.send_live(fragments.error(str(refused)))
            return
        self.show(fragments.turn(None, reply))
        self.start_reply(reply)

    def stop(self) -> None:
        stop = replies.get(self.conversation.pk)
        if stop:
            stop.set()
        else:  # the reply may be written by a connection in another process
            self.broadcast("chat.stop")

    def start_reply(self, reply: Message) -> None:
        stop = replies[self.conversation.pk] = StopSignal()
        async_to_sync(run_in_reply_thread)(self.write_reply, reply, stop)

    def write_reply(self, reply: Message, stop: StopSignal) -> None:
        chunk = fragments.chunk_for(reply)
        frames = FrameBuffer(settings.CHAT_FRAME_INTERVAL)
        snapshots = Every(settings.CHAT_FANOUT_INTERVAL)
        parts: list[str] = []
        status, error = Message.Status.COMPLETE, ""
        stream = None
        deadline = time.monotonic() + settings.CHAT_GENERATION_TIMEOUT
        try:
            history = services.model_input(reply)
            stream = get_chat_model().stream(settings.CHAT_SYSTEM_PROMPT, history)
            stop.watch(stream)  # Stop cancels it at once, even while the provider is silent
            for piece in stream:
                if stop.is_set():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError
                parts.append(piece)
                if text := frames.add(piece):
                    self.send_live(chunk(text))
                if self.peers and snapshots.due():
                    snapshot = fragments.snapshot(reply, "".join(parts))
                    self.broadcast("chat.html", html=snapshot)
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
        if tail := frames.drain():
            self.send_live(chunk(tail))
        reply = services.finish_reply(reply, "".join(parts), status, error)
        self.show(fragments.finished(reply))

    def show(self, html: str) -> None:
        """Send to this socket and to every other connection watching the conversation."""
        self.send_live(html)
        if self.peers:  # nobody else watching: the layer has nothing to carry
            self.broadcast("chat.html", html=html)

    def send_live(self, html: str) -> None:
        if not self.live:
            return
        try:
            self.send(text_data=html)
        except OSError:
            self.live = False  # the client went away; disconnect() follows

    def broadcast(self, type: str, **fields) -> None:
        message = {"type": type, "sender": self.channel_name, **fields}
{%- if cookiecutter.channel_layer == "redis" %}
        try:
            async_to_sync(self.channel_layer.group_send)(self.group, message)
        except (OSError, RedisError) as error:
            self.layer_failed(error)
        else:
            self.layer_up = True

    def layer_failed(self, error: Exception) -> None:
        """Fan-out is lost, not the reply: say so once, log it, and keep streaming here."""
        if self.layer_up:
            self.layer_up = False
            logger.warning("Channel layer unreachable: %r", error)
            self.send_live(fragments.error(LAYER_DOWN))
{%- else %}
        async_to_sync(self.channel_layer.group_send)(self.group, message)
{%- endif %}

    # Channel-layer messages from other connections on this conversation.

    def chat_presence(self, event: dict) -> None:
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
                async_to_sync(self.channel_layer.send)(sender, here)
            except (OSError, RedisError) as error:
                self.layer_failed(error)
{%- else %}
            async_to_sync(self.channel_layer.send)(sender, here)
{%- endif %}

    def chat_html(self, event: dict) -> None:
        if event["sender"] != self.channel_name:
            self.send_live(event["html"])

    def chat_stop(self, event: dict) -> None:
        stop = replies.get(self.conversation.pk)
        if stop:
            stop.set()
