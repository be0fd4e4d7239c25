"""Every column genoembed reads or writes, in one place.

Coordinate convention (the only place it is stated): all intervals are
**0-based, half-open** ``[start, end)`` on the forward strand of the named
``chrom``, whatever the file format they came from (BED is already so; GFF3,
GTF and GenBank are 1-based closed and are converted on ingest; region strings
``chrom:start-end`` typed by users are 1-based closed like samtools and are
converted when parsed). ``strand`` is ``"+"``, ``"-"`` or ``"."`` (unknown /
not stranded).

Circular contigs (the manifest lists them per genome: ``genomes.NAME.circular``) follow GFF3's
convention: an interval through the origin of a contig of length ``L`` keeps ``start < L`` and has
``end > L`` (``end <= start + L``), covering ``[start, L)`` then ``[0, end - L)``. Tiles, hits and
annotations all use it, so a tile whose ``end`` passes its contig's length is one that wraps; on a
linear contig ``end <= L`` always. Interval arithmetic around the origin: :mod:`genoembed.topology`.
Formats read by tools that know no circles (BED, PAF, BLAST tabular, browser tracks) get such an interval
as two records, ``[start, L)`` then ``[0, end - L)`` (:func:`genoembed.topology.linear_pieces`; alignments
cut at the origin, :mod:`genoembed.hit_formats`), so every record lies on its contig; screens and region
strings write it 1-based as ``--region`` reads it (``9001-200``).

Contig names in output (the only place the rule is stated): contig names repeat across the genomes of a
pangenome (``chr1``, ``contig_1``), so in a store holding more than one genome every output that names a
contig by one text field (BED/BED9, PAF, BLAST tabular, bedGraph/bigWig and their chrom sizes) names it
``GENOME#0#CONTIG`` after PanSN-spec (https://github.com/pangenome/PanSN-spec:
``sample#haplotype#contig``, ``#`` the delimiter; a genoembed genome is one assembly, so its haplotype is
``0``, as pangenome references write a haploid assembly, e.g. ``CHM13#0#chr1``). Genome names never hold
``#`` (:mod:`genoembed.names`), so the name splits back at its first two ``#``. A one-genome store writes
plain contig names. Region and BED queries on a several-genome store take the same qualified names
(``B#0#chr1:1-500``, and the short ``B#chr1``): :func:`pansn_name`, :func:`split_pansn`.
"""

from __future__ import annotations

import pyarrow as pa

from genoembed.errors import InputError

COORDINATES = "0-based half-open"
STRANDS = ("+", "-", ".")

# Tiles: one row per window cut from the genome; ``tile_id`` is the dense
# row number in plan order and is the FAISS id.
TILE_FIELDS = [
    pa.field("tile_id", pa.int64(), nullable=False),
    pa.field("genome", pa.string(), nullable=False),
    pa.field("chrom", pa.string(), nullable=False),
    pa.field("start", pa.int64(), nullable=False),
    pa.field("end", pa.int64(), nullable=False),
    pa.field("strand", pa.string(), nullable=False),
    pa.field("gc", pa.float32(), nullable=False),
    pa.field("n_fraction", pa.float32(), nullable=False),
    pa.field("soft_masked_fraction", pa.float32(), nullable=False),
]
TILES = pa.schema(TILE_FIELDS)
TILE_COLUMNS = [f.name for f in TILE_FIELDS]

# Transient column carried between tiling and embedding; never stored.
SEQUENCE = "sequence"
TILES_WITH_SEQUENCE = pa.schema(TILE_FIELDS + [pa.field(SEQUENCE, pa.string(), nullable=False)])

EMBEDDING = "embedding"
EMBEDDING_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
# Coordinates fit int64 with room to add a window: more digits than this is not a position. Checked before
# int(), which refuses text over 4,300 digits with a ValueError (and takes quadratic time below that).
MAX_COORDINATE_DIGITS = 18


PANSN_DELIMITER = "#"
PANSN_HAPLOTYPE = "0"


def pansn_name(genome: str, chrom: str) -> str:
    """``GENOME#0#CONTIG``: a contig named with its genome, as several-genome outputs write it."""
    return PANSN_DELIMITER.join((genome, PANSN_HAPLOTYPE, chrom))


def split_pansn(name: str) -> list[tuple[str, str]]:
    """The (genome, contig) readings of a qualified name, longest form first: ``G#0#C`` reads as (G, C) and,
    PanSN's haplotype left out, as (G, ``0#C``); ``G#C`` as (G, C). A store keeps the reading it holds."""
    genome, delimiter, rest = name.partition(PANSN_DELIMITER)
    if not (genome and delimiter and rest):
        return []
    haplotype, delimiter, chrom = rest.partition(PANSN_DELIMITER)
    full = [(genome, chrom)] if delimiter and chrom and haplotype.isdigit() else []
    return full + [(genome, rest)]


def contig_namer(contig_lengths: dict[str, dict[str, int]]):
    """``(genome, chrom) -> name`` for outputs of a store with these genomes (genome -> {contig: length}):
    plain contig names for one genome, :func:`pansn_name` for several."""
    if len(contig_lengths) > 1:
        return pansn_name
    return lambda genome, chrom: chrom


def coordinate(text: str, where: str) -> int:
    """A non-negative position typed by a user (ASCII digits only); a one-line InputError naming ``where`` else."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise InputError(f"{where}: coordinate {text[:20]!r} is not a whole number")
    if len(text) > MAX_COORDINATE_DIGITS:
        raise InputError(f"{where}: coordinate of {len(text)} digits is beyond any genome "
                         f"(at most {MAX_COORDINATE_DIGITS} digits)")
    return int(text)


def embeddings_schema(dim: int, dtype: str = "float32") -> pa.Schema:
    """Schema of a stored shard: tile columns plus a fixed-size embedding list."""
    value_type = EMBEDDING_DTYPES[dtype]
    return pa.schema(TILE_FIELDS + [pa.field(EMBEDDING, pa.list_(value_type, dim), nullable=False)])


# Annotations: features from BED / GTF / GFF3 / GenBank, normalised; one row per feature. A file says
# nothing about which of a store's genomes it describes (contig names such as ``chr1`` or ``contig_1``
# repeat across assemblies), so the readers return ``FEATURES`` and a store keeps ``ANNOTATIONS``: the
# same columns led by ``genome``, the store genome the set was added to (``genoembed annotate --genome``).
# ``(genome, chrom)`` is the key of every interval, as in tiles and hits.
#
# Multi-part features (GenBank ``join``/``order``, GFF3 rows sharing one ID,
# a GFF3/GTF transcript's exons, the CDS / UTR / codon rows of one GTF
# transcript, BED12 blocks) keep one row whose ``start``/``end`` is the span
# of the parts, and list the parts in ``parts``, BED12-style but in absolute
# coordinates: each part is ``{start, end, strand}`` (0-based half-open like
# every interval here; a part has its own strand because trans-spliced
# features have parts on both strands), in the order the file gives them
# (GenBank: location order, i.e. transcription order; GFF3/GTF: row order;
# BED12: block order). ``parts`` is null when the feature is one contiguous
# span, and in files written before the column existed: such a row joins as
# its span. Joins (:mod:`genoembed.joins`) match a feature by its parts only,
# so a hit in the gap between two parts does not overlap the feature, and a
# hit touching two parts lists the feature once. A span given as one span by
# the file (a GFF3 gene row, a GenBank gene with a simple location) stays one
# span. A feature crossing the origin of a circular GenBank record is stored
# as two rows, one each side of the origin (attribute ``origin_split``).
PART = pa.struct([pa.field("start", pa.int64()), pa.field("end", pa.int64()), pa.field("strand", pa.string())])
PARTS_SQL_TYPE = 'STRUCT(start BIGINT, "end" BIGINT, strand VARCHAR)[]'  # DuckDB spelling of ``parts``
FEATURE_FIELDS = [
    pa.field("chrom", pa.string(), nullable=False),
    pa.field("start", pa.int64(), nullable=False),
    pa.field("end", pa.int64(), nullable=False),
    pa.field("strand", pa.string(), nullable=False),
    pa.field("type", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=True),
    pa.field("feature_id", pa.string(), nullable=True),
    pa.field("parent", pa.string(), nullable=True),
    pa.field("source", pa.string(), nullable=False),  # file the feature came from
    pa.field("attributes", pa.map_(pa.string(), pa.string()), nullable=True),
    pa.field("parts", pa.list_(PART), nullable=True),
]
FEATURES = pa.schema(FEATURE_FIELDS)
ANNOTATION_FIELDS = [pa.field("genome", pa.string(), nullable=False), *FEATURE_FIELDS]
ANNOTATIONS = pa.schema(ANNOTATION_FIELDS)
ANNOTATION_COLUMNS = [f.name for f in ANNOTATION_FIELDS]

# Hits: one row per (query, rank). ``query_*`` coordinates are null for
# sequence queries that have no genomic origin. ``score`` is cosine similarity
# for the inner-product metric (higher is better) and squared L2 distance for
# the L2 metric (lower is better).
#
# ``strand`` of a hit is the strand of the contig on which the query (as given,
# i.e. after a region query's own strand is applied) matches: ``+`` when the
# query reads like ``chrom[start:end]``, ``-`` when it reads like its reverse
# complement, ``.`` when the sequence cannot tell (no k-mer or alignment
# evidence either way). It is decided from sequence, never from the tile's
# orientation: with alignment evidence (``search(align=True)``) it is the strand
# of the best local alignment, otherwise the strand on which more of the hit's
# 6-mers occur in the query (``evidence.match_strands``). A default store tiles the forward
# strand and its vectors do not depend on orientation, so the tile's own strand
# says nothing about where a query matches.
_LOCUS = ("genome", "chrom", "start", "end", "strand")
HIT_FIELDS = [
    pa.field("query", pa.string(), nullable=False),
    *(pa.field(f"query_{name}", TILES.field(name).type, nullable=True) for name in _LOCUS[1:]),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("tile_id", pa.int64(), nullable=False),
    *(TILES.field(name) for name in _LOCUS),
    pa.field("score", pa.float32(), nullable=False),
]
HITS = pa.schema(HIT_FIELDS)
HIT_COLUMNS = [f.name for f in HIT_FIELDS]

# Alignment evidence appended to hits by ``search(align=True)`` (``evidence.align``): a local
# alignment of the query to the hit tile plus flanks. All null except ``query_length`` when nothing
# aligned. ``identity`` = matches / aligned_length (BLAST's: gap columns count); ``query_aligned_*``
# are on the query as given; ``target_*`` on the contig's forward strand (0-based half-open);
# ``cigar`` (= X I D) reads the target forward against the query, reverse-complemented on ``-``
# (PAF's ``cg`` convention); ``bit_score`` and ``evalue`` are Karlin-Altschul figures for BLASTN
# +1/-2 scoring with gap costs 2/2 over the store's total sequence length.
ALIGNMENT_FIELDS = [
    pa.field("query_length", pa.int64(), nullable=False),
    pa.field("identity", pa.float64(), nullable=True),
    pa.field("query_aligned_start", pa.int64(), nullable=True),
    pa.field("query_aligned_end", pa.int64(), nullable=True),
    pa.field("target_start", pa.int64(), nullable=True),
    pa.field("target_end", pa.int64(), nullable=True),
    pa.field("matches", pa.int64(), nullable=True),
    pa.field("mismatches", pa.int64(), nullable=True),
    pa.field("gap_opens", pa.int64(), nullable=True),
    pa.field("aligned_length", pa.int64(), nullable=True),
    pa.field("alignment_score", pa.int64(), nullable=True),
    pa.field("cigar", pa.string(), nullable=True),
    pa.field("query_coverage", pa.float64(), nullable=True),
    pa.field("bit_score", pa.float64(), nullable=True),
    pa.field("evalue", pa.float64(), nullable=True),
]
ALIGNED_HITS = pa.schema(HIT_FIELDS + ALIGNMENT_FIELDS)
ALIGNMENT_COLUMNS = [f.name for f in ALIGNMENT_FIELDS]

# Mapped blocks (``chain.map_queries``): a query longer than the window, cut into tiles like the store, whose
# collinear tile hits are chained. ``start``/``end`` span the block on the target (its tiles' union, so as exact as
# the tile grid), ``query_block_*`` on the query; ``score`` is the best tile's, ``tile_id`` that tile; ``tiles``
# counts the chained tile hits; ``query_coverage`` is the fraction of the query inside them; ``mapq`` is
# minimap2's reading of the chain scores (60 * (1 - second best / best) for rank 1, else 0).
_BLOCK_INT = {"query_length": pa.int64(), "query_block_start": pa.int64(), "query_block_end": pa.int64()}
BLOCK_FIELDS = [
    HITS.field("query"), *(pa.field(name, kind, nullable=False) for name, kind in _BLOCK_INT.items()),
    *(HITS.field(name) for name in ("rank", "tile_id", *_LOCUS, "score")),
    pa.field("mean_score", pa.float32(), nullable=False),
    pa.field("tiles", pa.int32(), nullable=False),
    pa.field("query_coverage", pa.float64(), nullable=False),
    pa.field("chain_score", pa.float64(), nullable=False),
    pa.field("mapq", pa.int32(), nullable=False),
]
BLOCKS = pa.schema(BLOCK_FIELDS)

# Protein evidence appended to hits by ``search(protein_rerank=K)`` (``protein_evidence``): the best
# translated Smith-Waterman (BLOSUM62 11/1) of the query's coding frames against the six frames of
# the hit tile plus flanks; all null but ``query_length`` when nothing aligned on the tile. ``rank``
# then orders hits by ``protein_bit_score``; ``embedding_rank`` is the rank the vectors gave.
# Frames are BLAST's (+1..+3, -1..-3; the target's counted from the contig's start or end); spans
# are 0-based half-open, the target's on the contig's forward strand, the query's on the query as given.
PROTEIN_FIELDS = [
    pa.field("query_length", pa.int64(), nullable=False),
    pa.field("embedding_rank", pa.int32(), nullable=True),
    pa.field("protein_identity", pa.float64(), nullable=True),
    pa.field("protein_aligned_length", pa.int64(), nullable=True),
    pa.field("protein_score", pa.int64(), nullable=True),
    pa.field("protein_bit_score", pa.float64(), nullable=True),
    pa.field("protein_evalue", pa.float64(), nullable=True),
    pa.field("protein_query_frame", pa.int8(), nullable=True),
    pa.field("protein_target_frame", pa.int8(), nullable=True),
    pa.field("protein_query_start", pa.int64(), nullable=True),
    pa.field("protein_query_end", pa.int64(), nullable=True),
    pa.field("protein_target_start", pa.int64(), nullable=True),
    pa.field("protein_target_end", pa.int64(), nullable=True),
]
PROTEIN_HITS = pa.schema(HIT_FIELDS + PROTEIN_FIELDS)
PROTEIN_COLUMNS = [f.name for f in PROTEIN_FIELDS if f.name.startswith("protein_")]


def validate_table(table: pa.Table, expected: pa.Schema, where: str) -> list[str]:
    """Every way ``table`` differs from ``expected``, each naming ``where``; empty when valid."""
    problems = []
    for field in expected:
        if field.name not in table.column_names:
            problems.append(f"{where}: missing column {field.name!r} ({field.type})")
            continue
        actual = table.schema.field(field.name).type
        if actual != field.type:
            problems.append(f"{where}: column {field.name!r} is {actual}, expected {field.type}")
        elif not field.nullable and table.column(field.name).null_count:
            problems.append(f"{where}: column {field.name!r} has {table.column(field.name).null_count} nulls")
    if "start" in table.column_names and "end" in table.column_names and not problems:
        import pyarrow.compute as pc

        bad = pc.sum(pc.cast(pc.greater(table["start"], table["end"]), pa.int64())).as_py() or 0
        if bad:
            problems.append(f"{where}: {bad} rows have start > end")
        negative = pc.sum(pc.cast(pc.less(table["start"], 0), pa.int64())).as_py() or 0
        if negative:
            problems.append(f"{where}: {negative} rows have negative start")
    if "strand" in table.column_names and not problems:
        import pyarrow.compute as pc

        bad = pc.sum(pc.cast(pc.invert(pc.is_in(table["strand"], pa.array(STRANDS))), pa.int64())).as_py() or 0
        if bad:
            problems.append(f"{where}: {bad} rows have a strand other than + - .")
    return problems
