"""Two users chatting at once are served at once, not one after the other."""

import asyncio
import json
import time

import pytest

from chat.models import Conversation

from .conftest import LIVE, read_reply, read_until

pytestmark = pytest.mark.django_db(transaction=True)


async def test_two_concurrent_streams_overlap_in_time(make_user, connect, scripted):
    scripted([f"t{i} " for i in range(20)], delay=0.05)  # about a second per reply
    sockets = []
    for name in ("ann", "bob"):
        user = await asyncio.to_thread(make_user, name)
        conversation = await Conversation.objects.acreate(owner=user)
        sockets.append(await connect(user, conversation.pk))

    async def chat(socket):
        await socket.send_to(json.dumps({"message": "go"}))
        await read_until(socket, LIVE)
        first_chunk = time.monotonic()
        await read_reply(socket)
        return first_chunk, time.monotonic()

    (first_a, end_a), (first_b, end_b) = await asyncio.gather(*(chat(s) for s in sockets))

    # Served one after the other, the second reply would start after the first ended.
    assert first_b < end_a
    assert first_a < end_b
