"""A fake OpenAI-compatible transcription API on 127.0.0.1 (aiohttp, in a thread of its own):
``POST /v1/audio/transcriptions`` takes the multipart form as the real one does, records what
it was sent (headers, fields, the file's bytes), and answers what the test set: by default
``{"text": ...}``, or any status and raw body (a hostile answer)."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Seen:
    headers: dict[str, str]
    fields: dict[str, str]
    file: bytes
    filename: str
    content_type: str


@dataclass
class FakeVoiceApi:
    text: str = "the API heard this"
    status: int = 200
    body: bytes | None = None  # when set, sent as it is instead of {"text": text}
    seen: list[Seen] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # every request's method and path, any path

    def start(self) -> "FakeVoiceApi":
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve())
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(10), "the fake voice API did not start"
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(f"{request.method} {request.path}")
        if request.method != "POST" or request.path != "/v1/audio/transcriptions":
            return web.json_response({"error": {"message": "not found"}}, status=404)
        fields, file, filename, ctype = {}, b"", "", ""
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.filename:
                file, filename, ctype = await part.read(), part.filename, part.headers.get("Content-Type", "")
            else:
                fields[part.name] = await part.text()
        self.seen.append(Seen(dict(request.headers), fields, bytes(file), filename, ctype))
        if self.body is not None:
            return web.Response(status=self.status, body=self.body, content_type="application/json")
        return web.Response(status=self.status, text=json.dumps({"text": self.text}), content_type="application/json")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
