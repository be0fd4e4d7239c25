"""`genoembed verify`: check shards and index against the manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from genoembed.cli.common import handle_errors
from genoembed.store import Store
from genoembed.errors import command
from genoembed.verify import embed_sequences, genomes_without_sequence, verify_store


@handle_errors
def verify(store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
           embed: bool = typer.Option(False, "--embed-sequences", help="First copy into the store the sequence of "
                                      "every genome it lacks (stores built before stores carried them), from the "
                                      "recorded FASTA, so the store answers without it.")):
    """Check checksums, row counts, tile-id continuity, provenance, index and the store's genome sequences
    (against the FASTA text they were built from); exit 1 on any problem."""
    opened = Store.open(store, require_complete=False)
    if embed:
        for name in embed_sequences(opened):
            typer.echo(f"{opened.root}: copied the sequence of genome {name!r} into the store")
    for name in genomes_without_sequence(opened):
        typer.echo(f"{opened.root}: genome {name!r} is read from its FASTA {opened.genomes[name]['path']} (the store "
                   f"has no copy); {command('verify', opened.root, '--embed-sequences')} copies it in", err=True)
    problems = verify_store(opened)
    for problem in problems:
        typer.echo(f"{opened.root}/{problem}", err=True)
    if problems:
        typer.echo(f"{len(problems)} problem(s) found in {opened.root}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{opened.root}: OK ({opened.num_tiles} tiles in {len(opened.manifest['shards'])} shards)")
