"""proxy: the only way out of a container: the Anthropic API, with the credential added here.

SUMMARY
    One Unix socket per group (``<runtime>/proxy/<folder>/api.sock``, mounted
    into that group's container only); the agent runner's in-container
    forwarder relays ``ANTHROPIC_BASE_URL=http://127.0.0.1:<port>`` to it. The
    proxy drops whatever credential the agent sent, adds the real one, and
    relays to the upstream API, streaming the answer back.

READS
    Requests on the group sockets; the credential (``core.credentials``:
    systemd's ``LoadCredential=`` copy, or the 0600 file); the ``groups`` table.

WRITES
    Requests to the upstream API only. The real key or token never enters a
    container: not its environment, files or ``podman inspect``.

PRIVILEGE
    The service user; the one daemon with network to the outside.

HOSTILE INPUT
    Every request on a group socket is the agent's: only API paths pass,
    heads and bodies are size-limited, refusals are well-formed JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

from nanoclaw.core.config import Config
from nanoclaw.core.credentials import (
    OAUTH_BETA,
    Credential,
    CredentialError,
    credential_path,
    load_credential,
)
from nanoclaw.core.models import Group
from nanoclaw.core.skeleton import Daemon

MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024
_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length", "x-api-key", "authorization"}


def proxy_dir(cfg: Config, folder: str) -> Path:
    """The directory holding a group's API socket; mounted into that group's container only."""
    return cfg.runtime_dir / "proxy" / folder


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # final CRLF (no trailers expected)
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
            if len(body) > MAX_BODY:
                raise ValueError("request body too large")
    length = int(headers.get("content-length") or 0)
    if length > MAX_BODY:
        raise ValueError("request body too large")
    return await reader.readexactly(length) if length else b""


class ProxyDaemon(Daemon):
    name = "proxy"

    def setup(self) -> None:
        self.servers: dict[str, asyncio.base_events.Server] = {}
        self.upstream = urlsplit(self.cfg.proxy_upstream)
        self.requests = 0
        self.credential: Credential | None = None
        self._load()

    def _load(self) -> str:
        """(Re-)read the credential; '' or why there is none."""
        try:
            self.credential = load_credential(self.cfg)
        except CredentialError as exc:
            self.credential = None
            self.log.error("%s", exc)
            return str(exc)
        self.log.info("credential loaded kind=%s from %s", self.credential.kind, credential_path(self.cfg))
        return ""

    async def handle(self, req: dict, writer: asyncio.StreamWriter) -> dict | None:
        if req["op"] == "reload":  # `nanoclaw credential set` where no unit restart hands it over
            error = self._load()
            return {"ok": not error, "error": error, "kind": self.credential.kind if self.credential else ""}
        if req["op"] == "check":  # `nanoclaw credential set`: does the API accept it?
            if self.credential is None and self._load():
                return {"ok": False, "error": "the proxy holds no credential"}
            return {"ok": True, **await self._check()}
        if req["op"] == "ensure":
            # The runner asks before starting a container, so a just-registered
            # group's socket exists by the time its agent first calls the API.
            await self.work()
            folder = req.get("group")
            return {"ok": folder in self.servers, "group": folder}
        return await super().handle(req, writer)

    async def work(self) -> float | None:
        folders = {g.folder for g in Group.select(Group.folder)}
        for folder in folders - set(self.servers):
            d = proxy_dir(self.cfg, folder)
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
            sock = d / "api.sock"
            try:
                sock.unlink()
            except FileNotFoundError:
                pass
            self.servers[folder] = await asyncio.start_unix_server(
                lambda r, w, f=folder: self._serve(f, r, w), path=str(sock), limit=MAX_HEAD)
            os.chmod(sock, 0o666)  # the container's uid differs; the directory limits who sees it
        for folder in set(self.servers) - folders:
            self.servers.pop(folder).close()
        return None

    async def _serve(self, folder: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.monotonic()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            order: list[tuple[str, str]] = []
            for line in lines:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                    order.append((k.strip(), v.strip()))
            if not target.startswith("/v1/"):
                return await self._refuse(writer, 403, f"path {target!r} is not an API path")
            if self.credential is None:
                try:
                    self.credential = load_credential(self.cfg)
                except CredentialError as exc:
                    self.log.error("group=%s request refused: %s", folder, exc)
                    return await self._refuse(writer, 503, "nanoclaw has no Anthropic credential configured")
            body = await _read_body(reader, headers)
            status = await self._relay(folder, method, target, order, body, writer)
            self.requests += 1
            self.log.info("group=%s %s %s -> %s in %.2fs", folder, method, target.split("?")[0], status,
                          time.monotonic() - started)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError) as exc:
            self.log.warning("group=%s bad request: %r", folder, exc)
            await self._refuse(writer, 400, "bad request")
        except OSError as exc:
            self.log.error("group=%s upstream %s unreachable: %s", folder, self.upstream.netloc, exc)
            await self._refuse(writer, 502, "upstream unreachable")
        finally:
            writer.close()

    async def _relay(self, folder: str, method: str, target: str, order: list[tuple[str, str]],
                     body: bytes, writer: asyncio.StreamWriter) -> str:
        up = self.upstream
        tls = up.scheme == "https"
        port = up.port or (443 if tls else 80)
        ctx = ssl.create_default_context() if tls else None
        ureader, uwriter = await asyncio.wait_for(
            asyncio.open_connection(up.hostname, port, ssl=ctx, server_hostname=up.hostname if tls else None), 30)
        try:
            out = [f"{method} {up.path.rstrip('/')}{target} HTTP/1.1", f"Host: {up.netloc}"]
            beta = ""
            for k, v in order:
                if k.lower() == "anthropic-beta":
                    beta = v
                elif k.lower() not in _HOP:
                    out.append(f"{k}: {v}")
            assert self.credential is not None
            if self.credential.kind == "oauth":
                beta = ",".join(filter(None, [beta, OAUTH_BETA]))
            if beta:
                out.append(f"anthropic-beta: {beta}")
            out += [f"{k}: {v}" for k, v in self.credential.headers()]
            out += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
            uwriter.write("\r\n".join(out).encode("latin-1") + body)
            await uwriter.drain()
            status = "?"
            first = True
            while chunk := await ureader.read(65536):
                if first:
                    status = chunk.split(b"\r\n", 1)[0].decode("latin-1", "replace").split(" ")[1:2] or ["?"]
                    status = status[0]
                    first = False
                writer.write(chunk)
                await writer.drain()
            return status
        finally:
            uwriter.close()

    async def _check(self) -> dict:
        """One cheap authenticated request (list one model): the status and the API's words."""
        up = self.upstream
        tls = up.scheme == "https"
        assert self.credential is not None
        head = [f"GET {up.path.rstrip('/')}/v1/models?limit=1 HTTP/1.1", f"Host: {up.netloc}",
                "anthropic-version: 2023-06-01", "Connection: close"]
        head += [f"{k}: {v}" for k, v in self.credential.headers()]
        if self.credential.kind == "oauth":
            head.append(f"anthropic-beta: {OAUTH_BETA}")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                up.hostname, up.port or (443 if tls else 80), ssl=ssl.create_default_context() if tls else None,
                server_hostname=up.hostname if tls else None), 15)
            try:
                writer.write("\r\n".join(head + ["", ""]).encode("latin-1"))
                await writer.drain()
                data = await asyncio.wait_for(reader.read(65536), 15)
            finally:
                writer.close()
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            return {"status": 0, "detail": f"cannot reach {up.netloc}: {exc!r}"}
        status_line, _, rest = data.partition(b"\r\n")
        parts = status_line.split(b" ")
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        detail = ""
        try:
            detail = json.loads(rest.partition(b"\r\n\r\n")[2] or b"{}").get("error", {}).get("message", "")
        except (ValueError, AttributeError):
            pass
        self.log.info("credential check: %s -> %s", up.netloc, status)
        return {"status": status, "detail": str(detail)[:300]}

    async def _refuse(self, writer: asyncio.StreamWriter, code: int, reason: str) -> None:
        body = json.dumps({"type": "error", "error": {"type": "nanoclaw_proxy", "message": reason}}).encode()
        try:
            writer.write(f"HTTP/1.1 {code} Refused\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except OSError:
            pass

    def status(self) -> str:
        cred = self.credential.kind if self.credential else "NO CREDENTIAL"
        return f"{len(self.servers)} group socket(s), credential: {cred}, {self.requests} requests"

    async def shutdown(self) -> None:
        for server in self.servers.values():
            server.close()


main = ProxyDaemon.main
