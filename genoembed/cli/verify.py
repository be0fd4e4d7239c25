"""`genoembed verify`: check shards and index against the manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from genoembed.cli.common import handle_errors
from genoembed.store import Store
from genoembed.verify import verify_store


@handle_errors
def verify(store: Path = typer.Argument(..., help="Store directory made by `genoembed index`.")):
    """Check checksums, row counts, tile-id continuity, provenance and index; exit 1 on any problem."""
    opened = Store.open(store, require_complete=False)
    problems = verify_store(opened)
    for problem in problems:
        typer.echo(f"{opened.root}/{problem}", err=True)
    if problems:
        typer.echo(f"{len(problems)} problem(s) found in {opened.root}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{opened.root}: OK ({opened.num_tiles} tiles in {len(opened.manifest['shards'])} shards)")
