"""Genome-browser tracks: hits as BED / bigBed-ready BED9, and a query's similarity along the genome.

The similarity track answers "where else does this look like my query?" for
every tile, not just the top ``k``: the query vector is dotted with every
stored vector (streamed from the shards, so memory stays one batch), and each
tile position keeps its best cosine over both strands. A browser track must not
overlap itself, so each position's value covers from its start to the next
position's start (or its own end); the value at a hit's start is therefore the
best score of any tile starting there, which is the hit's score for rank 1.

Tracks of a store holding several genomes name contigs ``GENOME#0#CONTIG`` (PanSN-spec, the rule in
:mod:`genoembed.schema`), in hits, bedGraph/bigWig rows and chrom sizes alike, so they load together.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genoembed import schema
from genoembed.errors import InputError, missing_extra
from genoembed.hit_formats import bed_score
from genoembed.store import Store
from genoembed.topology import linear_pieces

SIMILARITY = pa.schema([("chrom", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                        ("score", pa.float32())])


def score_colour(score: int) -> str:
    """itemRgb for a BED score (0-1000): grey (0) through orange to red (1000), so strong hits stand out in a
    browser."""
    t = score / 1000
    return f"{int(200 + 55 * t)},{int(200 * (1 - t))},{int(200 * (1 - t) ** 2)}"


def hits_bed(hits: pa.Table, contig_lengths: dict[str, dict[str, int]], bed9: bool = False,
             higher_is_better: bool = True) -> str:
    """Hits as BED6 (name ``QUERY#RANK``, score 0-1000 by :func:`genoembed.hit_formats.bed_score`: pass
    ``higher_is_better=False`` for an l2 store, strand), or BED9 with an itemRgb colour by score,
    sorted by position and without a header, as ``bedToBigBed -type=bed9`` wants it. A hit through a circular
    contig's origin is two lines, one each side (``contig_lengths``: genome -> {contig: length}; see
    :mod:`genoembed.hit_formats`); a genome removed since the search is drawn as found."""
    rows, target = [], schema.contig_namer(contig_lengths)
    for row in hits.select(["query", "rank", "genome", "chrom", "start", "end", "strand", "score"]).to_pylist():
        length = contig_lengths.get(row["genome"], {}).get(row["chrom"], row["end"])
        rows += [{**row, "chrom": target(row["genome"], row["chrom"]), "start": start, "end": end}
                 for start, end in linear_pieces(row["start"], row["end"], length)]
    lines = []
    for row in sorted(rows, key=lambda row: (row["chrom"], row["start"], row["end"], row["query"], row["rank"])):
        score = bed_score(row["score"], higher_is_better)
        fields = [row["chrom"], row["start"], row["end"], f"{row['query']}#{row['rank']}".replace(" ", "_"),
                  score, row["strand"]]
        if bed9:
            fields += [row["start"], row["end"], score_colour(score)]
        lines.append("\t".join(str(field) for field in fields))
    return "".join(line + "\n" for line in lines)


def chrom_sizes(store: Store, genome: str | None = None) -> dict[str, int]:
    """Contig lengths of one genome, or of the whole store, under the names its tracks give them
    (``GENOME#0#CONTIG`` when the store holds several genomes)."""
    if genome is not None and genome not in store.genomes:
        raise InputError(f"{store.root}: no genome {genome!r} in the store; it holds {', '.join(store.genomes)}")
    lengths = store.contig_lengths
    target = schema.contig_namer(lengths)
    return {target(name, chrom): length for name, contigs in lengths.items() if genome in (None, name)
            for chrom, length in contigs.items()}


def similarity(store: Store, vector: np.ndarray, genome: str | None = None,
               between_batches: Callable[[], None] | None = None) -> pa.Table:
    """Best cosine of ``vector`` at each tile position (both strands) as non-overlapping intervals,
    sorted by contig (in the genome's order) and start (``SIMILARITY`` columns). Vectors stream from the
    shards; the result is columnar (tens of bytes a tile), never a Python object per tile.
    ``between_batches`` is called before each batch (the server's cancel check: it raises to stop)."""
    sizes = chrom_sizes(store, genome)
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if query.shape[0] != store.dim:
        raise InputError(f"query vector has dim {query.shape[0]} but the store has dim {store.dim}")
    query = query / (np.linalg.norm(query) or 1.0)
    pieces = []
    for batch in store.iter_batches(["genome", "chrom", "start", "end", schema.EMBEDDING]):
        if between_batches is not None:
            between_batches()
        vectors = np.asarray(batch.column(4).flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        vectors = vectors.reshape(batch.num_rows, store.dim)
        norms = np.linalg.norm(vectors, axis=1)
        scores = (vectors @ query) / np.where(norms > 0, norms, 1.0)
        chrom = batch.column(1) if len(store.genomes) == 1 else pc.binary_join_element_wise(  # schema.pansn_name
            batch.column(0), schema.PANSN_HAPLOTYPE, batch.column(1), schema.PANSN_DELIMITER)
        piece = pa.table({"genome": batch.column(0), "chrom": chrom, "start": batch.column(2),
                          "end": batch.column(3), "score": pa.array(scores, pa.float32())})
        pieces.append(piece if genome is None else piece.filter(pc.equal(piece["genome"], genome)))
    if not pieces:
        return SIMILARITY.empty_table()
    best = pa.concat_tables(pieces).group_by(["chrom", "start"]).aggregate([("end", "max"), ("score", "max")])
    names = pa.array(list(sizes), pa.string())
    order = pc.index_in(best["chrom"], value_set=names)  # contigs in the genome's order, as bigWig wants them
    best = best.append_column("order", order).sort_by([("order", "ascending"), ("start", "ascending")])
    contig = best["order"].to_numpy()
    start = best["start"].to_numpy().astype(np.int64)
    end = best["end_max"].to_numpy().astype(np.int64)
    same_next = np.append(contig[1:] == contig[:-1], False)
    next_start = np.append(start[1:], 0)
    end = np.where(same_next, np.minimum(end, next_start), end)
    end = np.minimum(end, np.array(list(sizes.values()), dtype=np.int64)[contig])  # tiles through a circle's origin
    return pa.table({"chrom": best["chrom"], "start": start, "end": end,
                     "score": best["score_max"].cast(pa.float32())}, schema=SIMILARITY)


TRACK_BATCH = 65_536  # rows formatted or written at a time: a track of millions of tiles streams


def bedgraph_chunks(track: pa.Table, name: str = "genoembed similarity") -> Iterator[str]:
    """A similarity track as bedGraph text (a track line naming it, then the rows), ``TRACK_BATCH`` rows a chunk,
    formatted by Arrow's CSV writer (no Python object per row)."""
    import pyarrow.csv as csv

    yield f'track type=bedGraph name="{name}" viewLimits=0:1 autoScale=off\n'
    options = csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    for batch in track.to_batches(max_chunksize=TRACK_BATCH):
        sink = io.BytesIO()
        csv.write_csv(pa.Table.from_batches([batch]), sink, options)
        yield sink.getvalue().decode()


def write_bigwig(track: pa.Table, sizes: dict[str, int], path: str | Path) -> Path:
    """A similarity track as bigWig (float32 values, contigs in the genome's order)."""
    try:
        import pyBigWig
    except ImportError:
        raise missing_extra("bigWig tracks", "serve", "pyBigWig") from None
    path = Path(path)
    try:  # pyBigWig crashes the process (segfault) on a path it cannot open: find out first
        path.open("wb").close()
    except OSError as error:
        raise InputError(f"{path}: cannot write a bigWig file here ({error.strerror or error}); "
                         "check the directory exists and is writable") from None
    writer = pyBigWig.open(str(path), "w")
    if writer is None:
        raise InputError(f"{path}: cannot write a bigWig file here; check the directory exists and is writable")
    try:
        writer.addHeader(list(sizes.items()))
        for batch in track.to_batches(max_chunksize=TRACK_BATCH):  # rows in the header's contig order
            writer.addEntries(batch.column(0).to_pylist(), batch.column(1).to_pylist(),
                              ends=batch.column(2).to_pylist(), values=batch.column(3).to_numpy().astype(float).tolist())
    finally:
        writer.close()
    return path
