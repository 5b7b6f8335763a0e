"""A FAKE on purpose: an HTTP proxy on 127.0.0.1 that injects faults a real vLLM server cannot
produce on demand (HTTP 5xx, slow replies). Otherwise it forwards to the real server."""
from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultProxy:
    def __init__(self, upstream: str, status: int | None = None, delay_s: float = 0.0,
                 faults: int | None = None, after_reply=None):
        """status: answer this HTTP status instead of forwarding; delay_s: wait before
        forwarding; faults: inject only on the first N requests (None = always);
        after_reply(n): called after the n-th forwarded reply (e.g. to kill the server)."""
        self.upstream = urlsplit(upstream)
        self.status, self.delay_s, self.faults = status, delay_s, faults
        self.after_reply = after_reply
        self.replies = 0
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    proxy.requests += 1
                    inject = proxy.faults is None or proxy.requests <= proxy.faults
                if inject and proxy.status:
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "injected fault"}}')
                    return
                if inject and proxy.delay_s:
                    time.sleep(proxy.delay_s)
                try:
                    conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                      timeout=120)
                    conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError:  # upstream gone: drop the connection as a dead server would
                    self.close_connection = True
                    return
                try:
                    self.send_response(resp.status)
                    self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass
                with proxy._lock:
                    proxy.replies += 1
                    n = proxy.replies
                if proxy.after_reply is not None:
                    proxy.after_reply(n)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.upstream.path}"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
