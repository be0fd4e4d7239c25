"""`genoembed remove`: take a genome, or some of its contigs, out of a store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from genoembed.cli.common import OutputFormat, configure_logging, handle_errors
from genoembed.store import Store


@handle_errors
def remove(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    genome: str = typer.Option(..., "--genome", help="Genome to remove (names: `genoembed info STORE`)."),
    contig: Optional[list[str]] = typer.Option(None, "--contig", help="Remove only this contig of the genome (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings."),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table = one line of text; json = a JSON summary line."),
    json_output: bool = typer.Option(False, "--json", hidden=True, help="Old spelling of --format json."),
):
    """Delete the genome's (or contigs') tiles, rewrite the shards holding them and drop their ids from the index."""
    from genoembed.remove import remove as remove_rows

    json_output = json_output or format is OutputFormat.json
    configure_logging(quiet or json_output)
    summary = remove_rows(Store.open(store), genome, tuple(contig or ()))
    if json_output or format is OutputFormat.json:
        typer.echo(json.dumps(summary))
    else:
        what = f"contigs {', '.join(summary['contigs'])} of {genome}" if summary["contigs"] else f"genome {genome}"
        typer.echo(f"removed {summary['tiles_removed']} tiles ({what}) from {store}; "
                   f"{summary['tiles_left']} tiles left")
