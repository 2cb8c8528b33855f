"""Web sites on 127.0.0.1 for the egress tests and bench: HTTP or HTTPS, with a
throwaway CA, recording what reached them."""

from __future__ import annotations

import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE = b"<html><body><h1>Egress works</h1><p>the page's marker: PELICAN-7731</p></body></html>"


class Site:
    """An HTTP or HTTPS server on 127.0.0.1 that records what reached it."""

    def __init__(self, tls: ssl.SSLContext | None = None, body: bytes = PAGE) -> None:
        self.requests: list[dict] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body are two writes: no delayed-ACK stall between

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                site.requests.append({"method": self.command, "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "body": self.rfile.read(length) if length else b""})
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_certs(d: Path) -> Path:
    """A throwaway CA (``ca.pem``) and a certificate for pages.test and 127.0.0.1
    (``site.pem``, ``site.key``) in ``d``, made with openssl."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "2",
                    "-subj", "/CN=nanoclaw test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)
    subprocess.run(["openssl", "req", *ec, "-keyout", d / "site.key", "-out", d / "site.csr",
                    "-subj", "/CN=pages.test"], check=True, capture_output=True)
    (d / "ext.cnf").write_text("subjectAltName=DNS:pages.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", d / "site.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
                    "-CAcreateserial", "-out", d / "site.pem", "-days", "2", "-extfile", d / "ext.cnf"],
                   check=True, capture_output=True)
    return d


def server_tls(certs: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "site.pem", certs / "site.key")
    return ctx
