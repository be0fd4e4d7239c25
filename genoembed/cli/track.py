"""`genoembed track`: genome-browser files for one search: hits (BED, BED9) or similarity (bedGraph, bigWig)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from genoembed.cli.common import configure_logging, handle_errors, refuse_inside_store
from genoembed.errors import InputError
from genoembed.store import Store


class TrackFormat(str, Enum):
    bed = "bed"
    bed9 = "bed9"
    bedgraph = "bedgraph"
    bigwig = "bigwig"


SUFFIXES = {".bed": TrackFormat.bed, ".bed9": TrackFormat.bed9, ".bedgraph": TrackFormat.bedgraph, ".bg": TrackFormat.bedgraph,
            ".bw": TrackFormat.bigwig, ".bigwig": TrackFormat.bigwig}


def track_format(output: Path, given: TrackFormat | None) -> TrackFormat:
    """--format, else the output's suffix (.bed, .bed9, .bedGraph/.bg, .bw/.bigWig)."""
    if given is not None:
        return given
    found = SUFFIXES.get(output.suffix.lower())
    if found is None:
        raise InputError(f"--output {output}: cannot tell the format from the suffix; give --format "
                         f"({', '.join(f.value for f in TrackFormat)})")
    return found


@handle_errors
def track(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    output: Path = typer.Option(..., "--output", "-o", help="Track file to write (never inside the store); its suffix picks the format unless --format."),
    region: Optional[list[str]] = typer.Option(None, "--region", "-r", help="Query region chrom:start-end[:strand], 1-based inclusive (repeatable for bed/bed9)."),
    sequence: Optional[list[str]] = typer.Option(None, "--sequence", "-s", help="Query DNA sequence (repeatable for bed/bed9)."),
    format: Optional[TrackFormat] = typer.Option(None, "--format", "-f", help="bed/bed9: the top-k hits (bed9 adds itemRgb by score, ready for bedToBigBed); bedgraph/bigwig: the query's best cosine at every tile position."),
    k: int = typer.Option(10, "-k", min=1, help="Hits per query (bed, bed9): loci ranked as `search` shows them, tiles with --tiles."),
    loci: bool = typer.Option(True, "--loci/--tiles", help="bed/bed9 rows are loci (overlapping or touching tile hits merged), as `search` shows them, or every tile hit."),
    genome: Optional[str] = typer.Option(None, "--genome", help="Only this genome of the store (tracks of a several-genome store name contigs GENOME#0#CONTIG)."),
    query_genome: Optional[str] = typer.Option(None, "--query-genome", help="Genome of the store that --region coordinates refer to (or name the contig GENOME#0#CONTIG, as outputs do)."),
    exclude_self: bool = typer.Option(False, "--exclude-self", help="Drop hits overlapping the query's own region (bed, bed9)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the store's model directory to run its own Python code."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings."),
):
    """Write a genome-browser track of a search: its hits, or the query's similarity along the genome."""
    from genoembed.mapping import answer
    from genoembed.search import Query, check_sequence, query_source, region_queries
    from genoembed.tracks import bedgraph_chunks, chrom_sizes, hits_bed, similarity, write_bigwig

    configure_logging(quiet)
    refuse_inside_store(output)
    fmt = track_format(output, format)
    opened = Store.open(store)
    queries = region_queries(query_source(opened, query_genome), region) if region else []
    queries += [Query(f"sequence{i + 1}", check_sequence(s, f"--sequence #{i + 1}")) for i, s in enumerate(sequence or [])]
    if not queries:
        raise InputError("no query: give --region or --sequence")
    embedder = opened.embedder(trust_remote_code=trust_remote_code)
    if fmt in (TrackFormat.bed, TrackFormat.bed9):
        hits, _ = answer(opened, queries, k=k, exclude_self=exclude_self, embedder=embedder, genome=genome, loci=loci,
                         by_length=False)
        text = hits_bed(hits, opened.contig_lengths, bed9=fmt is TrackFormat.bed9,
                        higher_is_better=opened.metric == "ip")
    elif len(queries) != 1:
        raise InputError(f"a similarity track is for one query, got {len(queries)}; give one --region or --sequence")
    else:
        values = similarity(opened, embedder.embed([queries[0].sequence])[0], genome)
        if fmt is TrackFormat.bigwig:
            write_bigwig(values, chrom_sizes(opened, genome), output)
            return
        text = bedgraph_chunks(values, name=f"genoembed {queries[0].name}")
    try:
        with open(output, "w") as handle:
            handle.writelines([text] if isinstance(text, str) else text)
    except OSError as error:
        raise InputError(f"--output {output}: cannot write ({error.strerror or error})") from None
