"""Ground truth for retrieval: alignment tables (show-coords, PAF, minimap2) and the true spans of query tiles.

Ground truth never comes from an embedding. It is an *alignment table*: where
each query sequence (a draft contig, or another strain's chromosome) lies on
the reference, from NUCmer ``show-coords`` (:func:`read_coords`) or from
minimap2 (:func:`derive_truth_minimap2`). A query tile cut from a contig is
mapped onto the reference linearly within every alignment block that covers
most of it (:func:`truth_for_tiles`).

Coordinates are 0-based half-open everywhere (show-coords and PAF are
converted on reading). Spans are ``(chrom, start, end, strand)`` tuples.
"""


from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from genoembed.errors import InputError
from genoembed.seqio import open_text

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
        with open_text(path) as handle:
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


def run_minimap2(reference: Path, query: Path, preset: str, extra: Sequence[str] = (), threads: int = 2) -> str:
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
    paf = run_minimap2(Path(reference), Path(query), preset, extra=("-c",), threads=threads)  # -c: exact block ends
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

