"""A scripted stand-in for the Anthropic Messages API, served on 127.0.0.1.

The real ``claude`` CLI (bundled with claude-agent-sdk) talks to it exactly as
it would to the real API: ``POST /v1/messages`` with ``stream: true``, answered
with server-sent events. Tests script the turns (text or ``tool_use``) and read
back every request, including the credential header that reached it.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# {"text": str} | {"tool_use": {"name": str, "input": dict}} | {"blocks": [...]}, with optional "usage",
# "status" (an error answer), "cut": True (a stream that ends after message_start, no final usage) or
# "pace": seconds a stream takes between its content and its final usage (the model still generating)
Turn = dict[str, Any]
Responder = Callable[[dict], Turn]


def last_user_content(body: dict) -> Any:
    """The content of the last user message, skipping the CLI's appended system turns."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return message.get("content")
    return None


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "\n".join(parts)


def tool_results(content: Any) -> list[dict]:
    if isinstance(content, str):
        return []
    return [b for b in content or [] if b.get("type") == "tool_result"]


def prompt_message(body: dict) -> str:
    """The text of the last chat message inside nanoclaw's prompt wrapper (or of the scheduled
    task a prompt runs)."""
    text = content_text(last_user_content(body))
    found = re.findall(r"<message [^>]*>(.*?)</message>", text, re.S) or \
        re.findall(r"<scheduled_task [^>]*>(.*?)</scheduled_task>", text, re.S)
    return html.unescape(found[-1]) if found else text


def all_text(body: dict) -> str:
    """Every user and assistant text in the request (to see replayed history)."""
    out = []
    for m in body.get("messages", []):
        c = m.get("content")
        out.append(c if isinstance(c, str) else json.dumps(c))
    return "\n".join(out)


def default_responder(body: dict) -> Turn:
    """Echo the last chat message; after a tool call, say so."""
    results = tool_results(last_user_content(body))
    if results:
        return {"text": "tool done"}
    return {"text": f"echo: {prompt_message(body)}"}


class FakeAnthropic:
    """Start with ``.start()``; ``.url`` for ANTHROPIC_BASE_URL; ``.requests`` to inspect."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[Turn | Responder] = []
        self.responder: Responder = default_responder
        self.lock = threading.Lock()
        self.delay = 0.0  # seconds before answering (to hold a turn open)
        # What each answer reports it used (a turn's own "usage" wins). A stream reports the
        # input side and 1 output token in message_start, the output total in message_delta.
        self.usage: dict[str, int] = {"input_tokens": 10, "output_tokens": 5}
        self.hold: threading.Event | None = None  # a stream waits for it after message_start
        self.server: ThreadingHTTPServer | None = None

    def then(self, *turns: Turn | Responder) -> "FakeAnthropic":
        """Queue the next answers, in order; after them the default responder answers."""
        with self.lock:
            self.script.extend(turns)
        return self

    def next_turn(self, body: dict) -> Turn:
        with self.lock:
            step = self.script.pop(0) if self.script else self.responder
        return step(body) if callable(step) else step

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def message_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"].startswith("/v1/messages")]

    def start(self, port: int = 0) -> "FakeAnthropic":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": body, "raw": raw, "time": time.time()}
                with fake.lock:
                    fake.requests.append(record)
                if not self.path.startswith("/v1/messages") or "count_tokens" in self.path:
                    return self._json({"input_tokens": 10} if "count_tokens" in self.path else {})
                if fake.delay:
                    time.sleep(fake.delay)
                turn = fake.next_turn(body)
                if turn.get("status"):
                    return self._json({"type": "error", "error": {"type": "api_error",
                                                                   "message": "scripted failure"}},
                                      turn["status"])
                blocks = turn.get("blocks") or (
                    [{"type": "tool_use", "id": f"toolu_{len(fake.requests)}", **turn["tool_use"]}]
                    if "tool_use" in turn else [{"type": "text", "text": turn.get("text", "")}])
                stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
                model = body.get("model", "claude-fake")
                usage = {**fake.usage, **turn.get("usage", {})}
                if body.get("stream"):
                    self._stream(blocks, stop, model, usage, cut=bool(turn.get("cut")), pace=turn.get("pace", 0.0))
                else:
                    self._json({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                                "content": blocks, "stop_reason": stop, "stop_sequence": None,
                                "usage": usage})

            def do_GET(self) -> None:
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": None,
                                          "method": self.command, "time": time.time()})
                self._json({})

            do_DELETE = do_PUT = do_PATCH = do_GET  # recorded: a test shows none of them got here

            def _json(self, obj: dict, status: int = 200) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _event(self, kind: str, data: dict) -> None:
                self.wfile.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            def _stream(self, blocks: list[dict], stop: str, model: str, usage: dict, cut: bool = False,
                        pace: float = 0.0) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                self._event("message_start", {"type": "message_start", "message": {
                    "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": None, "stop_sequence": None,
                    "usage": {**usage, "output_tokens": 1}}})
                if fake.hold is not None:
                    fake.hold.wait(30)
                if cut:
                    return  # the connection closes with no final usage
                for i, block in enumerate(blocks):
                    if block["type"] == "text":
                        self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {"type": "text", "text": ""}})
                        text = block["text"]
                        for j in range(0, max(len(text), 1), 40):  # several deltas, as the real API sends
                            self._event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                                "delta": {"type": "text_delta",
                                                                          "text": text[j:j + 40]}})
                    else:
                        self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {**block, "input": {}}})
                        self._event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                            "delta": {"type": "input_json_delta",
                                                                      "partial_json": json.dumps(block["input"])}})
                    self._event("content_block_stop", {"type": "content_block_stop", "index": i})
                if pace:
                    time.sleep(pace)
                final = {k: v for k, v in usage.items() if k in ("output_tokens", "server_tool_use")}
                self._event("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": stop, "stop_sequence": None},
                                              "usage": final})
                self._event("message_stop", {"type": "message_stop"})

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
