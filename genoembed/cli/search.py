"""`genoembed search`: nearest tiles to regions, sequences, FASTA records or BED regions."""

from __future__ import annotations

import contextlib
import logging
import os
from enum import Enum
from pathlib import Path
from typing import Optional

import pyarrow as pa
import typer

from genoembed.cli.common import (OutputFormat, StreamedOutput, configure_logging, handle_errors, print_table,
                                  refuse_inside_store, set_threads, standard_input_file)
from genoembed.errors import InputError
from genoembed.store import Store
from genoembed.version import VERSION


class StrandMode(str, Enum):
    ignore = "ignore"
    same = "same"
    opposite = "opposite"


class HitFormat(str, Enum):
    table = "table"
    tsv = "tsv"
    json = "json"
    parquet = "parquet"
    blast6 = "blast6"
    bed = "bed"
    paf = "paf"


ALIGNED_FORMATS = (HitFormat.blast6, HitFormat.paf)
# Formats other tools read, written as text, with the number of header lines each chunk starts with.
TEXT_FORMATS = {HitFormat.blast6: 2, HitFormat.bed: 1, HitFormat.paf: 0}
QUERY_BATCH = 2048  # queries searched (and their results written) at a time: memory is bounded by this
SCREEN_ROWS = 200


@handle_errors
def search(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    region: Optional[list[str]] = typer.Option(None, "--region", "-r", help="Query region chrom:start-end[:strand], 1-based inclusive (repeatable)."),
    sequence: Optional[list[str]] = typer.Option(None, "--sequence", "-s", help="Query DNA sequence (repeatable)."),
    fasta: Optional[Path] = typer.Option(None, "--fasta", help="FASTA file (plain or gzip; - reads stdin): every record is a query."),
    bed: Optional[Path] = typer.Option(None, "--bed", help="BED file of query regions on the store's genome (- reads stdin)."),
    vcf: Optional[Path] = typer.Option(None, "--vcf", help="Apply --sample's variants from this VCF to the --region queries (its first haplotype: the allele listed first in GT)."),
    sample: Optional[str] = typer.Option(None, "--sample", help="Sample of --vcf whose haplotype is applied."),
    k: int = typer.Option(10, "-k", min=1, help="Tiles fetched per query (neighbours); with --loci they merge into at most k loci."),
    nprobe: Optional[int] = typer.Option(None, min=1, help="IVF lists to visit (IVF indexes)."),
    ef_search: Optional[int] = typer.Option(None, min=1, help="HNSW search breadth (HNSW indexes)."),
    k_factor: Optional[int] = typer.Option(None, "--k-factor", min=1, help="Indexes with a refine stage (e.g. IVF1024,PQ32,Refine(SQfp16)): re-rank k * this many candidates of the compressed search with the finer vectors [default: tuned at build time]."),
    genome: Optional[str] = typer.Option(None, "--genome", help="Only return hits from this genome of the store."),
    query_genome: Optional[str] = typer.Option(None, "--query-genome", help="Genome of the store that --region/--bed coordinates refer to (needed only when several genomes share a contig name)."),
    chrom: Optional[str] = typer.Option(None, "--chrom", help="Only return hits on this contig."),
    exclude_self: bool = typer.Option(False, "--exclude-self", help="Drop hits overlapping the query's own region."),
    align: Optional[bool] = typer.Option(None, "--align/--no-align", help="Locally align each query to its hit tile plus flanks (Smith-Waterman, BLASTN scoring) and add identity, coverage, exact coordinates, strand, bit score and E-value (default: on for --format blast6/paf, else off; needs the align extra)."),
    min_identity: Optional[float] = typer.Option(None, "--min-identity", min=0.0, max=1.0, help="Drop hits whose alignment identity (matches / alignment columns, 0-1) is lower (needs --align)."),
    min_score: Optional[float] = typer.Option(None, "--min-score", min=0.0, help="Drop hits whose alignment bit score is lower (needs --align)."),
    loci: bool = typer.Option(True, "--loci/--tiles", help="Show loci (overlapping or touching tile hits of a query on one contig and strand merged, best tile's score) or every tile hit; saved searches always keep tile hits."),
    annotate: bool = typer.Option(True, "--annotate/--no-annotate", help="Add overlapping and nearest features of the store's annotations (table, tsv, json, parquet)."),
    strand_mode: StrandMode = typer.Option(StrandMode.ignore, "--strand-mode", help="Feature strand vs hit strand for the annotation join."),
    feature_type: Optional[list[str]] = typer.Option(None, "--feature-type", help="Only join features of this type, e.g. gene, CDS (repeatable)."),
    name: str = typer.Option("last", "--name", help="Save the hits under this name (SQL view hits_NAME; 'last' is the view hits)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Save the hits in the store for `genoembed sql` (skipped, with a warning, when the store is read-only)."),
    format: HitFormat = typer.Option(HitFormat.table, "--format", "-f", help="table/tsv/json/parquet, or formats other tools read: blast6 (BLAST -outfmt 6, with # comment lines), bed (BED6, 0-1000 score), paf (minimap2 PAF)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results to this file instead of stdout (never inside the store)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for embedding queries (torch) and the vector search (FAISS OpenMP); default: the libraries' own."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the store's model directory to run its own Python code (needed again for custom-code models)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings."),
):
    """Find the tiles most similar to each query, say on which strand each matches, and show them (merged into
    loci by default) with alignment evidence and annotations."""
    from genoembed.annotate import annotate_hits
    from genoembed.evidence import merge_loci
    from genoembed.names import check_identifier
    from genoembed.saved_searches import HitsWriter
    from genoembed.search import search as search_store

    configure_logging(quiet)
    set_threads(threads)
    refuse_inside_store(output)
    check_identifier(name, "search")
    if str(fasta) == "-" and str(bed) == "-":
        raise InputError("--fasta - and --bed - both read stdin; pipe one of them and give the other as a file")
    if align is False and format in ALIGNED_FORMATS:
        raise InputError(f"--format {format.value} reports alignments; drop --no-align")
    align = format in ALIGNED_FORMATS if align is None else align
    opened = Store.open(store)
    if vcf is not None and (sample is None or not region):
        raise InputError("--vcf applies one --sample's variants to --region queries: give --sample and --region")
    if save and not _writable(opened.root):
        logging.getLogger("genoembed").warning("%s is read-only: the hits are not saved (--no-save)", opened.root)
        save = False
    higher_is_better = opened.metric == "ip"
    annotating = annotate and bool(opened.manifest.get("annotations")) and format not in TEXT_FORMATS
    screen = format is HitFormat.table and output is None
    shown, hidden = [], 0
    with standard_input_file(bed, ".bed") as bed_path, standard_input_file(fasta, ".fa") as fasta_path, \
            StreamedOutput(None if screen else output, OutputFormat.tsv if screen or format in TEXT_FORMATS
                           else OutputFormat(format.value)) as out, \
            (HitsWriter(opened, name, {"k": k, "exclude_self": exclude_self}) if save
             else contextlib.nullcontext()) as saved:
        queries = _queries(opened, region, sequence, bed_path, fasta_path, vcf, sample, query_genome)
        for batch in _batches(queries, QUERY_BATCH):
            hits = search_store(opened, batch, k=k, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor,
                                exclude_self=exclude_self, genome=genome, chrom=chrom,
                                trust_remote_code=trust_remote_code, align=align,
                                min_identity=min_identity, min_bit_score=min_score)
            if saved is not None:
                saved.write(hits)
            if loci:
                hits = merge_loci(hits, higher_is_better=higher_is_better)
            if format in TEXT_FORMATS:
                out.text(_formatted(hits, format, opened, higher_is_better), header_lines=TEXT_FORMATS[format])
                continue
            if annotating:
                hits = annotate_hits(opened, hits, strand=strand_mode.value,
                                     types=tuple(feature_type) if feature_type else None)
            if screen:
                room = SCREEN_ROWS - sum(table.num_rows for table in shown)
                shown.append(compact_hits(hits.slice(0, max(room, 0))))
                hidden += max(0, hits.num_rows - max(room, 0))
            else:
                out.table(hits)
    if screen:
        print_table(pa.concat_tables(shown, promote_options="default"), f"{'loci of the ' if loci else ''}top {k} hits",
                    SCREEN_ROWS, more=hidden)


def _queries(store: Store, regions, sequences, bed: Path | None, fasta: Path | None, vcf, sample, query_genome):
    """Every query of the command line, in the order given, read lazily (a BED or FASTA of any size streams);
    one longer than ``regions.MAX_QUERY_BASES`` comes as its tiles (the store's window and stride), so a
    whole-chromosome region costs the memory of one batch of tiles, not of the chromosome."""
    from genoembed.search import (Query, UniqueNames, check_sequence, iter_bed_queries, iter_fasta_queries,
                                  iter_region_queries, query_pieces, query_source)
    from genoembed.variants import haplotype_queries

    tiling = store.provenance["tiling"]
    window, stride = tiling["window"], tiling["stride"]
    unique, given = UniqueNames(), False

    def pieces(queries):
        for query in queries:
            yield from query_pieces(query, window, stride)

    if regions or bed:
        source = query_source(store, query_genome)
        if regions:
            for query in iter_region_queries(source, regions, window, stride) if vcf is None else \
                    pieces(haplotype_queries(store, regions, vcf, sample, query_genome)):
                given = True
                yield unique(query)
        for query in pieces(iter_bed_queries(source, bed)) if bed else ():
            given = True
            yield unique(query)
    for number, text in enumerate(sequences or [], 1):
        given = True
        yield from map(unique, query_pieces(Query(f"sequence{number}", check_sequence(text, f"--sequence #{number}")),
                                            window, stride))
    for query in pieces(iter_fasta_queries(fasta)) if fasta else ():
        given = True
        yield unique(query)
    if not given:
        raise InputError("no query: give --region, --sequence, --fasta or --bed")


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _formatted(hits: pa.Table, format: HitFormat, store: Store, higher_is_better: bool) -> str:
    from genoembed import hit_formats

    if format is HitFormat.blast6:
        return hit_formats.blast6(hits, title=f"genoembed {VERSION} search of {store.root}")
    if format is HitFormat.bed:
        return hit_formats.bed(hits, higher_is_better)
    return hit_formats.paf(hits, store.contig_lengths)


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
        if "tiles" in hit:
            row["tiles"] = hit["tiles"]
        if "identity" in hit:
            aligned = hit["identity"] is not None
            row["identity"] = f"{100 * hit['identity']:.1f}%" if aligned else ""
            row["aligned"] = f"{hit['target_start'] + 1}-{hit['target_end']}" if aligned else ""
            row["query cover"] = f"{100 * hit['query_coverage']:.0f}%" if aligned else ""
            row["bits"] = f"{hit['bit_score']:.0f}" if aligned else ""
        if "overlapping" in hit:
            row["overlapping features"] = hit["overlapping"] or ""
            nearest = hit.get("nearest")
            row["nearest (bp)"] = f"{nearest} ({hit['nearest_distance']})" if nearest else ""
        rows.append(row)
    return pa.Table.from_pylist(rows)
