"""`genoembed search`: nearest tiles to regions, sequences, FASTA records or BED regions."""

from __future__ import annotations

import logging
import os
from enum import Enum
from pathlib import Path
from typing import Optional

import pyarrow as pa
import typer

from genoembed.cli.common import OutputFormat, configure_logging, emit_table, handle_errors, refuse_inside_store
from genoembed.errors import InputError
from genoembed.store import Store


class StrandMode(str, Enum):
    ignore = "ignore"
    same = "same"
    opposite = "opposite"


@handle_errors
def search(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    region: Optional[list[str]] = typer.Option(None, "--region", "-r", help="Query region chrom:start-end[:strand], 1-based inclusive (repeatable)."),
    sequence: Optional[list[str]] = typer.Option(None, "--sequence", "-s", help="Query DNA sequence (repeatable)."),
    fasta: Optional[Path] = typer.Option(None, "--fasta", help="FASTA file: every record is a query."),
    bed: Optional[Path] = typer.Option(None, "--bed", help="BED file of query regions on the store's genome."),
    vcf: Optional[Path] = typer.Option(None, "--vcf", help="Apply --sample's variants from this VCF to the --region queries (its first haplotype: the allele listed first in GT)."),
    sample: Optional[str] = typer.Option(None, "--sample", help="Sample of --vcf whose haplotype is applied."),
    k: int = typer.Option(10, "-k", min=1, help="Neighbours per query."),
    nprobe: Optional[int] = typer.Option(None, min=1, help="IVF lists to visit (IVF indexes)."),
    ef_search: Optional[int] = typer.Option(None, min=1, help="HNSW search breadth (HNSW indexes)."),
    genome: Optional[str] = typer.Option(None, "--genome", help="Only return hits from this genome of the store."),
    query_genome: Optional[str] = typer.Option(None, "--query-genome", help="Genome of the store that --region/--bed coordinates refer to (needed only when several genomes share a contig name)."),
    chrom: Optional[str] = typer.Option(None, "--chrom", help="Only return hits on this contig."),
    exclude_self: bool = typer.Option(False, "--exclude-self", help="Drop hits overlapping the query's own region."),
    annotate: bool = typer.Option(True, "--annotate/--no-annotate", help="Add overlapping and nearest features of the store's annotations."),
    strand_mode: StrandMode = typer.Option(StrandMode.ignore, "--strand-mode", help="Feature strand vs hit strand for the annotation join."),
    feature_type: Optional[list[str]] = typer.Option(None, "--feature-type", help="Only join features of this type, e.g. gene, CDS (repeatable)."),
    name: str = typer.Option("last", "--name", help="Save the hits under this name (SQL view hits_NAME; 'last' is the view hits)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Save the hits in the store for `genoembed sql` (skipped, with a warning, when the store is read-only)."),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results to this file instead of stdout (never inside the store)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the store's model directory to run its own Python code (needed again for custom-code models)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings."),
):
    """Find the tiles most similar to each query and show them with their annotations."""
    from genoembed.annotate import annotate_hits
    from genoembed.search import (Query, bed_queries, check_search_name, check_sequence, fasta_queries, query_source,
                                  region_queries, search as search_store)
    from genoembed.variants import haplotype_queries

    configure_logging(quiet)
    refuse_inside_store(output, store)
    check_search_name(name)
    opened = Store.open(store)
    queries = []
    if vcf is not None and (sample is None or not region):
        raise InputError("--vcf applies one --sample's variants to --region queries: give --sample and --region")
    if region or bed:
        source = query_source(opened, query_genome)
        queries += region_queries(source, region or []) if vcf is None else haplotype_queries(opened, region or [], vcf, sample, query_genome)
        queries += bed_queries(source, bed) if bed else []
    queries += [Query(f"sequence{i + 1}", check_sequence(s, f"--sequence #{i + 1}")) for i, s in enumerate(sequence or [])]
    queries += fasta_queries(fasta) if fasta else []
    if not queries:
        raise InputError("no query: give --region, --sequence, --fasta or --bed")
    if save and not _writable(opened.root):
        logging.getLogger("genoembed").warning("%s is read-only: the hits are not saved (--no-save)", opened.root)
        save = False
    hits = search_store(opened, queries, k=k, nprobe=nprobe, ef_search=ef_search, exclude_self=exclude_self,
                        save_as=name if save else None, genome=genome, chrom=chrom,
                        trust_remote_code=trust_remote_code)
    if annotate and opened.manifest.get("annotations"):
        hits = annotate_hits(opened, hits, strand=strand_mode.value, types=tuple(feature_type) if feature_type else None)
    if format is OutputFormat.table and output is None:
        hits = compact_hits(hits)
    emit_table(hits, format, output, title=f"top {k} hits")


def _writable(root: Path) -> bool:
    searches = root / "searches"
    return os.access(searches if searches.is_dir() else root, os.W_OK)


def compact_hits(hits: pa.Table) -> pa.Table:
    """Screen view: one short column per fact (coordinates 1-based like the region option)."""
    rows = []
    for hit in hits.to_pylist():
        row = {"query": hit["query"], "rank": hit["rank"],
               "hit": f"{hit['chrom']}:{hit['start'] + 1}-{hit['end']}", "strand": hit["strand"],
               "score": hit["score"]}
        if "overlapping" in hit:
            row["overlapping features"] = hit["overlapping"] or ""
            nearest = hit.get("nearest")
            row["nearest (bp)"] = f"{nearest} ({hit['nearest_distance']})" if nearest else ""
        rows.append(row)
    return pa.Table.from_pylist(rows)
