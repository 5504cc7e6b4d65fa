"""Stands in for the guide's streaming OpenAI call: the template's demo model, offline.

It streams the demo model's reply to the benchmark's message (the file in GUIDE_REPLY_FILE,
written by bench/run.py from the generated project's seed) with the demo model's tokens and
rhythm (chat/llm/demo.py): token i is due at start + i x DEMO_MODEL_DELAY, one token at a time.
"""

import asyncio
import os
import re
import time
from pathlib import Path

TOKEN = re.compile(r"\s*\S{1,4}|\s+")
REPLY = Path(os.environ["GUIDE_REPLY_FILE"]).read_text()
DELAY = float(os.environ.get("DEMO_MODEL_DELAY", "0.02"))


async def stream(messages: list[dict]):
    start = time.monotonic()
    for index, token in enumerate(TOKEN.findall(REPLY), start=1):
        await asyncio.sleep(max(0.0, start + index * DELAY - time.monotonic()))
        yield token
