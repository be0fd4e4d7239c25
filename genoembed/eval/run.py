"""The `genoembed eval` run: one reference store per embedder, mutated query tiles, tidy result rows.

:func:`evaluate` builds one reference store per embedder, searches mutated
query tiles through each index configuration, runs minimap2 on the same tiles
as the alignment upper bound, and returns tidy rows (one per method x
configuration x mutation x identity bin). Truth comes from
:mod:`genoembed.eval.truth`, scores from :mod:`genoembed.eval.metrics`.
"""


from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from genoembed.errors import InputError

log = logging.getLogger(__name__)

from genoembed.eval.truth import (IDENTITY_BINS, Span, derive_truth_minimap2, minimap2_available, read_coords,
                                  run_minimap2, truth_for_tiles, truth_lists)
from genoembed.eval.metrics import ann_recall, correct_ranks, distinct_loci, identity_bin, mrr, recall_at_k


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
    from genoembed.seqio import reverse_complement

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


def tile_coordinates(store) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    chroms, starts, ends, strands = [], [], [], []
    for batch in store.iter_batches(["chrom", "start", "end", "strand"]):
        chroms += batch.column(0).to_pylist()
        starts.append(batch.column(1).to_numpy())
        ends.append(batch.column(2).to_numpy())
        strands += batch.column(3).to_pylist()
    return np.array(chroms, dtype=object), np.concatenate(starts), np.concatenate(ends), np.array(strands, dtype=object)


def spans_from_ids(ids: np.ndarray, coordinates, k: int | None = None) -> list[list[Span]]:
    """Each query's hits as spans, every locus once (:func:`distinct_loci`), the first ``k`` of them."""
    chroms, starts, ends, strands = coordinates
    return [distinct_loci([(chroms[i], int(starts[i]), int(ends[i]), strands[i]) for i in row if i >= 0])[:k]
            for row in ids]


def minimap2_spans(reference: Path, sequences: Sequence[str], preset: str, workdir: Path,
                    max_hits: int) -> tuple[list[list[Span]], float]:
    """minimap2 hits of each query sequence (primary first, then secondaries) and the wall time."""
    fasta = workdir / "minimap2_queries.fa"
    fasta.write_text("".join(f">q{i}\n{s}\n" for i, s in enumerate(sequences)))
    began = time.perf_counter()
    paf = run_minimap2(reference, fasta, preset, extra=("--secondary=yes", "-N", str(max(max_hits - 1, 1))))
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


def build_reference_index(store, factory: str):
    from genoembed.vector_index import IndexSpec, build_index, index_parts, load_index

    entry = store.manifest.get("index") or {}
    parts = index_parts(entry)
    if factory == "Flat" and entry.get("spec", {}).get("factory") == "Flat" and len(parts) == 1:
        return load_index(store.root / parts[0]["path"])
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
    other configuration gets its ANN recall@10 against it. Hits count each
    reference locus once (:func:`distinct_loci`): on a both-strand reference a
    strand-invariant vector would otherwise fill two of the top-k places per locus.

    Returns tidy rows: method, index, nprobe, ef_search, substitution_rate,
    indel_rate, identity_bin ('all', '100', '95-99', '<95'), queries,
    recall_at_K for K in ``ks``, mrr, their same-strand twins, ann_recall_at_10,
    qps (search only, best of ``repeats``) and embed_seconds.
    """
    from genoembed.genome import open_genome
    from genoembed.build import index as build_store
    from genoembed.tiles import TilingSpec
    from genoembed.vector_index import IndexSpec, search_index

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
            store = build_store(reference, root / safe_name(name), embedder=embedder, tiling=tiling,
                                index_spec=IndexSpec(), redundant_strands=True)  # scores tile strands
            coordinates = tile_coordinates(store)
            max_k = min(max(ks), store.num_tiles)
            # a both-strand store holds each locus twice: search deeper so k distinct loci remain
            depth = min(max_k * (2 if strands == "both" else 1), store.num_tiles)
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
                        built[config.factory] = build_reference_index(store, config.factory)
                    faiss_index = built[config.factory]
                    search_index(faiss_index, vectors[:1], depth, store.metric, config.nprobe, config.ef_search)
                    best = math.inf
                    for _ in range(max(repeats, 1)):
                        began = time.perf_counter()
                        _scores, ids = search_index(faiss_index, vectors, depth, store.metric,
                                                    config.nprobe, config.ef_search)
                        best = min(best, time.perf_counter() - began)
                    if config.factory == "Flat" and exact_ids is None:
                        exact_ids = ids
                    hits = spans_from_ids(ids, coordinates, max_k)
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
                hits, seconds = minimap2_spans(reference, mutated[condition], preset, root, max(ks))
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


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "embedder"



def significant(value, digits: int = 3) -> str:
    """A rate with ``digits`` significant digits (0.075 stays '0.075', never '0.07'; '' for None/NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if value == 0:
        return "0"
    return f"{value:.{max(digits - 1 - math.floor(math.log10(abs(value))), 0)}f}"


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
                  *(significant(r.get(f"recall_at_{k}")) for k in ks), significant(r["mrr"]),
                  significant(r.get("recall_at_1_same_strand")), significant(r.get("ann_recall_at_10")),
                  cell(r.get("qps"), 0)]
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
