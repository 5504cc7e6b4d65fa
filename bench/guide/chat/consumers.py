"""The consumer the SaaS Pegasus guide teaches ("Learn to use Websockets with Django by
building your own ChatGPT", saaspegasus.com/guides/django-websockets-chatgpt-channels-htmx),
in its async form: history kept on the instance, no database, no auth, one frame per token,
render_to_string per message, Markdown rendered once at the end.

Two departures, neither a cost: the element ids and classes are the generated project's, so
that bench/client.py reads both the same way, and tokens are escaped (the guide sends them
raw).
"""

import json
import uuid
from html import escape

from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string
from markdown import markdown

from . import demo


def format_token(token: str) -> str:
    # Very basic formatting while tokens stream in, as the guide does.
    return escape(token).replace("\n", "<br>")


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.messages = []
        await self.accept()

    async def receive(self, text_data):
        message_text = json.loads(text_data)["message"]
        if not message_text.strip():
            return
        self.messages.append({"role": "user", "content": message_text})
        await self.send(
            text_data=render_to_string(
                "chat/websocket_partials/user_message.html", {"message_text": message_text}
            )
        )
        message_id = uuid.uuid4().hex
        contents_div_id = f"message-{message_id}-text"
        await self.send(
            text_data=render_to_string(
                "chat/websocket_partials/ai_message.html", {"message_id": message_id}
            )
        )
        chunks = []
        async for token in demo.stream(self.messages):
            chunks.append(token)
            await self.send(
                text_data=f'<div id="{contents_div_id}" hx-swap-oob="beforeend">'
                f"{format_token(token)}</div>"
            )
        reply = "".join(chunks)
        await self.send(
            text_data=f'<article id="message-{message_id}" class="message assistant complete" '
            f'hx-swap-oob="true"><div class="text">{markdown(reply)}</div></article>'
        )
        self.messages.append({"role": "assistant", "content": reply})
