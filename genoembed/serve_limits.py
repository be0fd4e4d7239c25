"""The bounds of `genoembed serve`: what one request may cost, the worker threads that do the work, the
middleware that reads bodies under a deadline and checks the token, and the redaction of server paths.

Kept apart from :mod:`genoembed.serve` (the endpoints) so each file stays readable; nothing here knows about
stores beyond their names, paths and manifests.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h11
from fastapi.responses import JSONResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from genoembed.errors import GenoembedError, InputError

MAX_BODY = 1_000_000
MAX_QUERIES = 10_000
MAX_SQL_TIMEOUT = 300.0
WORKER_NICENESS = 5
OPEN_PATHS = {"/healthz", "/", "/docs", "/redoc", "/openapi.json"}


@dataclass(frozen=True)
class Limits:
    """What one request may cost. With the defaults, 4 workers x (512 MB of DuckDB + a 64 MB response + its rows'
    Python objects) keep a served store under 3 GB by construction; benchmarks/chaos.py measured 385 MiB at peak
    under its flood and abusive requests."""

    max_body: int = MAX_BODY  # bytes of a request body
    max_queries: int = MAX_QUERIES  # queries in one search
    max_bases: int = 10_000_000  # bases of all queries of one search, counted from coordinates
    max_rows: int = 100_000  # rows of one response: hits (queries x k) or SQL rows
    max_response_bytes: int = 64_000_000  # bytes of one response body
    timeout: float = 120.0  # seconds for a search or track, building the response included
    max_sql_timeout: float = MAX_SQL_TIMEOUT  # the most a /sql request may ask for
    sql_memory: str = "512MB"  # DuckDB memory_limit per statement (it spills to disk beyond)
    sql_threads: int = 2  # DuckDB threads per statement
    workers: int = 4  # requests doing work at once
    queue: int = 32  # requests waiting for a worker before the server answers 503
    body_timeout: float = 30.0  # seconds to receive a whole body (slow senders are dropped with 408)
    header_timeout: float = 10.0  # seconds to receive a request's line and headers (else the connection is closed)


class Busy(GenoembedError):
    """Every worker is busy and the queue is full."""


class TooLarge(InputError):
    """A request over one of the server's limits."""


class TooSlow(GenoembedError):
    """A request that ran past the server's deadline."""


class Liveness:
    """ASGI middleware, outermost: answers ``GET /healthz`` with ``state()`` as JSON before any other layer (no
    token check, no body read, no routing), so the event loop spends the least time on it."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/healthz" and scope["method"] == "GET":
            body = json.dumps(self.state()).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        return await self.app(scope, receive, send)


class Guard:
    """ASGI middleware: refuses requests without the token (401), bodies over the limit (413) and bodies that
    do not arrive within ``body_timeout`` (408: a slow sender holds no worker and is dropped)."""

    def __init__(self, app, token: str | None = None, limits: Limits = Limits()):
        self.app, self.token, self.limits = app, token, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token is not None and scope["path"] not in OPEN_PATHS and not self.authorised(scope):
            response = error_response(401, "missing or wrong token: send the header 'Authorization: Bearer TOKEN'")
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        limit = self.limits.max_body
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            return await error_response(413, f"request body over {limit} bytes")(scope, receive, send)
        chunks, size, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.limits.body_timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                response = error_response(408, f"request body not received within {self.limits.body_timeout:g} s")
                response.headers["Connection"] = "close"
                return await response(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return await error_response(413, f"request body over {limit} bytes")(scope, receive, send)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    def authorised(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on a request's line and headers: from the connection's
    opening, or from the first byte of a later request on it, they must be in within ``header_timeout`` seconds
    or the connection is closed (uvicorn's own keep-alive timer restarts on every byte, so a client sending its
    headers a byte at a time held a connection, one of the 256, forever). The body has its own deadline
    (:class:`Guard`), where a 408 can be answered."""

    header_timeout = Limits.header_timeout
    _header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm()  # a new request starts (the keep-alive timer bounded the wait for it)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # its headers are in

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def connection_options(limits: Limits) -> dict:
    """uvicorn's options for ``limits``: idle keep-alive connections closed after 5 s, at most 256 connections
    (503 beyond), headers up to 16 KB (h11) that must arrive within ``limits.header_timeout`` s."""
    protocol = type("BoundedH11Protocol", (HeaderDeadline,), {"header_timeout": limits.header_timeout})
    return {"timeout_keep_alive": 5, "limit_concurrency": 256, "h11_max_incomplete_event_size": 16_384,
            "http": protocol}


class Cancel:
    """Set by the event loop once a request's deadline passed (it was answered 504): its work stops at its next
    :meth:`check` (between query batches, between shards), and a DuckDB query is interrupted (``run_sql``'s
    ``cancelled``), so the worker is free again within about a second rather than at the work's own end."""

    def __init__(self):
        self.event = threading.Event()

    def set(self) -> None:
        self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise TooSlow("request cancelled: it ran past this server's deadline")


class Workers:
    """The threads that do requests' work (searches, SQL, tracks, building their responses): ``workers`` of them,
    at most ``queue`` more requests waiting (503 beyond), each awaited from the event loop under a deadline.

    ``work`` is called with the request's :class:`Cancel`. A request whose deadline passes is answered 504 at
    once and cancelled: one still waiting never starts, one running stops at its next check.
    """

    def __init__(self, limits: Limits):
        self.limits = limits
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="genoembed-serve",
                                       initializer=_behind_the_event_loop)
        self.pending = 0  # submitted and not finished; changed on the event loop only

    async def run(self, work, timeout: float):
        if self.pending >= self.limits.workers + self.limits.queue:
            raise Busy(f"server busy ({self.pending} requests running or waiting); retry shortly")
        loop = asyncio.get_running_loop()
        cancel = Cancel()
        self.pending += 1
        future = self.pool.submit(work, cancel)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._finished))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            cancel.set()
            future.cancel()  # a request still waiting for a worker never starts
            raise TooSlow(f"request took over {timeout:g} s (this server's limit); ask for less") from None

    def _finished(self) -> None:
        self.pending -= 1


def _behind_the_event_loop() -> None:
    """Run this worker thread (and the DuckDB and OpenMP threads it starts) ``WORKER_NICENESS`` steps nicer than
    the event loop, so on a busy machine the loop still gets a core to answer /healthz. Linux only: there a
    thread has its own niceness (elsewhere setpriority on a thread id would name a process)."""
    if sys.platform.startswith("linux"):
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + WORKER_NICENESS)
        except OSError:
            pass  # a niceness that cannot be raised only costs /healthz latency under load


class Unprocessable(InputError):
    """A body that is not what the endpoint reads (422)."""


def sized(response: Response, limits: Limits) -> Response:
    """``response`` unless its body is over the response limit."""
    if len(response.body) > limits.max_response_bytes:
        raise TooLarge(f"response of {len(response.body)} bytes: at most {limits.max_response_bytes}; "
                       "ask for fewer rows or columns")
    return response


def error_response(status: int, message: str, redact=None) -> JSONResponse:
    text = " ".join(str(message).split())
    return JSONResponse({"error": redact.text(text) if redact is not None else text}, status_code=status)


# An absolute path in a message: a '/' that starts a word (not one after a redacted '<store NAME>'), then path
# characters.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~>-])/[\w.+@%~-][^\s'\"`,;()<>\[\]{}]*")


class Redactor:
    """Takes the server's paths out of what a client sees: each store's root (as given and resolved) becomes
    ``<store NAME>``, its genomes' FASTA files ``<fasta GENOME>``, the temp and home folders ``<temp>``/``<home>``;
    in error lines any other absolute path becomes ``<path>`` (SQL cells keep theirs: they are data)."""

    def __init__(self, stores: dict[str, "ServedStore"]):
        pairs: dict[str, str] = {}
        for name, entry in stores.items():
            for genome, recorded in entry.snapshot().store.manifest.get("genomes", {}).items():
                for path in {str(recorded.get("path", "")), str(Path(str(recorded.get("path", ""))).resolve())}:
                    if len(path) > 1:
                        pairs[path] = f"<fasta {genome}>"
            for path in (str(entry.path), str(entry.path.resolve()), str(entry.path.absolute())):
                pairs[path] = f"<store {name}>"
        for path, label in ((tempfile.gettempdir(), "<temp>"), (str(Path.home()), "<home>")):
            if len(path) > 1:
                pairs.setdefault(path, label)
                pairs.setdefault(str(Path(path).resolve()), label)
        self._pairs = sorted(pairs.items(), key=lambda pair: -len(pair[0]))  # longest first: nested paths

    def cell(self, value):
        if isinstance(value, str) and "/" in value:
            for path, label in self._pairs:
                value = value.replace(path, label)
        elif isinstance(value, list):
            return [self.cell(item) for item in value]
        elif isinstance(value, dict):
            return {key: self.cell(item) for key, item in value.items()}
        return value

    def text(self, message: str) -> str:
        return _ABSOLUTE_PATH.sub("<path>", self.cell(message))
