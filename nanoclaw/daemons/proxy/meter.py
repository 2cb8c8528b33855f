"""The API relay's meter: the usage an answer reports, read from its bytes as they pass.

Only what is needed is kept: for a stream, the current line (each line is looked at
once, and only ``message_*`` events are parsed as JSON); for a JSON answer, a copy
up to :data:`MAX_JSON`. gzip and deflate bodies are inflated for reading only; not
a byte is held back from the agent.
"""

from __future__ import annotations

import json
import zlib

from nanoclaw.core.usage import Counts

MAX_JSON = 8 * 1024 * 1024  # a JSON answer bigger than this is passed on, not metered
MAX_LINE = 1024 * 1024  # an SSE line longer than this is skipped (content, never usage)


class Meter:
    """Reads an answer's usage from its bytes as they pass to the agent."""

    def __init__(self, content_type: str, encoding: str = "") -> None:
        self.counts = Counts()
        self.stream = content_type.split(";")[0].strip().lower() == "text/event-stream"
        self.json = not self.stream and "json" in content_type.lower()
        enc = encoding.strip().lower()
        self.inflate = (zlib.decompressobj(16 + zlib.MAX_WBITS) if enc == "gzip"
                        else zlib.decompressobj() if enc == "deflate" else None)
        self.readable = enc in ("", "identity", "gzip", "deflate")
        self.buffer = bytearray()
        self.skipping = False  # inside an over-long SSE line
        self.final = False  # the answer's final usage has passed (a JSON answer's, a stream's message_delta)

    def feed(self, chunk: bytes) -> None:
        if not self.readable or not (self.stream or self.json):
            return
        if self.inflate is not None:
            try:
                chunk = self.inflate.decompress(chunk)
            except zlib.error:
                self.readable = False
                return
        if self.json:
            if len(self.buffer) + len(chunk) > MAX_JSON:
                self.readable, self.buffer = False, bytearray()
            else:
                self.buffer += chunk
            return
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if self.skipping:
                self.skipping = False
            else:
                self.buffer += chunk[start:end]
                self._line(bytes(self.buffer))
            self.buffer.clear()
            start = end + 1
        if not self.skipping:
            self.buffer += chunk[start:]
            if len(self.buffer) > MAX_LINE:
                self.buffer.clear()
                self.skipping = True

    def _line(self, line: bytes) -> None:
        # Only message_start and message_delta carry usage; content deltas are not parsed.
        if not line.startswith(b"data:") or b'"message_' not in line[:64]:
            return
        try:
            event = json.loads(line[5:])
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            if isinstance(message.get("model"), str):
                self.counts.model = message["model"][:100]
            self.counts.take(message.get("usage"))
        elif event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            self.counts.take(event["usage"])
            self.final = True

    def finish(self) -> Counts:
        """The counts, once the whole answer has passed."""
        if self.json and self.readable and self.buffer:
            try:
                answer = json.loads(bytes(self.buffer))
            except ValueError:
                answer = None
            if isinstance(answer, dict):
                if isinstance(answer.get("model"), str):
                    self.counts.model = answer["model"][:100]
                self.counts.take(answer.get("usage"))
                self.final = isinstance(answer.get("usage"), dict)
        elif self.stream and self.buffer and not self.skipping:
            self._line(bytes(self.buffer))  # a last line without its newline
        self.buffer = bytearray()
        return self.counts
