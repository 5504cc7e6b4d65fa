"""Who else watches a conversation, known to the connection that needs to know.

A reply's snapshots go through the channel layer only while another connection watches
(or the asking socket is gone, chat/resume.py). So only the connection writing a reply, or
the keeper of one, needs to know who watches: it is a *listener*. Presence then costs each
socket a message when it opens and one when it closes, and each reply one message per
watcher: 90 messages for 30 sockets and a reply (tests/test_presence.py), where every socket
answering every newcomer cost 495, growing with the square of the sockets (issue #11).

- Every connection tells the conversation's presence group when it opens ("joined") and
  when it closes ("left"). Only listeners are in that group.
- A listener joins the presence group, then asks the conversation's group who is there
  ("who"); each connection answers it alone ("here"), on the listener's channel.

Events are channel-layer messages ``{"type": "chat.presence", "event": ..., "sender":
channel}``.
"""

from .fanout import Fanout


def presence_group(group: str) -> str:
    """The group of a conversation's listeners, beside its group ``group``."""
    return f"{group}.presence"


class Presence:
    """What one connection knows of the others watching its conversation.

    ``watchers`` is kept only while this connection listens. Methods may be called from any
    thread; messages go out through the connection's outbox (chat/fanout.py).
    """

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.group = presence_group(fanout.group)
        self.watchers: set[str] = set()
        self.listening = False

    def announce(self, event: str) -> None:
        """Tell the listeners this connection "joined" or "left"."""
        self.fanout.put("presence", self.event(event), group=self.group)

    def listen(self) -> None:
        """Start keeping ``watchers``: from the first reply on, for the connection's life."""
        if not self.listening:
            self.listening = True
            self.roll_call()

    def roll_call(self) -> None:
        """Join the listeners, then ask every connection on the conversation to answer."""
        self.fanout.join(self.group)
        self.fanout.put("who", self.event("who"))

    def reconnected(self) -> None:
        """The layer is back after an outage: others may have come or gone meanwhile."""
        self.announce("joined")
        if self.listening:
            self.roll_call()

    def heard(self, event: dict) -> None:
        """A presence event from another connection."""
        sender = event["sender"]
        if sender == self.fanout.channel:
            return
        if event["event"] == "who":  # answered even by a listener: it watches too
            self.fanout.put(f"here-{sender}", self.event("here"), channel=sender)
        elif not self.listening:
            return
        elif event["event"] == "left":
            self.watchers.discard(sender)
        else:  # "joined", or "here" in answer to this connection
            self.watchers.add(sender)

    def event(self, name: str) -> dict:
        return {"type": "chat.presence", "event": name, "sender": self.fanout.channel}
