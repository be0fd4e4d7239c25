"""`genoembed annotate`: add a BED/GTF/GFF3/GenBank file to a store, and/or mark contigs circular."""

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
    file: Optional[Path] = typer.Argument(None, help="Annotation file: BED (3-12 columns), GTF, GFF3 or GenBank (optionally .gz)."),
    name: Optional[str] = typer.Option(None, help="Name of this feature set: letters, digits and _ (default: from the file name)."),
    format: Optional[str] = typer.Option(None, "--format", help="bed, gtf, gff3 or genbank (default: from the extension)."),
    alias: Optional[list[str]] = typer.Option(None, "--alias", help="Rename an annotation contig: FROM=TO (repeatable)."),
    auto_alias: bool = typer.Option(False, "--auto-alias", help="Apply the suggested contig renames (chr1->1, version suffixes)."),
    replace: bool = typer.Option(False, "--replace", help="Replace the feature set of that name if the store has one."),
    genome: Optional[str] = typer.Option(None, "--genome", help="Genome of the store the features (or --circular contigs) are on (default: the one genome holding every contig named; needed when contig names repeat across genomes)."),
    circular: Optional[list[str]] = typer.Option(None, "--circular", help="Mark this contig circular (repeatable; done before FILE is added): recorded in the manifest, and tiled round its origin as `genoembed index --circular` would (only the new tiles are embedded)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the store's model directory to run its own Python code (--circular embeds the new tiles with it)."),
):
    """Parse features, check their contigs against one genome of the store, and store them for joins and SQL;
    and/or mark contigs circular after indexing."""
    from genoembed.annotate import add_annotations
    from genoembed.errors import InputError

    if file is None and not circular:
        raise InputError("nothing to do: give an annotation FILE, --circular CONTIG, or both")
    opened = Store.open(store)
    if circular:
        from genoembed.circularise import circularise

        done = circularise(opened, circular, genome=genome, trust_remote_code=trust_remote_code)
        already = sorted(set(circular) - set(done["contigs"]))
        if done["contigs"]:
            typer.echo(f"marked {', '.join(done['contigs'])} of genome {done['genome']} circular: "
                       f"{done['tiles_added']} tiles added round the origin, {done['tiles_removed']} removed")
        if already:
            typer.echo(f"{', '.join(already)} of genome {done['genome']}: already circular, nothing changed")
    if file is not None:
        entry = add_annotations(opened, file, name=name, format=format, aliases=parse_alias_option(alias or []),
                                auto_alias=auto_alias, genome=genome, replace=replace)
        typer.echo(f"added {entry['rows']} features from {file} to genome {entry['genome']} as {entry['path']}")
