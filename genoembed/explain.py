"""Why a hit matched: per-base contributions of a query and a hit to their cosine similarity.

For models whose vector is a weighted sum of token vectors — the shipped
token-table models (:class:`~genoembed.embedders.table.TokenTableEmbedder`) and
k-mer profiles (:class:`~genoembed.embedders.kmer.KmerEmbedder`), both exposing
``token_weights`` — the split is exact. With ``q = sum_t w_t e_t``,

    cosine(q, h) = sum_t w_t (e_t . h/|h|) / |q|,

so token ``t`` contributes ``w_t (e_t . ĥ) / |q|``, spread evenly over the bases
it covers, and the per-base values sum to the cosine. Token vectors ``e_t`` are
rows of the embedder's ``table``, or one-hot for k-mer profiles (no table).

Other models (transformers) are explained by occlusion: windows of ``width``
bases are masked with N and the drop in cosine is shared among the masked
bases (averaged over the overlapping windows). This is an approximation: the
values need not sum to the cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genoembed.errors import InputError, missing_extra
from genoembed.files import atomic_file
from genoembed.search import Query, check_sequence, query_source, region_queries, search
from genoembed.seqio import encode_bases, reverse_complement
from genoembed.store import Store


@dataclass(frozen=True)
class Explanation:
    """Contributions of every base of the query and the hit (in each sequence's own orientation)."""

    query: Query
    hit: Query
    cosine: float
    method: str  # "exact" or "occlusion"
    query_contributions: np.ndarray
    hit_contributions: np.ndarray


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / max(float(np.linalg.norm(vector)), 1e-30)


def spread(starts: np.ndarray, lengths: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Per-base array: each token's value shared evenly by the ``lengths`` bases from its start."""
    delta = np.zeros(size + 1)
    np.add.at(delta, starts, values / lengths)
    np.add.at(delta, starts + lengths, -values / lengths)
    return np.cumsum(delta[:-1])


def exact_contributions(embedder, sequence: str, other: np.ndarray) -> np.ndarray:
    """Per-base contributions of ``sequence`` to its cosine with the vector ``other`` (they sum to it)."""
    starts, lengths, ids, weights = embedder.token_weights(sequence)
    direction = _unit(other)
    table = getattr(embedder, "table", None)
    if table is None:  # k-mer profile: one-hot token vectors
        vector = np.bincount(ids, weights=weights, minlength=embedder.dim)
        projections = direction[ids]
    else:
        table = np.asarray(table, dtype=np.float64)
        vector = np.bincount(ids, weights=weights, minlength=len(table)) @ table
        projections = table[ids] @ direction
    norm = max(float(np.linalg.norm(vector)), 1e-30)
    return spread(starts, lengths, weights * projections / norm, len(sequence))


def occlusion_contributions(embedder, sequence: str, other: np.ndarray, width: int = 10) -> np.ndarray:
    """Per-base drop in cosine with ``other`` when a window of ``width`` bases holding the base is masked
    with N (windows every ``width // 2`` bases; each window's drop shared by its bases, overlaps averaged)."""
    width = max(1, min(width, len(sequence)))
    step = max(1, width // 2)
    starts = list(range(0, max(1, len(sequence) - width + 1), step))
    if starts[-1] + width < len(sequence):
        starts.append(len(sequence) - width)
    masked = [sequence[:s] + "N" * width + sequence[s + width :] for s in starts]
    vectors = embedder.embed([sequence] + masked).astype(np.float64)
    direction = _unit(other)
    cosines = np.array([_unit(v) @ direction for v in vectors])
    drops = cosines[0] - cosines[1:]
    total = spread(np.array(starts), np.full(len(starts), width), drops, len(sequence))
    cover = spread(np.array(starts), np.full(len(starts), width), np.full(len(starts), float(width)), len(sequence))
    return total / np.maximum(cover, 1e-30)


def is_exact(embedder) -> bool:
    """True when the embedder's vector is a weighted token sum it can list (``token_weights``)."""
    return callable(getattr(embedder, "token_weights", None))


def explain_pair(embedder, query: Query, hit: Query, width: int = 10) -> Explanation:
    """Contributions of ``query`` and ``hit`` to their cosine: exact for token-sum models, else occlusion."""
    vectors = embedder.embed([query.sequence, hit.sequence])
    cosine = float(_unit(vectors[0]) @ _unit(vectors[1]))
    if is_exact(embedder):
        parts = [exact_contributions(embedder, query.sequence, vectors[1]),
                 exact_contributions(embedder, hit.sequence, vectors[0])]
        method = "exact"
    else:
        parts = [occlusion_contributions(embedder, query.sequence, vectors[1], width),
                 occlusion_contributions(embedder, hit.sequence, vectors[0], width)]
        method = "occlusion"
    return Explanation(query, hit, cosine, method, *parts)


def resolve_query(store: Store, region: str | None = None, sequence: str | None = None) -> Query:
    """The query of `genoembed explain`: a region of the store's genomes or a DNA sequence (one of them)."""
    if (region is None) == (sequence is None):
        raise InputError("give the query as exactly one of --region or --sequence")
    if region is not None:
        return region_queries(query_source(store), [region])[0]
    return Query("sequence", check_sequence(sequence, "--sequence").upper())


def resolve_hit(store: Store, query: Query, hit: int | str, embedder=None) -> Query:
    """The hit: rank ``hit`` of the query's search as `genoembed search` shows it (loci, ranked; a region query's
    own region left out like ``--exclude-self``), or a region ``chrom:start-end``. A locus is explained by its
    best tile."""
    from genoembed.evidence import merge_loci

    if isinstance(hit, int) or str(hit).isdigit():
        rank = int(hit)
        if rank < 1:
            raise InputError(f"--hit {hit}: ranks start at 1")
        fetch, loci = 4 * rank, []
        while True:
            fetch = min(fetch, store.num_tiles)
            tiles = search(store, [query], k=fetch, embedder=embedder, exclude_self=query.chrom is not None)
            loci = merge_loci(tiles, higher_is_better=store.metric == "ip").to_pylist()
            if len(loci) >= rank or fetch == store.num_tiles:
                break
            fetch *= 4
        if len(loci) < rank:
            raise InputError(f"--hit {hit}: the query has {len(loci)} hits (loci) in this store")
        locus = loci[rank - 1]
        best = store.tiles([locus["tile_id"]]).to_pylist()[0]
        row = {**best, "strand": locus["strand"]}
        region = f"{row['chrom']}:{row['start'] + 1}-{row['end']}:{row['strand']}"
        found = region_queries(query_source(store, row["genome"]), [region])[0]
        return Query(f"rank{rank} {region}", found.sequence, found.chrom, found.start, found.end, found.strand,
                     found.genome)
    return region_queries(query_source(store), [str(hit)])[0]


def explain(store: Store, query: Query | str, hit: int | str = 1, width: int = 10, embedder=None) -> Explanation:
    """Explain one hit of ``query`` (a :class:`~genoembed.search.Query` or a region string): ``hit`` is its
    rank in the query's search, or a region. Returns per-base contributions of both sequences."""
    embedder = embedder or store.embedder()
    if isinstance(query, str):
        query = region_queries(query_source(store), [query])[0]
    return explain_pair(embedder, query, resolve_hit(store, query, hit, embedder), width)


def top_regions(contributions: np.ndarray, query: Query, n: int = 3, width: int = 50) -> list[tuple[str, float]]:
    """The ``n`` non-overlapping ``width``-base windows with the largest summed contribution, as
    (``chrom:start-end`` 1-based on the forward strand, or ``name:start-end`` for sequences, sum)."""
    width = max(1, min(width, len(contributions)))
    sums = np.convolve(contributions, np.ones(width), mode="valid")
    chosen: list[int] = []
    for start in np.argsort(-sums, kind="stable"):
        if len(chosen) == n:
            break
        if all(abs(int(start) - other) >= width for other in chosen):
            chosen.append(int(start))
    return [(_label(query, start, start + width), float(sums[start])) for start in chosen]


def _genomic(query: Query, start: int, end: int) -> tuple[str, int, int]:
    """Sequence offsets [start, end) -> (chrom, start, end) on the forward strand (the query name for sequences)."""
    if query.chrom is None:
        return query.name, start, end
    if query.strand == "-":
        return query.chrom, query.end - end, query.end - start
    return query.chrom, query.start + start, query.start + end


def _label(query: Query, start: int, end: int) -> str:
    chrom, first, last = _genomic(query, start, end)
    return f"{chrom}:{first + 1}-{last}"


def forward_track(query: Query, contributions: np.ndarray) -> tuple[str, int, np.ndarray]:
    """(chrom, start, per-base values) on the genome's forward strand."""
    chrom, start, _ = _genomic(query, 0, len(contributions))
    return chrom, start, contributions[::-1] if query.strand == "-" else contributions


def forward_pieces(query: Query, contributions: np.ndarray,
                   contigs: dict[str, int] | None = None) -> list[tuple[str, int, np.ndarray]]:
    """:func:`forward_track` cut at the origin of a circular contig (a track through it continues from 0)."""
    chrom, start, values = forward_track(query, contributions)
    length = (contigs or {}).get(chrom) if query.chrom is not None else None
    if length is None or start + len(values) <= length:
        return [(chrom, start, values)]
    return [(chrom, start, values[:length - start]), (chrom, 0, values[length - start:])]


def bedgraph_lines(query: Query, contributions: np.ndarray, contigs: dict[str, int] | None = None) -> list[str]:
    """bedGraph lines of the track, runs of equal values merged (``%.6g``)."""
    lines = []
    for chrom, start, values in forward_pieces(query, contributions, contigs):
        text = [f"{v:.6g}" for v in values]
        run = 0
        for i in range(1, len(text) + 1):
            if i == len(text) or text[i] != text[run]:
                lines.append(f"{chrom}\t{start + run}\t{start + i}\t{text[run]}")
                run = i
    return lines


def _atomic_write(path: Path, write) -> Path:
    """Call ``write(temporary_path)`` then rename over ``path``: no partial file on failure; the file gets the
    umask's mode like any other output (a private temporary file kept 0600)."""
    with atomic_file(path, "explain output") as temporary:
        write(str(temporary))
    return path


def write_bedgraph(path: str | Path, query: Query, contributions: np.ndarray,
                   contigs: dict[str, int] | None = None) -> Path:
    """The track as bedGraph on genome coordinates (sequence queries: on their own name, from 0); ``contigs``
    (lengths) cuts a track through a circular contig's origin in two."""
    lines = [f'track type=bedGraph name="{query.name}" description="genoembed explain contributions"']
    lines += bedgraph_lines(query, contributions, contigs)
    return _atomic_write(Path(path), lambda temporary: Path(temporary).write_text("\n".join(lines) + "\n"))


def write_bigwig(path: str | Path, query: Query, contributions: np.ndarray, contigs: dict[str, int]) -> Path | None:
    """The track as bigWig (None when pyBigWig is not installed). ``contigs`` sizes the header."""
    try:
        import pyBigWig
    except ImportError:
        return None
    chrom, start, values = forward_track(query, contributions)
    sizes = dict(contigs) if query.chrom is not None else {chrom: start + len(values)}
    pieces = sorted(forward_pieces(query, contributions, sizes), key=lambda piece: piece[1])

    def write(temporary: str) -> None:
        handle = pyBigWig.open(temporary, "w")
        handle.addHeader(list(sizes.items()))
        for chrom, first, part in pieces:
            handle.addEntries(chrom, first, values=part.astype(float).tolist(), span=1, step=1)
        handle.close()

    return _atomic_write(Path(path), write)


def shared_kmer_mask(sequence: str, other: str, k: int) -> np.ndarray:
    """Per base of ``sequence``: True where it lies in a k-mer (either strand) that ``other`` also holds."""
    def kmers(text: str) -> list[str]:
        return [text[i : i + k] for i in range(len(text) - k + 1)]

    theirs = set(kmers(other)) | set(kmers(reverse_complement(other)))
    starts = np.array([i for i, kmer in enumerate(kmers(sequence)) if kmer in theirs and "N" not in kmer],
                      dtype=np.int64)
    mask = spread(starts, np.full(len(starts), k), np.full(len(starts), float(k)), len(sequence)) > 0.5
    return mask & (encode_bases(sequence) < 4)


def plot_explanation(explanation: Explanation, path: str | Path, k: int = 8) -> Path:
    """PNG of both contribution tracks (sequence orientation), bases in k-mers shared by both shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise missing_extra("the explain PNG", "plot", "matplotlib") from None
    figure, axes = plt.subplots(2, 1, figsize=(11, 5), constrained_layout=True)
    pairs = ((explanation.query, explanation.hit, explanation.query_contributions),
             (explanation.hit, explanation.query, explanation.hit_contributions))
    for axis, (own, other, values) in zip(axes, pairs):
        shared = shared_kmer_mask(own.sequence.upper(), other.sequence.upper(), k)
        axis.fill_between(np.arange(len(values)), 0, values.max(initial=0), where=shared, color="tab:orange",
                          alpha=0.2, step="mid", label=f"in a {k}-mer shared with the other")
        axis.plot(values, lw=0.7, color="tab:blue", label="contribution per base")
        axis.set_title(f"{own.name}: sum {values.sum():.4f}", fontsize=9)
        axis.set_xlabel("base (sequence orientation)")
        axis.legend(fontsize=7, loc="upper right")
    figure.suptitle(f"cosine {explanation.cosine:.4f} ({explanation.method})", fontsize=10)
    return _atomic_write(Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=110))
