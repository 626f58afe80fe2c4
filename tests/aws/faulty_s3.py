"""A fault-injecting HTTP proxy in front of an S3 endpoint, for tests.

It listens on loopback only and answers some requests itself, the way S3 does when a
prefix is throttled (``503 SlowDown``) or a front end fails (``500 InternalError``),
before they reach the endpoint behind it; every other request is forwarded as it came.
Faulted requests never reach the endpoint, so a retry is always safe to make and any
row lost or duplicated is the client's doing, not the proxy's.

Which requests fail is a plan counted per request kind: the first ``fail_first`` of
each kind, the numbers listed in ``fail_numbers``, then a ``fraction`` of the rest drawn
from a seeded generator (which request gets which number follows the order requests
arrive in). Counters say what was injected, so a test can prove its faults happened.
"""

from __future__ import annotations

import http.client
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

#: Request kinds, as S3 sees them. LIST is a GET on a bucket (no key); GET reads an object.
KINDS = ("GET", "LIST", "HEAD", "PUT", "POST", "DELETE")
#: The faults answered, in turn: (status, S3 error code, message).
FAULTS = (
    (503, "SlowDown", "Please reduce your request rate."),
    (500, "InternalError", "We encountered an internal error. Please try again."),
)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
)


def request_kind(method: str, path: str) -> str:
    """The S3 request kind of a path-style request: a GET without a key lists a bucket."""
    if method != "GET":
        return method
    bucket_and_key = urlsplit(path).path.lstrip("/")
    _, _, key = bucket_and_key.partition("/")
    return "GET" if key else "LIST"


class FaultyS3Proxy:
    """Forwards to ``upstream`` (``http://host:port``), failing the requests the plan picks."""

    def __init__(
        self,
        upstream: str,
        *,
        fail_first: int = 0,
        fail_numbers: Mapping[str, Iterable[int]] | None = None,
        fraction: float = 0.0,
        kinds: Iterable[str] = KINDS,
        codes: Iterable[str] = tuple(code for _, code, _ in FAULTS),
        seed: int = 0,
    ) -> None:
        """``kinds`` are subject to ``fail_first`` and ``fraction``; ``fail_numbers`` maps a kind
        to the 1-based numbers of its requests to fail (counted while ``enabled``); ``codes``
        picks which of ``FAULTS`` are answered, in turn."""
        fail_numbers = {kind: frozenset(numbers) for kind, numbers in (fail_numbers or {}).items()}
        unknown = (set(kinds) | set(fail_numbers)) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown request kinds {sorted(unknown)}; use some of {KINDS}")
        self.faults = tuple(fault for fault in FAULTS if fault[1] in set(codes))
        if not self.faults:
            raise ValueError(f"codes must name some of {[code for _, code, _ in FAULTS]}")
        if not 0 <= fraction < 1:
            raise ValueError("fraction must be in [0, 1)")
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.fail_first = fail_first
        self.fail_numbers = fail_numbers
        self.fraction = fraction
        self.kinds = frozenset(kinds)
        self.enabled = True
        #: (kind, S3 error code) -> requests answered with that fault
        self.injected: Counter[tuple[str, str]] = Counter()
        #: kind -> requests forwarded to the upstream endpoint
        self.forwarded: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def injected_by_kind(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for (kind, _), n in self.injected.items():
            counts[kind] += n
        return counts

    def injected_by_code(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for (_, code), n in self.injected.items():
            counts[code] += n
        return counts

    def pick_fault(self, kind: str) -> tuple[int, str, str] | None:
        """The fault to answer this request with, or None to forward it; counts either way."""
        with self._lock:
            if not self.enabled:
                self.forwarded[kind] += 1
                return None
            self._seen[kind] += 1
            number = self._seen[kind]
            fail = number in self.fail_numbers.get(kind, ()) or (
                kind in self.kinds and (number <= self.fail_first or self._random.random() < self.fraction)
            )
            if not fail:
                self.forwarded[kind] += 1
                return None
            fault = self.faults[sum(self.injected.values()) % len(self.faults)]
            self.injected[(kind, fault[1])] += 1
            return fault

    def start(self) -> FaultyS3Proxy:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-s3-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultyS3Proxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultyS3Proxy
    # HTTP/1.1: keep-alive for the SDKs' connection pools, and "100 Continue" for their
    # uploads that ask for it before sending a body.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _handle(self) -> None:
        body = self._read_body()
        fault = self.owner.pick_fault(request_kind(self.command, self.path))
        if fault is not None:
            self._answer_fault(*fault)
            return
        status, reason, headers, payload = self._forward(body)
        self.send_response(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        """The whole request body, so a faulted request leaves the connection usable."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer_fault(self, status: int, code: str, message: str) -> None:
        request_id = uuid.uuid4().hex[:16].upper()
        payload = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>faulty-s3-proxy</HostId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        if not body and self.command in ("GET", "HEAD", "DELETE"):
            headers.pop("Content-Length")
        host, port = self.owner.upstream
        connection = http.client.HTTPConnection(host, port, timeout=120)
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            kept = [
                (name, value)
                for name, value in response.getheaders()
                if name.lower() not in _HOP_BY_HOP and (self.command == "HEAD" or name.lower() != "content-length")
            ]
            return response.status, response.reason, kept, payload
        finally:
            connection.close()
