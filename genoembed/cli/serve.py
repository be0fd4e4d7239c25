"""`genoembed serve`: an HTTP API and a web page over stores opened once (no per-search start-up cost)."""

from __future__ import annotations

import ipaddress
import sys
from typing import Optional

import typer

from genoembed.cli.common import configure_logging, console, handle_errors
from genoembed.errors import InputError, missing_extra


SWITCH_INTERVAL_S = 0.001


def is_loopback(host: str) -> bool:
    """Only loopback addresses are reachable from this machine alone ('localhost' included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Anything beyond loopback is reachable by others, so it needs a token."""
    if not is_loopback(host) and not token:
        raise InputError(f"--host {host} is reachable from other machines: give --token (or GENOEMBED_TOKEN) "
                         "so every request must carry it, or serve on 127.0.0.1")


@handle_errors
def serve(
    stores: list[str] = typer.Argument(..., help="Store directories to serve, each PATH or NAME=PATH (the name is how requests address it)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    token: Optional[str] = typer.Option(None, "--token", envvar="GENOEMBED_TOKEN", help="Bearer token every request must carry (all endpoints but /healthz and the page shell)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the stores' model directories to run their own Python code."),
    workers: int = typer.Option(4, "--workers", min=1, help="Requests doing work (search, SQL, tracks) at once."),
    queue: int = typer.Option(32, "--queue", min=0, help="Requests waiting for a worker; more are answered 503."),
    max_bases: int = typer.Option(10_000_000, "--max-bases", min=1, help="Bases of all queries of one search (counted from coordinates before any sequence is read)."),
    max_rows: int = typer.Option(100_000, "--max-rows", min=1, help="Rows of one response: hits (queries x k) or SQL rows."),
    timeout: float = typer.Option(120.0, "--timeout", min=1.0, help="Seconds for a search or track, building the response included (504 after)."),
    sql_memory: str = typer.Option("512MB", "--sql-memory", help="DuckDB memory_limit of one SQL statement (it spills to disk beyond)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings and no access log."),
):
    """Serve stores over HTTP: POST /search, POST /sql, GET /track, GET /stores, a page at /, docs at /docs.

    Bounds, each checked before the work: bodies up to 1 MB, received within 30 s (else 408); up to 10,000 queries and --max-bases bases per search; --max-rows rows and 64 MB per response (413 beyond); --workers requests at work and --queue waiting (503 beyond); --timeout per search or track, and the request's own SQL timeout (at most 300 s) with --sql-memory per statement (504 past the deadline). /healthz answers on the event loop whatever the load. Connections: idle keep-alive closed after 5 s, at most 256 open (503 beyond), headers up to 16 KB (h11) received within 10 s (else the connection is closed). Error bodies carry no server path.
    """
    configure_logging(quiet)
    check_binding(host, token)
    try:
        import uvicorn

        from genoembed.serve import create_app, open_stores
        from genoembed.serve_limits import Limits, connection_options
    except ImportError as error:
        raise missing_extra("genoembed serve", "serve", error.name) from None
    limits = Limits(max_bases=max_bases, max_rows=max_rows, timeout=timeout, sql_memory=sql_memory,
                    workers=workers, queue=queue)
    opened = open_stores(stores, trust_remote_code=trust_remote_code)
    # the event loop (which answers /healthz) asks for the GIL held by busy workers: let it in after 1 ms, not 5
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    shown = f"[{host}]" if ":" in host else host
    console().print(f"genoembed: serving {', '.join(opened)} at http://{shown}:{port}/ (API docs at /docs)")
    uvicorn.run(create_app(opened, token, limits), host=host, port=port, log_level="warning" if quiet else "info",
                access_log=not quiet, **connection_options(limits))
