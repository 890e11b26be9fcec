"""A counting HTTP proxy on 127.0.0.1 in front of a real `mlflow server`.

MLflow's SQL store silently drops a duplicate metric point, so reading a run back can never
show a resend. This proxy sees the wire instead: every metric point, param and tag that
reaches the server is counted (`points`, `params`, `tags`), keyed by run and value. It can
also refuse requests before they reach the server (`fault`: a 429/503 storm) and hold a
`log-batch` response after the server accepted it (`hold_batch`), so that a test can kill the
client between "the store has it" and "the client knows".
"""

import http.client
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

__all__ = ["CountingProxy"]

_WRITES = ("runs/log-batch", "runs/log-metric", "runs/log-parameter", "runs/set-tag")


class CountingProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.points: Counter = Counter()  # (run_id, key, step, timestamp, value) -> times stored
        self.params: Counter = Counter()  # (run_id, key, value)
        self.tags: Counter = Counter()  # (run_id, key, value)
        self.requests: Counter = Counter()  # endpoint -> requests that reached the server
        self.seen: list[tuple[float, str, str]] = []  # (time.monotonic(), method, path) of every request
        self.refused: Counter = Counter()  # status -> requests refused by `fault`
        self.batches: list[dict] = []  # bodies of log-batch requests that reached the server
        self.fault: Callable[[str], tuple[int, dict] | None] | None = None
        self.delay: float = 0.0  # seconds added before answering a write
        self._hold_after: int | None = None  # hold the response of the n-th next log-batch
        self.held = threading.Event()  # set while a response is held
        self.held_body: dict | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy._handle(self)

            def do_POST(self):
                proxy._handle(self)

            def do_PUT(self):
                proxy._handle(self)

            def do_PATCH(self):
                proxy._handle(self)

            def do_DELETE(self):
                proxy._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold_batch(self, after: int = 0) -> None:
        """Hold the response of the log-batch that comes `after` batches from now."""
        with self._lock:
            self._hold_after = after
            self.held.clear()
            self._release.clear()

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ counting
    def metric_count(self, run_id: str) -> Counter:
        return Counter({k: n for k, n in self.points.items() if k[0] == run_id})

    def _count(self, endpoint: str, body: dict) -> None:
        run_id = body.get("run_id") or body.get("run_uuid")
        with self._lock:
            self.requests[endpoint] += 1
            if endpoint.endswith("log-batch"):
                self.batches.append(body)
                for m in body.get("metrics", []):
                    self.points[(run_id, m["key"], int(m.get("step", 0)), int(m["timestamp"]), float(m["value"]))] += 1
                for p in body.get("params", []):
                    self.params[(run_id, p["key"], p["value"])] += 1
                for t in body.get("tags", []):
                    self.tags[(run_id, t["key"], t["value"])] += 1
            elif endpoint.endswith("log-metric"):
                self.points[(run_id, body["key"], int(body.get("step", 0)), int(body["timestamp"]), float(body["value"]))] += 1
            elif endpoint.endswith("log-parameter"):
                self.params[(run_id, body["key"], body["value"])] += 1
            elif endpoint.endswith("set-tag"):
                self.tags[(run_id, body["key"], body["value"])] += 1

    # ------------------------------------------------------------------ forwarding
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        data = handler.rfile.read(length) if length else b""
        path = handler.path
        with self._lock:
            self.seen.append((time.monotonic(), handler.command, path.split("?")[0]))
        endpoint = next((w for w in _WRITES if w in path), None)
        if endpoint is not None and self.fault is not None:
            refusal = self.fault(endpoint)
            if refusal is not None:
                status, headers = refusal
                with self._lock:
                    self.refused[status] += 1
                self._answer(handler, status, {"Content-Type": "text/plain", **headers}, b"refused by the test proxy")
                return
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request(handler.command, path, body=data, headers=headers)
        response = upstream.getresponse()
        body = response.read()
        out_headers = {
            k: v for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection", "content-length")
        }
        upstream.close()
        if endpoint is not None and response.status == 200:
            decoded = json.loads(data or b"{}")
            self._count(endpoint, decoded)
            if self.delay:
                threading.Event().wait(self.delay)
            if endpoint.endswith("log-batch") and self._should_hold():
                self.held_body = decoded
                self.held.set()
                self._release.wait()
        self._answer(handler, response.status, out_headers, body)

    def _should_hold(self) -> bool:
        with self._lock:
            if self._hold_after is None:
                return False
            if self._hold_after > 0:
                self._hold_after -= 1
                return False
            self._hold_after = None
            return True

    @staticmethod
    def _answer(handler, status: int, headers: dict, body: bytes) -> None:
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the client went away (killed while we held its answer)
