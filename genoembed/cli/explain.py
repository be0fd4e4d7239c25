"""`genoembed explain`: which bases of a query and of one of its hits make them similar."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import pyarrow as pa
import typer

from genoembed.cli.common import OutputFormat, configure_logging, emit_table, handle_errors, refuse_inside_store
from genoembed.errors import MissingExtraError


@handle_errors
def explain(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    region: Optional[str] = typer.Option(None, "--region", "-r", help="Query region chrom:start-end[:strand], 1-based inclusive."),
    sequence: Optional[str] = typer.Option(None, "--sequence", "-s", help="Query DNA sequence (instead of --region)."),
    hit: str = typer.Option("1", "--hit", help="The hit to explain: its rank in the query's search (1 = best), or a region chrom:start-end[:strand]."),
    width: int = typer.Option(10, "--width", min=1, help="Occlusion window in bases (transformer models; token-sum models are exact)."),
    top: int = typer.Option(3, "--top", min=1, help="Report this many top-contributing sub-regions of each sequence."),
    top_width: int = typer.Option(50, "--top-width", min=1, help="Length in bases of the reported sub-regions."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Prefix of the files to write: PREFIX.query.bedgraph, PREFIX.hit.bedgraph (.bw with pyBigWig) and PREFIX.png (never inside the store)."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="With --output, also draw PREFIX.png (needs matplotlib: the plot extra)."),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Format of the summary."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings."),
):
    """Split the query-hit cosine into per-base contributions (exact for token-sum models) and show where it comes from."""
    from genoembed.explain import explain_pair, resolve_hit, resolve_query, top_regions
    from genoembed.store import Store

    configure_logging(quiet)
    refuse_inside_store(output)
    opened = Store.open(store)
    embedder = opened.embedder()
    query = resolve_query(opened, region, sequence)
    result = explain_pair(embedder, query, resolve_hit(opened, query, hit, embedder), width)
    files = _write_files(result, output, opened.contig_lengths, plot) if output is not None else []
    rows = [{"sequence": role, "name": item.name, "cosine": result.cosine, "method": result.method,
             "sum": float(values.sum()),
             "top regions": ", ".join(f"{label} ({value:.4f})"
                                      for label, value in top_regions(values, item, top, top_width))}
            for role, item, values in (("query", result.query, result.query_contributions),
                                       ("hit", result.hit, result.hit_contributions))]
    emit_table(pa.Table.from_pylist(rows), format, None, title="contributions to the cosine")
    for path in files:
        typer.echo(str(path), err=True)


def _write_files(result, prefix: Path, contigs: dict[str, dict[str, int]], plot: bool) -> list[Path]:
    """bedGraph (and bigWig) tracks of both sequences, and the PNG; a missing matplotlib is one warning. Contigs
    are named as every track of the store names them (``GENOME#0#CONTIG`` in a store of several genomes)."""
    import dataclasses

    from genoembed.explain import plot_explanation, write_bedgraph, write_bigwig
    from genoembed.schema import contig_namer

    written, target = [], contig_namer(contigs)
    for role, item, values in (("query", result.query, result.query_contributions),
                               ("hit", result.hit, result.hit_contributions)):
        lengths = {target(item.genome, chrom): length for chrom, length in contigs.get(item.genome, {}).items()}
        if item.chrom is not None and item.genome is not None:
            item = dataclasses.replace(item, chrom=target(item.genome, item.chrom))
        written.append(write_bedgraph(Path(f"{prefix}.{role}.bedgraph"), item, values, lengths))
        written.append(write_bigwig(Path(f"{prefix}.{role}.bw"), item, values, lengths))
    if plot:
        try:
            written.append(plot_explanation(result, Path(f"{prefix}.png")))
        except MissingExtraError as error:
            logging.getLogger("genoembed").warning("%s (the tracks are written)", error)
    return [path for path in written if path is not None]
