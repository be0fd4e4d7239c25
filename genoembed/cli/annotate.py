"""`genoembed annotate`: add a BED/GTF/GFF3/GenBank file to a store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genoembed.features import parse_alias_option
from genoembed.cli.common import handle_errors
from genoembed.store import Store


@handle_errors
def annotate(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    file: Path = typer.Argument(..., help="Annotation file: BED (3-12 columns), GTF, GFF3 or GenBank (optionally .gz)."),
    name: Optional[str] = typer.Option(None, help="Name of this feature set: letters, digits and _ (default: from the file name)."),
    format: Optional[str] = typer.Option(None, "--format", help="bed, gtf, gff3 or genbank (default: from the extension)."),
    alias: Optional[list[str]] = typer.Option(None, "--alias", help="Rename an annotation contig: FROM=TO (repeatable)."),
    auto_alias: bool = typer.Option(False, "--auto-alias", help="Apply the suggested contig renames (chr1->1, version suffixes)."),
    replace: bool = typer.Option(False, "--replace", help="Replace the feature set of that name if the store has one."),
    genome: Optional[str] = typer.Option(None, "--genome", help="Genome of the store the features are on (default: the one genome holding every contig the file names; needed when contig names repeat across genomes)."),
):
    """Parse features, check their contigs against one genome of the store, and store them for joins and SQL."""
    from genoembed.annotate import add_annotations

    entry = add_annotations(Store.open(store), file, name=name, format=format,
                            aliases=parse_alias_option(alias or []), auto_alias=auto_alias, genome=genome, replace=replace)
    typer.echo(f"added {entry['rows']} features from {file} to genome {entry['genome']} as {entry['path']}")
