"""`genoembed serve`: an HTTP API and a web page over stores opened once (no per-search start-up cost)."""

from __future__ import annotations

import ipaddress
from typing import Optional

import typer

from genoembed.cli.common import configure_logging, console, handle_errors
from genoembed.errors import InputError, missing_extra


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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings and no access log."),
):
    """Serve stores over HTTP: POST /search, POST /sql, GET /track, GET /stores, a page at /, docs at /docs."""
    configure_logging(quiet)
    check_binding(host, token)
    try:
        import uvicorn

        from genoembed.serve import create_app, open_stores
    except ImportError as error:
        raise missing_extra("genoembed serve", "serve", error.name) from None
    opened = open_stores(stores, trust_remote_code=trust_remote_code)
    shown = f"[{host}]" if ":" in host else host
    console().print(f"genoembed: serving {', '.join(opened)} at http://{shown}:{port}/ (API docs at /docs)")
    uvicorn.run(create_app(opened, token), host=host, port=port, log_level="warning" if quiet else "info",
                access_log=not quiet)
