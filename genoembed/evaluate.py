"""Retrieval quality against real ground truth: truth tables, metrics and the `eval` run.

Ground truth never comes from an embedding. It is an *alignment table*: where
each query sequence (a draft contig, or another strain's chromosome) lies on
the reference, from NUCmer ``show-coords`` (:func:`read_coords`) or from
minimap2 (:func:`derive_truth_minimap2`). A query tile cut from a contig is
mapped onto the reference linearly within every alignment block that covers
most of it (:func:`truth_for_tiles`); a search hit is **correct** when it
overlaps one of the tile's true reference spans on the same contig
(*either-strand*), and additionally on the true strand (*same-strand*).

Coordinates are 0-based half-open everywhere (show-coords and PAF are
converted on reading). Spans are ``(chrom, start, end, strand)`` tuples.

Metrics (:func:`correct_ranks`, :func:`recall_at_k`, :func:`mrr`,
:func:`binned_recall`, :func:`ann_recall`) are pure functions over plain
Python/numpy values, so they are checked on hand-made cases. :func:`evaluate`
builds one reference store per embedder, searches mutated query tiles through
each index configuration, runs minimap2 on the same tiles as the alignment
upper bound, and returns tidy rows (one per method x configuration x mutation
x identity bin).

:func:`gene_family_agreement` asks a looser question with annotation truth:
does the top hit of a gene tile land in a gene of the same family
(:func:`family_key`)?
"""

from __future__ import annotations

import gzip
import logging
import math
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from genoembed.errors import InputError

log = logging.getLogger(__name__)

Span = tuple[str, int, int, str]

# One alignment block: query (contig) span placed on a reference span.
ALIGNMENTS = pa.schema([
    pa.field("ref_chrom", pa.string(), nullable=False),
    pa.field("ref_start", pa.int64(), nullable=False),
    pa.field("ref_end", pa.int64(), nullable=False),
    pa.field("query_chrom", pa.string(), nullable=False),
    pa.field("query_start", pa.int64(), nullable=False),
    pa.field("query_end", pa.int64(), nullable=False),
    pa.field("strand", pa.string(), nullable=False),
    pa.field("identity", pa.float64(), nullable=False),  # percent, 0-100
])

# Truth for query tiles: one row per (tile, covering alignment block).
TRUTH = pa.schema([
    pa.field("query_index", pa.int64(), nullable=False),
    pa.field("ref_chrom", pa.string(), nullable=False),
    pa.field("ref_start", pa.int64(), nullable=False),
    pa.field("ref_end", pa.int64(), nullable=False),
    pa.field("strand", pa.string(), nullable=False),
    pa.field("identity", pa.float64(), nullable=False),
    pa.field("cover", pa.float64(), nullable=False),  # fraction of the tile inside the block
])

# Identity bins (percent identity of the alignment block that places the tile).
IDENTITY_BINS = (("100", 100.0, math.inf), ("95-99", 95.0, 100.0), ("<95", -math.inf, 95.0))


# --------------------------------------------------------------------------- truth tables


def _open_text(path: Path):
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rt") if magic == b"\x1f\x8b" else open(path, "rt")


def read_coords(path: str | Path) -> pa.Table:
    """NUCmer ``show-coords`` table (plain or gzip) -> ``ALIGNMENTS`` (0-based half-open).

    ``S1 E1`` is the 1-based closed reference span, ``S2 E2`` the contig span;
    ``S2 > E2`` means the contig aligns on the reverse strand. The last two
    columns (TAGS) name the reference and the contig.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: coords file not found")
    rows = {name: [] for name in ALIGNMENTS.names}
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if "|" not in line or line.lstrip().startswith("["):
                    continue
                fields = line.split("|", 4)  # reference names may contain "|"
                try:
                    s1, e1 = (int(x) for x in fields[0].split())
                    s2, e2 = (int(x) for x in fields[1].split())
                    identity = float(fields[3].split()[0])
                    ref, contig = fields[4].split()[:2]
                except (ValueError, IndexError):
                    raise InputError(f"{path}:{number}: not a show-coords alignment line "
                                     "(expected 'S1 E1 | S2 E2 | LEN1 LEN2 | %IDY | REF CONTIG')") from None
                rows["ref_chrom"].append(ref)
                rows["ref_start"].append(min(s1, e1) - 1)
                rows["ref_end"].append(max(s1, e1))
                rows["query_chrom"].append(contig)
                rows["query_start"].append(min(s2, e2) - 1)
                rows["query_end"].append(max(s2, e2))
                rows["strand"].append("-" if s2 > e2 else "+")
                rows["identity"].append(identity)
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: unreadable coords file ({error})") from None
    if not rows["ref_chrom"]:
        raise InputError(f"{path}: no alignment lines found; expected NUCmer `show-coords` output")
    return pa.Table.from_pydict(rows, schema=ALIGNMENTS)


def read_paf(path_or_text: str | Path, min_length: int = 0, split_gap: int | None = None) -> pa.Table:
    """minimap2 PAF (file path, or the text itself) -> ``ALIGNMENTS``; identity = matches / block length.

    With ``split_gap`` and a CIGAR (``cg:Z``, from ``minimap2 -c``), each block is cut at every
    indel of at least ``split_gap`` bp into sub-blocks that keep the block's identity: tiles are
    mapped linearly within a block, and across a 2.6 Mbp block of two K-12 strains the kilobase
    insertions shift that mapping by more than a tile.
    """
    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
    rows = {name: [] for name in ALIGNMENTS.names}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 12:
            continue
        matches, block = int(fields[9]), int(fields[10])
        if block < min_length:
            continue
        q_start, q_end, t_start, t_end = int(fields[2]), int(fields[3]), int(fields[7]), int(fields[8])
        cigar = next((tag[5:] for tag in fields[12:] if tag.startswith("cg:Z:")), None)
        pieces = [(q_start, q_end, t_start, t_end)]
        if split_gap is not None and cigar:
            pieces = split_at_indels(q_start, q_end, t_start, fields[4], cigar, split_gap)
        for piece_q_start, piece_q_end, piece_t_start, piece_t_end in pieces:
            rows["query_chrom"].append(fields[0])
            rows["query_start"].append(piece_q_start)
            rows["query_end"].append(piece_q_end)
            rows["strand"].append(fields[4])
            rows["ref_chrom"].append(fields[5])
            rows["ref_start"].append(piece_t_start)
            rows["ref_end"].append(piece_t_end)
            rows["identity"].append(100.0 * matches / max(block, 1))
    return pa.Table.from_pydict(rows, schema=ALIGNMENTS)


def split_at_indels(q_start: int, q_end: int, t_start: int, strand: str, cigar: str,
                    min_gap: int) -> list[tuple[int, int, int, int]]:
    """An alignment's ``(query_start, query_end, ref_start, ref_end)`` pieces between indels >= ``min_gap``.

    PAF CIGARs walk the reference forward; on a '-' strand alignment the query is walked from
    ``q_end`` down, so query offsets are mirrored.
    """
    pieces = []
    t = piece_t = t_start
    q = piece_q = 0

    def close():
        if t > piece_t and q > piece_q:
            span = (q_start + piece_q, q_start + q) if strand == "+" else (q_end - q, q_end - piece_q)
            pieces.append((*span, piece_t, t))

    for length, op in re.findall(r"(\d+)([MIDN=X])", cigar):
        n = int(length)
        if op in "M=X":
            t, q = t + n, q + n
            continue
        if n >= min_gap:
            close()
        if op == "I":
            q += n
        else:
            t += n
        if n >= min_gap:
            piece_t, piece_q = t, q
    close()
    return pieces


def minimap2_available() -> bool:
    return shutil.which("minimap2") is not None


def _minimap2(reference: Path, query: Path, preset: str, extra: Sequence[str] = (), threads: int = 2) -> str:
    if not minimap2_available():
        from genoembed.errors import MissingExtraError

        raise MissingExtraError("minimap2 is not installed; install it (e.g. `apt-get install minimap2`) "
                                "or pass a coords table")
    command = ["minimap2", "-x", preset, "-t", str(threads), *extra, str(reference), str(query)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise InputError(f"minimap2 failed on {query} vs {reference}: {last}")
    return done.stdout


def derive_truth_minimap2(reference: str | Path, query: str | Path, preset: str = "asm20",
                          min_length: int = 500, threads: int = 2, split_gap: int | None = 50) -> pa.Table:
    """Align ``query`` (contigs or another strain) to ``reference`` with minimap2 -> ``ALIGNMENTS``.

    Primary and secondary blocks of at least ``min_length`` bp are kept, like
    NUCmer's all-placements table, so repeats get every true locus. Blocks are
    cut at indels of ``split_gap`` bp or more (:func:`read_paf`) so that the
    linear tile mapping stays on the true bases.
    """
    for path in (reference, query):
        if not Path(path).is_file():
            raise InputError(f"{path}: FASTA file not found")
    paf = _minimap2(Path(reference), Path(query), preset, extra=("-c",), threads=threads)  # -c: exact block ends
    table = read_paf(paf, min_length=min_length, split_gap=split_gap)
    if table.num_rows == 0:
        raise InputError(f"minimap2 found no alignment of {query} on {reference} of at least {min_length} bp; "
                         "are these the same or related genomes?")
    return table


def truth_for_tiles(tiles: Sequence[Span], alignments: pa.Table, min_cover: float = 0.5) -> pa.Table:
    """True reference spans of query tiles ``(contig, start, end, strand)`` -> ``TRUTH`` rows.

    Within every alignment block on the tile's contig that covers at least
    ``min_cover`` of the tile, the covered part is mapped linearly onto the
    block's reference span (reversed for a minus-strand block); the true strand
    is the tile's strand flipped by the block's strand. A tile can have several
    true spans (repeats); tiles without any have no row.
    """
    if not 0.0 < min_cover <= 1.0:
        raise InputError(f"min_cover={min_cover} must be in (0, 1]")
    columns = {name: alignments.column(name).to_numpy(zero_copy_only=False) for name in ALIGNMENTS.names}
    by_contig: dict[str, np.ndarray] = {}
    for row, contig in enumerate(columns["query_chrom"]):
        by_contig.setdefault(contig, []).append(row)
    by_contig = {contig: np.asarray(rows) for contig, rows in by_contig.items()}
    out = {name: [] for name in TRUTH.names}
    for index, (contig, start, end, strand) in enumerate(tiles):
        rows = by_contig.get(contig)
        if rows is None or end <= start:
            continue
        c_start, c_end = columns["query_start"][rows], columns["query_end"][rows]
        lo, hi = np.maximum(c_start, start), np.minimum(c_end, end)
        cover = (hi - lo) / (end - start)
        for j in np.flatnonzero(cover >= min_cover):
            row = rows[j]
            r_start, r_end = columns["ref_start"][row], columns["ref_end"][row]
            scale = (r_end - r_start) / max(c_end[j] - c_start[j], 1)
            a, b = (lo[j] - c_start[j]) * scale, (hi[j] - c_start[j]) * scale
            if columns["strand"][row] == "+":
                mapped = (r_start + a, r_start + b)
                true_strand = strand
            else:
                mapped = (r_end - b, r_end - a)
                true_strand = "-" if strand == "+" else "+"
            out["query_index"].append(index)
            out["ref_chrom"].append(columns["ref_chrom"][row])
            out["ref_start"].append(int(math.floor(mapped[0])))
            out["ref_end"].append(max(int(math.ceil(mapped[1])), int(math.floor(mapped[0])) + 1))
            out["strand"].append(true_strand)
            out["identity"].append(float(columns["identity"][row]))
            out["cover"].append(float(cover[j]))
    return pa.Table.from_pydict(out, schema=TRUTH)


def truth_lists(truth: pa.Table, n_queries: int) -> tuple[list[list[Span]], np.ndarray]:
    """``TRUTH`` rows -> per-query span lists and the identity of each query's best block (NaN if none)."""
    spans: list[list[Span]] = [[] for _ in range(n_queries)]
    best = np.full(n_queries, np.nan)
    best_key = [(-1.0, -1.0)] * n_queries
    for row in truth.to_pylist():
        i = row["query_index"]
        spans[i].append((row["ref_chrom"], row["ref_start"], row["ref_end"], row["strand"]))
        key = (row["cover"], row["identity"])
        if key > best_key[i]:
            best_key[i], best[i] = key, row["identity"]
    return spans, best


# --------------------------------------------------------------------------- metrics


def _overlaps(hit: Span, true: Span, same_strand: bool) -> bool:
    return hit[0] == true[0] and hit[1] < true[2] and true[1] < hit[2] and (not same_strand or hit[3] == true[3])


def correct_ranks(hit_spans: Sequence[Sequence[Span]], truth: Sequence[Sequence[Span]],
                  same_strand: bool = False) -> np.ndarray:
    """1-based rank of each query's first correct hit (0 when none is correct).

    ``hit_spans[i]`` are query i's hits best first; ``truth[i]`` its true spans.
    A hit is correct when it overlaps a true span (and, with ``same_strand``,
    has the true span's strand).
    """
    if len(hit_spans) != len(truth):
        raise InputError(f"{len(hit_spans)} hit lists but {len(truth)} truth lists; give one of each per query")
    ranks = np.zeros(len(hit_spans), dtype=np.int64)
    for i, (hits, spans) in enumerate(zip(hit_spans, truth)):
        for rank, hit in enumerate(hits, 1):
            if any(_overlaps(hit, true, same_strand) for true in spans):
                ranks[i] = rank
                break
    return ranks


def _ranks(hit_spans, truth, same_strand, ranks):
    return np.asarray(ranks) if ranks is not None else correct_ranks(hit_spans, truth, same_strand)


def recall_at_k(hit_spans=None, truth=None, k: int = 1, same_strand: bool = False,
                ranks: np.ndarray | None = None) -> float:
    """Fraction of queries with a correct hit among the top ``k`` (from spans, or precomputed ``ranks``)."""
    ranks = _ranks(hit_spans, truth, same_strand, ranks)
    if len(ranks) == 0:
        return math.nan
    return float(np.mean((ranks >= 1) & (ranks <= k)))


def mrr(hit_spans=None, truth=None, same_strand: bool = False, ranks: np.ndarray | None = None) -> float:
    """Mean reciprocal rank of the first correct hit (0 for a query with none)."""
    ranks = _ranks(hit_spans, truth, same_strand, ranks)
    if len(ranks) == 0:
        return math.nan
    return float(np.mean(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)))


def identity_bin(identity: float) -> str | None:
    """'100', '95-99' or '<95' for a percent identity (None for NaN)."""
    if identity != identity:
        return None
    for name, low, high in IDENTITY_BINS:
        if low <= identity < high or (name == "100" and identity >= 100.0):
            return name
    return None


def binned_recall(ranks: np.ndarray, identities: Sequence[float], k: int) -> dict[str, tuple[float, int]]:
    """Recall@k per identity bin: ``{bin: (recall, queries)}`` (NaN recall for an empty bin)."""
    ranks = np.asarray(ranks)
    labels = np.array([identity_bin(x) for x in identities], dtype=object)
    result = {}
    for name, _low, _high in IDENTITY_BINS:
        mask = labels == name
        result[name] = (recall_at_k(ranks=ranks[mask], k=k) if mask.any() else math.nan, int(mask.sum()))
    return result


def ann_recall(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-``k`` ids that the approximate search also returned in its top ``k``."""
    approx_ids, exact_ids = np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise InputError(f"{approx_ids.shape[0]} approximate vs {exact_ids.shape[0]} exact result rows")
    found = 0
    for approx, exact in zip(approx_ids, exact_ids):
        wanted = exact[exact >= 0]
        found += len(np.intersect1d(approx[approx >= 0], wanted)) / max(len(wanted), 1)
    return found / max(len(exact_ids), 1)


# --------------------------------------------------------------------------- the evaluation run


@dataclass(frozen=True)
class QueryTile:
    """A query tile cut from a query contig (``strand`` '-' = reverse complement)."""

    contig: str
    start: int
    end: int
    strand: str
    sequence: str


@dataclass(frozen=True)
class IndexConfig:
    """One index factory string and one search setting (nprobe for IVF, ef_search for HNSW)."""

    factory: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None

    @property
    def label(self) -> str:
        knob = f" nprobe={self.nprobe}" if self.nprobe else f" efSearch={self.ef_search}" if self.ef_search else ""
        return self.factory + knob


def sample_query_tiles(queries, alignments: pa.Table, tile: int, n: int, seed: int = 0,
                       min_cover: float = 0.5, strands: Sequence[str] = ("+", "-")) -> tuple[list[QueryTile], pa.Table]:
    """``n`` non-overlapping tiles of the query genome that have a true locus, each on a random strand.

    Returns the tiles and their ``TRUTH`` rows (``query_index`` = position in the list).
    """
    from genoembed.genome import reverse_complement

    candidates = [(contig, int(s), int(s) + tile, "+") for contig, length in queries.contigs.items()
                  for s in range(0, length - tile + 1, tile)]
    if not candidates:
        raise InputError(f"{queries.path}: no contig is at least {tile} bp long; use a shorter --tile")
    truth = truth_for_tiles(candidates, alignments, min_cover=min_cover)
    placed = np.unique(truth.column("query_index").to_numpy())
    if len(placed) == 0:
        raise InputError(f"{queries.path}: no {tile} bp query tile has a true locus in the alignment table; "
                         "do the coords belong to these contigs and this reference?")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(placed, size=min(n, len(placed)), replace=False))
    chosen_strands = rng.choice(list(strands), size=len(chosen))
    tiles = []
    for index, strand in zip(chosen, chosen_strands):
        contig, start, end, _ = candidates[index]
        sequence = queries.fetch(contig, start, end).upper()
        tiles.append(QueryTile(contig, start, end, str(strand),
                               reverse_complement(sequence) if strand == "-" else sequence))
    truth = truth_for_tiles([(t.contig, t.start, t.end, t.strand) for t in tiles], alignments, min_cover)
    return tiles, truth


def mutated_sequences(tiles: Sequence[QueryTile], substitution_rate: float, indel_rate: float,
                      seed: int = 0) -> list[str]:
    """Each tile's sequence with injected substitutions / indels, seeded per tile."""
    from genoembed.synthetic import mutate

    if substitution_rate == 0 and indel_rate == 0:
        return [t.sequence for t in tiles]
    return [mutate(t.sequence, substitution_rate, indel_rate, seed=seed * 100_003 + i) for i, t in enumerate(tiles)]


def _tile_coordinates(store) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    chroms, starts, ends, strands = [], [], [], []
    for batch in store.iter_batches(["chrom", "start", "end", "strand"]):
        chroms += batch.column(0).to_pylist()
        starts.append(batch.column(1).to_numpy())
        ends.append(batch.column(2).to_numpy())
        strands += batch.column(3).to_pylist()
    return np.array(chroms, dtype=object), np.concatenate(starts), np.concatenate(ends), np.array(strands, dtype=object)


def _spans_from_ids(ids: np.ndarray, coordinates) -> list[list[Span]]:
    chroms, starts, ends, strands = coordinates
    return [[(chroms[i], int(starts[i]), int(ends[i]), strands[i]) for i in row if i >= 0] for row in ids]


def _minimap2_spans(reference: Path, sequences: Sequence[str], preset: str, workdir: Path,
                    max_hits: int) -> tuple[list[list[Span]], float]:
    """minimap2 hits of each query sequence (primary first, then secondaries) and the wall time."""
    fasta = workdir / "minimap2_queries.fa"
    fasta.write_text("".join(f">q{i}\n{s}\n" for i, s in enumerate(sequences)))
    began = time.perf_counter()
    paf = _minimap2(reference, fasta, preset, extra=("--secondary=yes", "-N", str(max(max_hits - 1, 1))))
    seconds = time.perf_counter() - began
    hits: list[list[tuple[int, Span]]] = [[] for _ in sequences]
    for line in paf.splitlines():
        fields = line.split("\t")
        if len(fields) < 12:
            continue
        primary = 0 if "tp:A:P" in fields[12:] else 1
        hits[int(fields[0][1:])].append((primary, (fields[5], int(fields[7]), int(fields[8]), fields[4])))
    return [[span for _, span in sorted(h, key=lambda item: item[0])][:max_hits] for h in hits], seconds


def _score_rows(base: dict, ranks_either: np.ndarray, ranks_same: np.ndarray, identities: np.ndarray,
                ks: Sequence[int]) -> list[dict]:
    """One row for all queries plus one per identity bin."""
    rows = []
    labels = np.array([identity_bin(x) for x in identities], dtype=object)
    for name in ("all", *(b[0] for b in IDENTITY_BINS)):
        mask = np.ones(len(ranks_either), bool) if name == "all" else labels == name
        if name != "all" and not mask.any():
            continue
        row = dict(base, identity_bin=name, queries=int(mask.sum()))
        for k in ks:
            row[f"recall_at_{k}"] = recall_at_k(ranks=ranks_either[mask], k=k)
        row["mrr"] = mrr(ranks=ranks_either[mask])
        for k in ks:
            row[f"recall_at_{k}_same_strand"] = recall_at_k(ranks=ranks_same[mask], k=k)
        row["mrr_same_strand"] = mrr(ranks=ranks_same[mask])
        rows.append(row)
    return rows


def _build_index(store, factory: str):
    from genoembed.vectors import INDEX_FILE, IndexSpec, build_index, load_index

    if factory == "Flat" and (store.manifest.get("index") or {}).get("spec", {}).get("factory") == "Flat":
        return load_index(store.root / INDEX_FILE)
    return build_index(store, IndexSpec(factory=factory))


def evaluate(
    reference: str | Path,
    queries_fasta: str | Path,
    coords: str | Path | pa.Table | None = None,
    embedders: Mapping[str, object] | None = None,
    index_configs: Sequence[IndexConfig] = (IndexConfig(),),
    *,
    tile: int = 1000,
    stride: int | None = None,
    strands: str = "both",
    n_queries: int = 500,
    seed: int = 0,
    substitution_rates: Sequence[float] = (0.0,),
    indel_rates: Sequence[float] = (0.0,),
    ks: Sequence[int] = (1, 10, 100),
    minimap2: bool | None = None,
    minimap2_preset: str | None = None,
    truth_preset: str = "asm20",
    min_cover: float = 0.5,
    workdir: str | Path | None = None,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> pa.Table:
    """Retrieval quality of each embedder x index configuration (and minimap2) on real ground truth.

    The reference is tiled (``tile`` bp every ``stride``, default ``tile // 2``,
    on ``strands``) and indexed once per embedder in ``workdir`` (reused when
    it already holds a complete store of the same settings). Query tiles of
    ``tile`` bp are cut from ``queries_fasta`` where ``coords`` (a show-coords
    file, an ``ALIGNMENTS`` table, or None = derive with minimap2) places them,
    mutated at every (substitution, indel) rate pair, and searched. minimap2
    (``minimap2=None``: when installed) maps the same mutated tiles as the
    alignment upper bound. Flat (exact) search is always run so that every
    other configuration gets its ANN recall@10 against it.

    Returns tidy rows: method, index, nprobe, ef_search, substitution_rate,
    indel_rate, identity_bin ('all', '100', '95-99', '<95'), queries,
    recall_at_K for K in ``ks``, mrr, their same-strand twins, ann_recall_at_10,
    qps (search only, best of ``repeats``) and embed_seconds.
    """
    from genoembed.genome import open_genome
    from genoembed.pipeline import index as build_store
    from genoembed.tiles import TilingSpec
    from genoembed.vectors import IndexSpec, search_index

    say = progress or (lambda message: log.info("%s", message))
    reference, queries_fasta = Path(reference), Path(queries_fasta)
    if tile < 50:
        raise InputError(f"tile={tile}: use tiles of at least 50 bp")
    if not embedders and not (minimap2 or (minimap2 is None and minimap2_available())):
        raise InputError("nothing to evaluate: give at least one embedder (or enable minimap2)")
    ref_genome = open_genome(reference)
    query_genome = open_genome(queries_fasta)
    if isinstance(coords, pa.Table):
        alignments = coords
    elif coords is not None:
        alignments = read_coords(coords)
    else:
        say(f"deriving ground truth with minimap2 -x {truth_preset}")
        alignments = derive_truth_minimap2(reference, queries_fasta, preset=truth_preset)
    unknown = set(alignments.column("ref_chrom").to_pylist()) - set(ref_genome.contigs)
    if unknown:
        raise InputError(f"alignment table names reference contig(s) not in {reference}: "
                         f"{', '.join(sorted(unknown)[:3])}; pass the reference the coords were made against")
    tiles, truth = sample_query_tiles(query_genome, alignments, tile, n_queries, seed=seed, min_cover=min_cover)
    true_spans, identities = truth_lists(truth, len(tiles))
    say(f"{len(tiles)} query tiles of {tile} bp with a true locus")
    ks = sorted(set(int(k) for k in ks))
    conditions = [(s, i) for s in substitution_rates for i in indel_rates]
    workdir_context = tempfile.TemporaryDirectory(prefix="genoembed-eval-") if workdir is None else None
    root = Path(workdir_context.name if workdir_context else workdir)
    root.mkdir(parents=True, exist_ok=True)
    tiling = TilingSpec(window=tile, stride=stride or max(tile // 2, 1), strands=strands)
    rows: list[dict] = []
    try:
        mutated = {c: mutated_sequences(tiles, c[0], c[1], seed=seed) for c in conditions}
        for name, embedder in (embedders or {}).items():
            say(f"{name}: indexing {reference.name}")
            store = build_store(reference, root / _safe(name), embedder=embedder, tiling=tiling,
                                index_spec=IndexSpec())
            coordinates = _tile_coordinates(store)
            max_k = min(max(ks), store.num_tiles)
            configs = list(index_configs)
            if not any(c.factory == "Flat" for c in configs):
                configs.insert(0, IndexConfig("Flat"))
            built = {}
            for condition in conditions:
                began = time.perf_counter()
                vectors = embedder.embed(mutated[condition])
                embed_seconds = time.perf_counter() - began
                exact_ids = None
                for config in sorted(configs, key=lambda c: c.factory != "Flat"):
                    if config.factory not in built:
                        say(f"{name}: building {config.factory}")
                        built[config.factory] = _build_index(store, config.factory)
                    faiss_index = built[config.factory]
                    search_index(faiss_index, vectors[:1], max_k, store.metric, config.nprobe, config.ef_search)
                    best = math.inf
                    for _ in range(max(repeats, 1)):
                        began = time.perf_counter()
                        _scores, ids = search_index(faiss_index, vectors, max_k, store.metric,
                                                    config.nprobe, config.ef_search)
                        best = min(best, time.perf_counter() - began)
                    if config.factory == "Flat" and exact_ids is None:
                        exact_ids = ids
                    hits = _spans_from_ids(ids, coordinates)
                    base = {"method": name, "kind": "embedding", "dim": int(store.dim), "index": config.factory,
                            "nprobe": config.nprobe, "ef_search": config.ef_search,
                            "substitution_rate": float(condition[0]), "indel_rate": float(condition[1]),
                            "tile": tile, "ann_recall_at_10": ann_recall(ids, exact_ids, min(10, max_k)),
                            "qps": len(tiles) / best if best > 0 else math.inf, "embed_seconds": embed_seconds}
                    rows += _score_rows(base, correct_ranks(hits, true_spans),
                                        correct_ranks(hits, true_spans, same_strand=True), identities, ks)
        if minimap2 or (minimap2 is None and minimap2_available()):
            preset = minimap2_preset or ("sr" if tile <= 300 else "asm20")
            for condition in conditions:
                say(f"minimap2 -x {preset}: substitution {condition[0]}, indel {condition[1]}")
                hits, seconds = _minimap2_spans(reference, mutated[condition], preset, root, max(ks))
                base = {"method": f"minimap2 -x {preset}", "kind": "aligner", "dim": None, "index": None,
                        "nprobe": None, "ef_search": None, "substitution_rate": float(condition[0]),
                        "indel_rate": float(condition[1]), "tile": tile, "ann_recall_at_10": None,
                        "qps": len(tiles) / seconds if seconds > 0 else math.inf, "embed_seconds": None}
                rows += _score_rows(base, correct_ranks(hits, true_spans),
                                    correct_ranks(hits, true_spans, same_strand=True), identities, ks)
    finally:
        if workdir_context:
            workdir_context.cleanup()
    return pa.Table.from_pylist(rows)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "embedder"


# --------------------------------------------------------------------------- gene-family agreement

# Products, not ``gene`` features: a GenBank gene spans its introns (trnK's holds matK), while the
# CDS/tRNA/rRNA lists its exons as parts.
FAMILY_FEATURE_TYPES = ("CDS", "tRNA", "rRNA")

# Demerec-style symbol: a three-letter lowercase stem naming the pathway or complex ("rpo" = RNA
# polymerase, "psb" = photosystem II), then the subunit: an optional lowercase letter ("trnfM"), an
# uppercase letter or digit, and anything after it ("rpoC1", "rrn4.5S", "nuoA-N").
_GENE_SYMBOL = re.compile(r"([a-z]{3})(?:[a-z]?[A-Z0-9][\w.\-]*)?")

Interval = tuple[str, int, int]


def family_key(gene: str | None, product: str | None = None) -> str | None:
    """The family a feature belongs to, for judging whether a hit lands in a gene of the query's kind.

    Rule, in order:

    1. a ``gene`` symbol in bacterial/organelle (Demerec) style -> its three-letter lowercase stem:
       ``rpoB``, ``rpoC1`` -> ``rpo``; ``psbA`` -> ``psb``; ``rrn16S`` -> ``rrn``; ``trnfM`` -> ``trn``.
       The stem names the complex or pathway, the suffix only the subunit, so paralogous and
       co-operating subunits count as one family;
    2. any other ``gene`` symbol (``ArthCr088``, ``abcd``) -> the symbol lower-cased: its own family;
    3. no gene symbol -> the ``product`` lower-cased with whitespace collapsed (products are
       free text, so only identical descriptions agree);
    4. neither -> None (the feature takes no part). Locus tags are never used: they are unique ids.

    Catch-all stems are kept as they are: ``ycf`` (hypothetical chloroplast frames) and ``trn``
    (every tRNA) are broad families, which the chance baseline of :func:`family_agreement_rows` shows.
    """
    if gene and gene.strip():
        symbol = gene.strip()
        match = _GENE_SYMBOL.fullmatch(symbol)
        return match.group(1) if match else symbol.lower()
    if product and product.strip():
        return " ".join(product.lower().split())
    return None


def _feature_parts(start: int, end: int, attributes: Mapping[str, str]) -> list[tuple[int, int]]:
    """The exons / segments of a feature (GenBank ``parts`` attribute) or its single span."""
    parts = attributes.get("parts")
    if not parts:
        return [(start, end)]
    spans = []
    for part in parts.split(","):
        bounds = part.split(":")[0]
        first, last = bounds.split("-")
        spans.append((int(first), int(last)))
    return spans


@dataclass(frozen=True)
class GeneFeature:
    """One annotated feature with a family key; ``parts`` are its segments (exons), 0-based half-open."""

    chrom: str
    parts: tuple[tuple[int, int], ...]
    strand: str
    family: str

    @property
    def intervals(self) -> list[Interval]:
        return [(self.chrom, start, end) for start, end in self.parts]


def gene_features(annotations: pa.Table, types: Sequence[str] = FAMILY_FEATURE_TYPES) -> list[GeneFeature]:
    """Features of ``types`` that have a family key, one per distinct (locus, family).

    Features of one family on the same segments (two CDS records of a gene) collapse into one.
    """
    seen: dict[tuple, GeneFeature] = {}
    for row in annotations.select(["chrom", "start", "end", "strand", "type", "attributes"]).to_pylist():
        if row["type"] not in types:
            continue
        attributes = dict(row["attributes"] or ())
        key = family_key(attributes.get("gene"), attributes.get("product"))
        if key is None:
            continue
        parts = tuple(sorted(_feature_parts(row["start"], row["end"], attributes)))
        seen.setdefault((row["chrom"], parts, key), GeneFeature(row["chrom"], parts, row["strand"], key))
    return list(seen.values())


def _touches(a: Sequence, b: Sequence) -> bool:
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def family_ranks(hit_spans: Sequence[Sequence[Span]], query_families: Sequence[str],
                 features: Sequence[GeneFeature],
                 excluded: Sequence[Sequence[Interval]] | None = None) -> np.ndarray:
    """1-based rank of each query's first hit that overlaps a feature of the query's family (0: none).

    ``excluded[i]`` are spans whose hits are dropped before ranking (the query's own gene, so that
    self-retrieval cannot score by finding the query's own locus).
    """
    if len(hit_spans) != len(query_families):
        raise InputError(f"{len(hit_spans)} hit lists but {len(query_families)} query families")
    by_family: dict[str, list[Interval]] = {}
    for feature in features:
        by_family.setdefault(feature.family, []).extend(feature.intervals)
    ranks = np.zeros(len(hit_spans), dtype=np.int64)
    for i, (hits, family) in enumerate(zip(hit_spans, query_families)):
        own = excluded[i] if excluded is not None else ()
        targets = by_family.get(family, ())
        kept = (hit for hit in hits if not any(_touches(hit, span) for span in own))
        for rank, hit in enumerate(kept, 1):
            if any(_touches(hit, target) for target in targets):
                ranks[i] = rank
                break
    return ranks


def chance_agreement(tile_spans: Sequence[Interval], query_families: Sequence[str],
                     features: Sequence[GeneFeature],
                     excluded: Sequence[Sequence[Interval]] | None = None) -> float:
    """Expected top-1 family agreement of a hit drawn uniformly from the reference tiles.

    Broad families (every tRNA, most of a genome's ribosomal proteins) agree often by chance; this
    is the bar a method must clear before its agreement says anything.
    """
    if not query_families:
        return math.nan
    fractions = []
    for i, family in enumerate(query_families):
        own = excluded[i] if excluded is not None else ()
        targets = [interval for f in features if f.family == family for interval in f.intervals]
        pool = [tile for tile in tile_spans if not any(_touches(tile, span) for span in own)]
        agree = sum(any(_touches(tile, target) for target in targets) for tile in pool)
        fractions.append(agree / len(pool) if pool else 0.0)
    return float(np.mean(fractions))


@dataclass(frozen=True)
class GeneTile:
    """A query tile cut from the middle of a gene's longest segment, on the gene's strand."""

    gene: GeneFeature
    start: int
    end: int
    sequence: str


def gene_tiles(genome, features: Sequence[GeneFeature], tile: int) -> list[GeneTile]:
    """One ``tile`` bp query per feature whose longest segment holds it (centred: no intron, no flank)."""
    from genoembed.genome import reverse_complement

    tiles = []
    for feature in features:
        start, end = max(feature.parts, key=lambda part: part[1] - part[0])
        if end - start < tile or feature.chrom not in genome.contigs:
            continue
        left = start + (end - start - tile) // 2
        sequence = genome.fetch(feature.chrom, left, left + tile).upper()
        tiles.append(GeneTile(feature, left, left + tile,
                              reverse_complement(sequence) if feature.strand == "-" else sequence))
    return tiles


def _as_annotations(annotations: str | Path | pa.Table) -> pa.Table:
    from genoembed.annotations import read_annotations

    return annotations if isinstance(annotations, pa.Table) else read_annotations(annotations)


def own_gene_modes(tiles: Sequence[GeneTile], self_retrieval: bool) -> list[tuple[str, list | None]]:
    """``('kept', None)``, plus ``('excluded', own gene spans per query)`` for self-retrieval."""
    modes: list[tuple[str, list | None]] = [("kept", None)]
    if self_retrieval:
        modes.append(("excluded", [t.gene.intervals for t in tiles]))
    return modes


def family_agreement_rows(base: dict, hit_spans: Sequence[Sequence[Span]], tiles: Sequence[GeneTile],
                          features: Sequence[GeneFeature], modes: Sequence[tuple[str, list | None]],
                          chance: Mapping[str, float], ks: Sequence[int]) -> list[dict]:
    """One row per own-gene mode: family agreement at each k beside the chance level."""
    families = [t.gene.family for t in tiles]
    rows = []
    for mode, excluded in modes:
        ranks = family_ranks(hit_spans, families, features, excluded)
        row = dict(base, own_gene=mode, query_genes=len(tiles), families=len(set(families)))
        for k in ks:
            row[f"family_at_{k}"] = recall_at_k(ranks=ranks, k=k)
        row["chance_at_1"] = chance[mode]
        rows.append(row)
    return rows


def _tile_grid(genome, window: int, stride: int) -> list[Interval]:
    """The reference tiles the store holds (the same starts, tail tile included), as intervals."""
    from genoembed.tiles import tile_starts

    return [(chrom, int(start), int(start) + window) for chrom, length in genome.contigs.items()
            for start in tile_starts(length, window, stride)]


def gene_family_agreement(
    reference: str | Path,
    reference_annotations: str | Path | pa.Table,
    embedders: Mapping[str, object],
    queries: str | Path | None = None,
    query_annotations: str | Path | pa.Table | None = None,
    *,
    tile: int = 300,
    stride: int | None = None,
    substitution_rates: Sequence[float] = (0.0,),
    ks: Sequence[int] = (1, 10),
    types: Sequence[str] = FAMILY_FEATURE_TYPES,
    minimap2: bool | None = None,
    seed: int = 0,
    workdir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> pa.Table:
    """Does the top hit of a gene tile land in a gene of the same family (:func:`family_key`)?

    Query tiles (:func:`gene_tiles`) are cut from the genes of ``queries`` (default: the reference
    itself, *self-retrieval*), mutated at each substitution rate and searched in a store of the
    reference tiled ``tile`` bp every ``stride`` (default ``tile // 2``), forward strand. A hit
    agrees when it overlaps a reference feature of the query's family. Self-retrieval also reports
    ``own_gene='excluded'``: hits on the query's own gene are dropped, so agreement must come from
    another copy or another member of the family. minimap2 (``-x sr`` up to 300 bp, else ``asm20``;
    secondaries on) is scored alike when installed.

    Returns rows: method, kind, substitution_rate, own_gene, query_genes, families,
    family_at_K for K in ``ks``, chance_at_1 (a uniformly drawn reference tile), tile.
    """
    from genoembed.genome import open_genome
    from genoembed.pipeline import index as build_store
    from genoembed.tiles import TilingSpec
    from genoembed.vectors import IndexSpec, search_index

    say = progress or (lambda message: log.info("%s", message))
    self_retrieval = queries is None
    reference = Path(reference)
    ref_genome = open_genome(reference)
    ref_features = gene_features(_as_annotations(reference_annotations), types)
    unknown = {f.chrom for f in ref_features} - set(ref_genome.contigs)
    if unknown:
        raise InputError(f"reference annotations name contig(s) not in {reference}: {', '.join(sorted(unknown)[:3])}")
    if self_retrieval:
        query_genome, query_features = ref_genome, ref_features
    else:
        if query_annotations is None:
            raise InputError("queries given without query_annotations: the query genes must be annotated")
        query_genome, query_features = open_genome(queries), gene_features(_as_annotations(query_annotations), types)
    tiles = gene_tiles(query_genome, query_features, tile)
    if not tiles:
        raise InputError(f"no annotated gene of {query_genome.path} holds a {tile} bp tile; use a shorter tile")
    say(f"{len(tiles)} gene tiles of {tile} bp, {len({t.gene.family for t in tiles})} families")
    ks = sorted(set(int(k) for k in ks))
    workdir_context = tempfile.TemporaryDirectory(prefix="genoembed-family-") if workdir is None else None
    root = Path(workdir_context.name if workdir_context else workdir)
    root.mkdir(parents=True, exist_ok=True)
    tiling = TilingSpec(window=tile, stride=stride or max(tile // 2, 1), strands="+")
    depth = max(ks) + 2 * math.ceil(tile / tiling.stride) + 20  # room for the dropped own-gene hits
    rows: list[dict] = []
    modes = own_gene_modes(tiles, self_retrieval)
    families = [t.gene.family for t in tiles]
    grid = _tile_grid(ref_genome, tiling.window, tiling.stride)
    chance = {mode: chance_agreement(grid, families, ref_features, excluded) for mode, excluded in modes}
    try:
        mutated = {rate: mutated_sequences(tiles, rate, 0.0, seed=seed) for rate in substitution_rates}
        for name, embedder in embedders.items():
            say(f"{name}: indexing {reference.name} for the gene-family check")
            store = build_store(ref_genome, root / _safe(name), embedder=embedder, tiling=tiling,
                                index_spec=IndexSpec())
            coordinates = _tile_coordinates(store)
            faiss_index = _build_index(store, "Flat")
            for rate in substitution_rates:
                _scores, ids = search_index(faiss_index, embedder.embed(mutated[rate]), min(depth, store.num_tiles),
                                            store.metric)
                base = {"method": name, "kind": "embedding", "substitution_rate": float(rate), "tile": tile}
                rows += family_agreement_rows(base, _spans_from_ids(ids, coordinates), tiles, ref_features, modes,
                                              chance, ks)
        if minimap2 or (minimap2 is None and minimap2_available()):
            preset = "sr" if tile <= 300 else "asm20"
            for rate in substitution_rates:
                say(f"minimap2 -x {preset}: gene tiles, substitution {rate}")
                hits, _seconds = _minimap2_spans(reference, mutated[rate], preset, root, depth)
                base = {"method": f"minimap2 -x {preset}", "kind": "aligner", "substitution_rate": float(rate),
                        "tile": tile}
                rows += family_agreement_rows(base, hits, tiles, ref_features, modes, chance, ks)
    finally:
        if workdir_context:
            workdir_context.cleanup()
    return pa.Table.from_pylist(rows)


def summary_markdown(rows: pa.Table | Iterable[dict], ks: Sequence[int] = (1, 10, 100)) -> str:
    """A Markdown table of the 'all queries' rows: one line per method x index x mutation."""
    records = rows.to_pylist() if isinstance(rows, pa.Table) else list(rows)
    records = [r for r in records if r.get("identity_bin") == "all"]
    header = ["method", "index", "subst", "indel", "queries", *(f"R@{k}" for k in ks), "MRR",
              "R@1 same strand", "ANN R@10", "QPS"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(value, digits=3):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    for r in records:
        index = r.get("index") or ""
        if r.get("nprobe"):
            index += f" nprobe={r['nprobe']}"
        if r.get("ef_search"):
            index += f" efSearch={r['ef_search']}"
        values = [r["method"], index, cell(r["substitution_rate"], 2), cell(r["indel_rate"], 3), str(r["queries"]),
                  *(cell(r.get(f"recall_at_{k}")) for k in ks), cell(r["mrr"]),
                  cell(r.get("recall_at_1_same_strand")), cell(r.get("ann_recall_at_10")), cell(r.get("qps"), 0)]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def read_results(path: str | Path) -> list[dict]:
    """Result rows written by `genoembed eval` (JSON lines, TSV or Parquet) back as dicts."""
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: results file not found; write one with `genoembed eval --output FILE`")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path}: empty results file")
    if lines[0].lstrip().startswith("{"):
        try:
            return [json.loads(line) for line in lines]
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not JSON lines ({error})") from None
    header = lines[0].split("\t")
    if "method" not in header:
        raise InputError(f"{path}: not a `genoembed eval` table (no 'method' column)")

    def value(cell: str):
        if cell == "":
            return None
        try:
            return int(cell)
        except ValueError:
            try:
                return float(cell)
            except ValueError:
                return cell

    return [dict(zip(header, (value(c) for c in line.split("\t")))) for line in lines[1:]]
