"""`genoembed search`: nearest tiles to regions, genes, sequences, FASTA records or BED regions."""

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
from genoembed.features import parse_alias_option
from genoembed.schema import ALIGNED_HITS, HITS, PROTEIN_HITS
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
    jsonl = "jsonl"
    parquet = "parquet"
    blast6 = "blast6"
    blast7 = "blast7"
    bed = "bed"
    paf = "paf"


ALIGNED_FORMATS = (HitFormat.blast6, HitFormat.blast7, HitFormat.paf)
# Formats other tools read, written as text, with the number of header lines each chunk starts with.
TEXT_FORMATS = {HitFormat.blast6: 0, HitFormat.blast7: 2, HitFormat.bed: 0, HitFormat.paf: 0}
QUERY_BATCH = 2048  # queries searched (and their results written) at a time: memory is bounded by this
ALIGN_BATCH = 256  # with --align a batch takes seconds: smaller batches stream results and progress sooner
SCREEN_ROWS = 200


@handle_errors
def search(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    region: Optional[list[str]] = typer.Option(None, "--region", "-r", help="Query region chrom:start-end[:strand], 1-based inclusive (repeatable)."),
    sequence: Optional[list[str]] = typer.Option(None, "--sequence", "-s", help="Query DNA sequence (repeatable)."),
    gene: Optional[list[str]] = typer.Option(None, "--gene", help="Query gene by locus_tag, gene name or ID, looked up in the store's annotations (its CDS, parts joined in frame; else its span) or, in a --units genes store, as CONTIG_N (the Nth called gene); --query-genome picks the genome when several hold it (repeatable)."),
    fasta: Optional[Path] = typer.Option(None, "--fasta", help="FASTA file (plain or gzip; - reads stdin): every record is a query."),
    bed: Optional[Path] = typer.Option(None, "--bed", help="BED file of query regions on the store's genome (- reads stdin)."),
    vcf: Optional[Path] = typer.Option(None, "--vcf", help="Apply --sample's variants from this VCF to the --region queries (its first haplotype: the allele listed first in GT)."),
    sample: Optional[str] = typer.Option(None, "--sample", help="Sample of --vcf whose haplotype is applied."),
    k: int = typer.Option(10, "-k", min=1, help="Results reported per query: loci (default), tiles with --tiles, mapped blocks for queries longer than the window; fewer when --evalue / --min-score drop some."),
    nprobe: Optional[int] = typer.Option(None, min=1, help="IVF lists to visit (IVF indexes)."),
    ef_search: Optional[int] = typer.Option(None, min=1, help="HNSW search breadth (HNSW indexes)."),
    k_factor: Optional[int] = typer.Option(None, "--k-factor", min=1, help="Indexes with a refine stage (e.g. IVF1024,PQ32,Refine(SQfp16)): re-rank k * this many candidates of the compressed search with the finer vectors [default: tuned at build time]."),
    genome: Optional[str] = typer.Option(None, "--genome", help="Only return hits from this genome of the store."),
    query_genome: Optional[str] = typer.Option(None, "--query-genome", help="Genome of the store that --region/--bed coordinates refer to (needed only when several genomes share a contig name; or name the contig GENOME#0#CONTIG, as outputs do)."),
    chrom: Optional[list[str]] = typer.Option(None, "--chrom", help="Only return hits on this contig (repeatable: any of them)."),
    where: Optional[str] = typer.Option(None, "--where", help="Only return hits on tiles where this SQL condition on the tiles view holds, e.g. \"gc > 0.5\" or a subquery on annotations (read-only, like `genoembed sql`); with --genome/--chrom all must hold."),
    alias: Optional[list[str]] = typer.Option(None, "--alias", help="A --region/--bed contig name that the store names otherwise: FROM=TO (repeatable), as `annotate --alias`."),
    auto_alias: bool = typer.Option(False, "--auto-alias", help="Read --region/--bed contig names the store lacks as the one store contig they match once normalised (chr1 -> 1, version suffixes), as `annotate --auto-alias`."),
    exclude_self: bool = typer.Option(False, "--exclude-self", help="Drop hits overlapping the query's own region."),
    align: Optional[bool] = typer.Option(None, "--align/--no-align", help="Locally align each query to its hit tile plus flanks (Smith-Waterman, BLASTN scoring) and add identity, coverage, exact coordinates, strand, bit score and E-value (default: on for --format blast6/paf, else off; needs the align extra)."),
    min_identity: Optional[float] = typer.Option(None, "--min-identity", min=0.0, max=1.0, help="Drop hits whose alignment identity (matches / alignment columns, 0-1) is lower (needs --align)."),
    min_bits: Optional[float] = typer.Option(None, "--min-bits", min=0.0, help="Drop hits whose alignment bit score is lower (needs --align)."),
    protein_rerank: Optional[int] = typer.Option(None, "--protein-rerank", min=1, help="Fetch this many tiles per query, align the query's protein to each (translated Smith-Waterman, BLOSUM62 11/1, six frames) and keep the k best by bit score, with protein identity, frames, aligned DNA span, bit score and E-value (for --model protein stores; needs the align and protein extras; near-identical tiles, e.g. one locus in many genomes, count once towards this depth and are reported by their own scores; embeds each query whole)."),
    evalue: float = typer.Option(10.0, "--evalue", "-e", min=0.0, help="Drop hits whose E-value is higher: the alignment's with --align, else the embedding score's under the store's null (random sequences of the query's length and GC searched once per store and cached). 10 like BLAST: a query with no homolog keeps about 10 hits at most."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop hits whose embedding score is lower (cosine; for l2 stores, a squared distance above it)."),
    mapped: bool = typer.Option(True, "--map/--no-map", help="Queries longer than the store's window are cut into tiles like the store and collinear tile hits chained into mapped blocks (query and target spans, query coverage, best and mean tile score); queries under half a window are placed by shared minimizers. --no-map embeds every query whole."),
    loci: bool = typer.Option(True, "--loci/--tiles", help="Show loci (overlapping or touching tile hits of a query on one contig and strand merged, best tile's score) or every tile hit of each query's one vector (no mapping); the search is saved as shown, so SQL ranks are the ranks on screen."),
    annotate: bool = typer.Option(True, "--annotate/--no-annotate", help="Add overlapping and nearest features of the store's annotations (table, tsv, json, parquet)."),
    strand_mode: StrandMode = typer.Option(StrandMode.ignore, "--strand-mode", help="Feature strand vs hit strand for the annotation join."),
    feature_type: Optional[list[str]] = typer.Option(None, "--feature-type", help="Only join features of this type, e.g. gene, CDS (repeatable)."),
    name: str = typer.Option("last", "--name", help="Save the hits under this name (SQL view hits_NAME; 'last' is the view hits)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Save the hits in the store for `genoembed sql` (skipped, with a warning, when the store is read-only)."),
    format: HitFormat = typer.Option(HitFormat.table, "--format", "-f", help="table/tsv, json (one JSON array), jsonl (a JSON object per line), parquet, or formats other tools read: blast6 (BLAST -outfmt 6), blast7 (the same with outfmt 7's # comment lines), bed (BED6: name query#rank, score 0-1000, no header), paf (minimap2 PAF)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results to this file instead of stdout (never inside the store)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for embedding queries (torch) and the vector search (FAISS OpenMP); default: the libraries' own."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the store's model directory to run its own Python code (needed again for custom-code models)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Report queries searched on stderr once a search takes over 2 s [default: when stderr is a terminal]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings."),
):
    """Find the tiles most similar to each query, say on which strand each matches, and show them (merged into
    loci by default) with alignment evidence and annotations."""
    from genoembed.annotate import annotate_hits
    from genoembed.mapping import answer
    from genoembed.names import check_identifier
    from genoembed.saved_searches import HitsWriter

    configure_logging(quiet)
    set_threads(threads)
    refuse_inside_store(output)
    check_identifier(name, "search")
    if str(fasta) == "-" and str(bed) == "-":
        raise InputError("--fasta - and --bed - both read stdin; pipe one of them and give the other as a file")
    if protein_rerank and align:
        raise InputError("--align (DNA evidence) and --protein-rerank (protein evidence) exclude each other; pick one")
    if protein_rerank and format in ALIGNED_FORMATS:
        raise InputError(f"--format {format.value} reports DNA alignments; --protein-rerank reports protein ones "
                         "(use tsv, json or parquet)")
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
    if feature_type:
        from genoembed.annotate import check_feature_types

        found = check_feature_types(opened, tuple(feature_type))
        missing = [kind for kind in feature_type if kind not in found]
        if missing:
            logging.getLogger("genoembed").warning("--feature-type %s matches no feature of %s", ", ".join(missing),
                                                   opened.root)
    screen = format is HitFormat.table and output is None
    shown, hidden = [], 0
    with standard_input_file(bed, ".bed") as bed_path, standard_input_file(fasta, ".fa") as fasta_path, \
            StreamedOutput(None if screen else output, OutputFormat.tsv if screen or format in TEXT_FORMATS
                           else OutputFormat(format.value)) as out, \
            (HitsWriter(opened, name, {"k": k, "exclude_self": exclude_self}) if save
             else contextlib.nullcontext()) as saved:
        queries = _queries(opened, region, sequence, bed_path, fasta_path, vcf, sample, query_genome,
                           parse_alias_option(alias or []), auto_alias, gene)
        columns = None  # the first chunk's columns: later chunks follow them (one TSV header, one Parquet schema)
        report = Progress(progress, quiet)
        for batch in _batches(queries, ALIGN_BATCH if align else QUERY_BATCH):
            report(len(batch))
            settings = {"nprobe": nprobe, "ef_search": ef_search, "k_factor": k_factor}
            common = {"k": k, "exclude_self": exclude_self, "genome": genome, "chrom": chrom, "where": where,
                      "trust_remote_code": trust_remote_code, "align": align, "min_identity": min_identity,
                      "min_bit_score": min_bits, "evalue": evalue, "min_score": min_score}
            if protein_rerank:
                hits, blocks = _protein_hits(opened, batch, k, protein_rerank, loci, settings, exclude_self=exclude_self,
                                             genome=genome, chrom=chrom, where=where,
                                             trust_remote_code=trust_remote_code), None
            else:
                hits, blocks = answer(opened, batch, search_settings=settings, loci=loci, by_length=mapped and loci,
                                      **common)
            if saved is not None:  # what is shown, so ranks agree between the screen and SQL
                for table in (hits, blocks):
                    if table is not None and (table.num_rows or table is hits):
                        target = PROTEIN_HITS if protein_rerank else ALIGNED_HITS if align else HITS
                        saved.write(_conformed(table, target.names).cast(target))
            if format in TEXT_FORMATS:
                if hits is not None:
                    out.text(_formatted(hits, format, opened, higher_is_better), header_lines=TEXT_FORMATS[format])
                if blocks is not None and blocks.num_rows:
                    out.text(_formatted_blocks(blocks, format, opened, higher_is_better),
                             header_lines=TEXT_FORMATS[format])
                continue
            hits = _with_blocks(hits, blocks)
            if hits is None:
                continue
            columns = columns or hits.column_names
            hits = _conformed(hits, columns)
            if annotating:
                hits = annotate_hits(opened, hits, strand=strand_mode.value,
                                     types=tuple(feature_type) if feature_type else None)
            if screen:
                room = SCREEN_ROWS - sum(table.num_rows for table in shown)
                shown.append(compact_hits(hits.slice(0, max(room, 0)), opened))
                hidden += max(0, hits.num_rows - max(room, 0))
            else:
                out.table(hits)
        report.done()
    if screen and not any(table.num_rows for table in shown):
        typer.echo(f"no hit with E-value <= {evalue:g}{f' and score >= {min_score:g}' if min_score is not None else ''}"
                   " (--evalue and --min-score widen the search)")
    elif screen:
        print_table(pa.concat_tables(shown, promote_options="default"), f"{'loci of the ' if loci else ''}top {k} hits",
                    SCREEN_ROWS, more=hidden)


class Progress:
    """"searched N queries (T s)" on stderr, from the first batch that starts after 2 s: on a terminal (one line
    rewritten) or when asked (--progress, one line per batch); never with --no-progress or --quiet."""

    def __init__(self, wanted: bool | None, quiet: bool):
        import sys
        import time

        self._clock = time.monotonic
        self._tty = sys.stderr.isatty()
        self._on = not quiet and (wanted if wanted is not None else self._tty)
        self._start, self._searched, self._shown = self._clock(), 0, False

    def __call__(self, batch: int) -> None:
        elapsed = self._clock() - self._start
        if self._on and self._searched and elapsed > 2:
            typer.echo(f"{chr(13) if self._tty else ''}searched {self._searched:,} queries ({elapsed:.0f} s)",
                       err=True, nl=not self._tty)
            self._shown = True
        self._searched += batch

    def done(self) -> None:
        if self._shown:
            typer.echo(f"{chr(13) if self._tty else ''}searched {self._searched:,} queries "
                       f"({self._clock() - self._start:.0f} s)", err=True)


def _queries(store: Store, regions, sequences, bed: Path | None, fasta: Path | None, vcf, sample, query_genome,
             aliases: dict[str, str] | None = None, auto_alias: bool = False, genes=None):
    """Every query of the command line, in the order given, read lazily (a BED or FASTA of any size streams);
    one longer than ``regions.MAX_QUERY_BASES`` comes as its tiles (the store's window and stride), so a
    whole-chromosome region costs the memory of one batch of tiles, not of the chromosome."""
    from genoembed.gene_query import gene_query
    from genoembed.query_aliases import AliasedSource
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
        source = AliasedSource(query_source(store, query_genome), aliases or {}, auto_alias)
        if regions:
            for query in iter_region_queries(source, regions, window, stride) if vcf is None else \
                    pieces(haplotype_queries(store, regions, vcf, sample, query_genome)):
                given = True
                yield unique(source.renamed(query))
        for query in pieces(iter_bed_queries(source, bed)) if bed else ():
            given = True
            yield unique(source.renamed(query))
    for name in genes or []:
        given = True
        yield from map(unique, query_pieces(gene_query(store, name, query_genome), window, stride))
    for number, text in enumerate(sequences or [], 1):
        given = True
        yield from map(unique, query_pieces(Query(f"sequence{number}", check_sequence(text, f"--sequence #{number}")),
                                            window, stride))
    for query in pieces(iter_fasta_queries(fasta)) if fasta else ():
        given = True
        yield unique(query)
    if not given:
        raise InputError("no query: give --region, --gene, --sequence, --fasta or --bed")


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

    if format in (HitFormat.blast6, HitFormat.blast7):
        return hit_formats.blast6(hits, store.contig_lengths, title=f"genoembed {VERSION} search of {store.root}",
                                  comments=format is HitFormat.blast7)
    if format is HitFormat.bed:
        return hit_formats.bed(hits, store.contig_lengths, higher_is_better, header=False, ranked_names=True)
    return hit_formats.paf(hits, store.contig_lengths)


def _formatted_blocks(blocks: pa.Table, format: HitFormat, store: Store, higher_is_better: bool) -> str:
    """Mapped blocks in a text format: PAF as minimap2 writes it without ``-c``, BED like hits; blast6 needs
    base-level alignments, which blocks do not carry (their queries are left out, with a warning)."""
    from genoembed import hit_formats
    from genoembed.chain import ALIGN_CELLS, blocks_paf

    if format is HitFormat.bed:
        return hit_formats.bed(blocks, store.contig_lengths, higher_is_better, header=False, ranked_names=True)
    import pyarrow.compute as pc

    aligned = pc.is_valid(blocks["alignment_score"]) if "alignment_score" in blocks.column_names \
        else pa.array([False] * blocks.num_rows)
    text = _formatted(blocks.filter(aligned), format, store, higher_is_better)
    rest = blocks.filter(pc.invert(aligned))
    if format is HitFormat.paf:
        return text + blocks_paf(rest, store.contig_lengths)
    if not rest.num_rows:
        return text
    names = sorted(set(rest.column("query").to_pylist()))
    logging.getLogger("genoembed").warning(
        "%d queries were mapped as blocks too long to align (query x target > %d bases), which blast6 cannot "
        "show: %s; use --format paf", len(names), ALIGN_CELLS, ", ".join(names[:3]) + (" ..." if len(names) > 3 else ""))
    return text


def _protein_hits(store: Store, batch, k: int, depth: int, loci: bool, settings: dict, **options) -> pa.Table:
    """The ``depth`` best tiles of each query re-ranked by translated alignment (``protein_evidence``): the ``k``
    best tiles, or with ``loci`` the ``k`` best loci (merged from all re-ranked tiles, ranked by bit score).

    Near-identical tiles (one locus in several genomes of a pangenome) count once towards ``depth``: the search
    widens 4x at a time, up to ``depth`` x the store's genomes, until every query holds ``depth`` groups."""
    import pyarrow.compute as pc

    from genoembed.evidence import merge_loci
    from genoembed.protein_evidence import hit_groups, rerank_store_hits
    from genoembed.search import search as search_store, tile_vectors

    depth = max(k, min(depth, store.num_tiles))
    widest, fetch = min(store.num_tiles, depth * max(len(store.genomes), 1)), depth
    while True:
        found = search_store(store, batch, k=fetch, **options, **settings)
        groups, complete = hit_groups(found, tile_vectors(store, found.column("tile_id").to_numpy()), depth)
        if complete or fetch >= widest:
            break
        fetch = min(widest, 4 * fetch)
    if not loci:
        return rerank_store_hits(store, batch, found, k, groups)
    merged = merge_loci(rerank_store_hits(store, batch, found, depth, groups), higher_is_better=store.metric == "ip")
    return merged.filter(pc.less_equal(merged["rank"], k))


def _with_blocks(hits: pa.Table | None, blocks: pa.Table | None) -> pa.Table | None:
    """Hits and mapped blocks as one table (columns of both; a block's row leaves hit-only columns empty)."""
    tables = [table for table in (hits, blocks) if table is not None and (table.num_rows or table is hits)]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _conformed(table: pa.Table, columns: list[str]) -> pa.Table:
    """``table`` with exactly ``columns`` (missing ones null, others dropped), so every chunk of one output
    shares the first chunk's header."""
    arrays = [table.column(name) if name in table.column_names else pa.nulls(table.num_rows) for name in columns]
    return pa.table(arrays, names=columns)


def _writable(root: Path) -> bool:
    searches = root / "searches"
    return os.access(searches if searches.is_dir() else root, os.W_OK)


def compact_hits(hits: pa.Table, store: Store) -> pa.Table:
    """Screen view: one short column per fact (coordinates 1-based like the region option, so a hit through a
    circular contig's origin reads ``9001-200``); in a store of several genomes each hit names its genome, as
    contig names repeat across assemblies."""
    from genoembed.topology import one_based_span

    lengths = store.contig_lengths
    several = len(lengths) > 1
    rows = []
    for hit in hits.to_pylist():
        length = lengths[hit["genome"]][hit["chrom"]]
        row = {"query": hit["query"], "rank": hit["rank"], **({"genome": hit["genome"]} if several else {}),
               "hit": f"{hit['chrom']}:{one_based_span(hit['start'], hit['end'], length)}", "strand": hit["strand"],
               "score": hit["score"]}
        if "tiles" in hit:
            row["tiles"] = hit["tiles"]
        if hit.get("query_block_start") is not None:  # a mapped block of a long query
            row["query span"] = f"{hit['query_block_start'] + 1}-{hit['query_block_end']}"
            row["query cover"] = f"{100 * hit['query_coverage']:.0f}%"
            row["mean score"] = hit["mean_score"]
        if "identity" in hit:
            aligned = hit["identity"] is not None
            row["identity"] = f"{100 * hit['identity']:.1f}%" if aligned else ""
            row["aligned"] = one_based_span(hit["target_start"], hit["target_end"], length) if aligned else ""
            row["query cover"] = f"{100 * hit['query_coverage']:.0f}%" if aligned else ""
            row["bits"] = f"{hit['bit_score']:.0f}" if aligned else ""
        if "protein_bit_score" in hit:
            aligned = hit["protein_bit_score"] is not None
            row["protein identity"] = f"{100 * hit['protein_identity']:.1f}%" if aligned else ""
            span = one_based_span(hit["protein_target_start"], hit["protein_target_end"], length) if aligned else ""
            row["protein span (frame)"] = f"{span} ({hit['protein_target_frame']:+d})" if aligned else ""
            row["bits"] = f"{hit['protein_bit_score']:.0f}" if aligned else ""
            row["E"] = f"{hit['protein_evalue']:.2g}" if aligned else ""
        if "overlapping" in hit:
            row["overlapping features"] = hit["overlapping"] or ""
            nearest = hit.get("nearest")
            row["nearest (bp)"] = f"{nearest} ({hit['nearest_distance']})" if nearest else ""
        rows.append(row)
    return pa.Table.from_pylist(rows)
