"""Turns what the browser sends into a request the consumer can act on, or a clear error."""

import json
from dataclasses import dataclass
from typing import Literal

Action = Literal["send", "stop", "retry"]
ACTIONS: tuple[Action, ...] = ("send", "stop", "retry")


class FrameError(ValueError):
    """The frame cannot be acted on; the message is shown to the user."""


@dataclass(frozen=True)
class Frame:
    action: Action
    message: str = ""


def parse_frame(
    text_data: str | None, bytes_data: bytes | None, *, conversation_id: int, max_length: int
) -> Frame:
    if text_data is None:
        raise FrameError("Binary frames are not accepted; send text.")
    try:
        data = json.loads(text_data)
    except ValueError:
        raise FrameError("That frame was not valid JSON.") from None
    if not isinstance(data, dict):
        raise FrameError("A frame must be a JSON object.")

    conversation = data.get("conversation")
    if conversation is not None and str(conversation) != str(conversation_id):
        raise FrameError("That conversation is not open on this page. Reload to continue.")

    action = data.get("action", "send")
    if action not in ACTIONS:
        raise FrameError(f"Unknown action. Expected one of: {', '.join(ACTIONS)}.")
    if action != "send":
        return Frame(action=action)

    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        raise FrameError("Type a message before sending.")
    message = message.strip()
    if len(message) > max_length:
        raise FrameError(
            f"That message is {len(message)} characters long; the limit is {max_length}."
        )
    return Frame(action="send", message=message)
