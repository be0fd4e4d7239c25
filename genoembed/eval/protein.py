"""Protein-level truth across phyla: does a DNA tile find the tiles of its protein homolog?

Locus truth (``eval.truth``) asks for the *same* DNA again. Here the answer is a homologous gene
of another genome whose DNA may share almost nothing with the query (E. coli vs H. pylori: a
gamma- and an epsilon-proteobacterium). The truth never comes from an embedding:

1. genes are called on both genomes with pyrodigal (:func:`call_genes`);
2. every sampled query gene's protein is aligned to all target proteins with pyopal's
   Smith-Waterman (BLOSUM62, gap open 11 / extend 1 as blastp counts them, i.e. opal's
   ``gap_open=12``); the best hit is the truth when its E-value (Karlin-Altschul, blastp's gapped
   BLOSUM62 constants) and query coverage pass the thresholds (:func:`protein_truth`);
3. the query is the gene's central ``window`` bp on its coding strand, whole codons only
   (frame kept); a hit is a target tile, correct when it overlaps the truth gene.

Recall is reported per protein identity bin (``PROTEIN_BINS``) for every method, with the
vectors-per-tile budget (``rows``): six-row methods store one vector per frame and score a tile
by its best (query frame, tile frame) pair.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from genoembed.errors import InputError, missing_extra
from genoembed.genes import Gene, call_genes  # noqa: F401  (gene calls are genoembed.genes'; eval re-exports them)
from genoembed.eval.metrics import correct_ranks, distinct_loci, mrr, recall_at_k
from genoembed.eval.truth import Span

log = logging.getLogger(__name__)

# blastp's gapped BLOSUM62 11/1 Karlin-Altschul constants (NCBI BLAST, blast_stat.c).
LAMBDA, K_CONSTANT = 0.267, 0.041
PROTEIN_BINS = (("<40", -math.inf, 40.0), ("40-60", 40.0, 60.0), (">=60", 60.0, math.inf))
PROTEIN_TRUTH = pa.schema([
    pa.field("query_gene", pa.int64(), nullable=False),
    pa.field("target_gene", pa.int64(), nullable=False),
    pa.field("score", pa.int64(), nullable=False),
    pa.field("evalue", pa.float64(), nullable=False),
    pa.field("identity", pa.float64(), nullable=False),  # percent of aligned columns
    pa.field("query_coverage", pa.float64(), nullable=False),  # fraction of the query protein
])
DEFAULT_METHODS = ("random", "kmer:4", "kmer:5", "kmer:6", "aa:2:frames", "aa:2", "aa:2:orf")


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra("protein truth (eval --truth protein)", "protein", module) from None


def read_records(path: str | Path) -> list[tuple[str, str]]:
    """``(name, sequence)`` of a FASTA (plain or gzip) or GenBank file, decided by its first line."""
    from genoembed.seqio import open_text, read_fasta

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: genome file not found")
    with open_text(path, errors="replace") as handle:
        first = handle.readline()
    if first.startswith("LOCUS"):
        from Bio import SeqIO

        with open_text(path) as handle:
            return [(record.id, str(record.seq).upper()) for record in SeqIO.parse(handle, "genbank")]
    return [(name, sequence.upper()) for name, sequence in read_fasta(path)]


def evalue(score: float, query_length: int, database_length: int) -> float:
    """Karlin-Altschul E-value of a raw score (no edge correction: enough for a threshold of 1e-5)."""
    return K_CONSTANT * query_length * database_length * math.exp(-LAMBDA * score)


def protein_truth(query_proteins: Sequence[str], target_proteins: Sequence[str], max_evalue: float = 1e-5,
                  min_coverage: float = 0.5, threads: int = 1) -> pa.Table:
    """Best Smith-Waterman hit of each query protein among the targets, kept when it passes both thresholds.

    Scores come from a SIMD score-only pass over the whole target set; only the best hit is
    re-aligned in full for its identity and coverage. One row per query with a homolog.
    """
    pyopal = _require("pyopal")
    aligner = pyopal.Aligner("BLOSUM62", gap_open=12, gap_extend=1)
    database = pyopal.Database(list(target_proteins))
    total = sum(len(p) for p in target_proteins)
    rows = {name: [] for name in PROTEIN_TRUTH.names}
    for index, query in enumerate(query_proteins):
        if not query:
            continue
        scores = np.array([hit.score for hit in aligner.align(query, database, mode="score")])
        best = int(np.argmax(scores))
        significance = evalue(float(scores[best]), len(query), total)
        if significance > max_evalue:
            continue
        full = aligner.align(query, database, mode="full", start=best, end=best + 1)[0]
        coverage = full.coverage("query")
        if coverage < min_coverage:
            continue
        for name, value in zip(PROTEIN_TRUTH.names, (index, best, int(scores[best]), significance,
                                                      100.0 * full.identity(), coverage)):
            rows[name].append(value)
    return pa.Table.from_pydict(rows, schema=PROTEIN_TRUTH)


def central_window(gene: Gene, window: int) -> str:
    """The gene's central whole codons (``window`` rounded down to a codon) on its coding strand, frame 0.

    The whole gene when it is shorter."""
    codons = window // 3 * 3
    if len(gene.dna) <= codons:
        return gene.dna
    return gene.dna[(len(gene.dna) - codons) // 2 // 3 * 3:][:codons]


def target_tiles(records: Sequence[tuple[str, str]], window: int, stride: int,
                 strands: str = "+") -> tuple[list[Span], list[str]]:
    """Tiles of the target genome (``strands`` '+' or 'both': each locus also as its reverse complement)."""
    from genoembed.seqio import reverse_complement
    from genoembed.tiles import tile_starts

    if strands not in ("+", "both"):
        raise InputError(f"strands={strands!r}: use '+' (one row per locus) or 'both'")
    spans, sequences = [], []
    for name, sequence in records:
        for start in tile_starts(len(sequence), window, stride):
            piece = sequence[start:start + window]
            spans.append((name, int(start), int(start) + window, "+"))
            sequences.append(piece)
            if strands == "both":
                spans.append((name, int(start), int(start) + window, "-"))
                sequences.append(reverse_complement(piece))
    if not spans:
        raise InputError(f"target genome: no contig is at least {window} bp long; use a shorter window")
    return spans, sequences


# ---------------------------------------------------------------- methods and search

@dataclass(frozen=True)
class Method:
    """How a method turns sequences into ``(n, rows, dim)`` vectors; ``centre`` subtracts the reference mean."""

    name: str
    vectors: Callable[[Sequence[str]], np.ndarray]
    centre: bool = True


def random_vectors(sequences: Sequence[str], dim: int = 256, seed: int = 0) -> np.ndarray:
    """Chance level: a random unit vector per sequence (seeded by position, never by content)."""
    rng = np.random.default_rng(seed + len(sequences))
    return rng.standard_normal((len(sequences), 1, dim)).astype(np.float32)


def method_for(name: str) -> Method:
    """``random``, ``aa:K:frames`` (six rows per tile), or any registry model (one row per tile)."""
    from genoembed.embedders import get_embedder
    from genoembed.embedders.translated import TranslatedProfileEmbedder

    if name == "random":
        return Method(name, random_vectors, centre=False)
    if name.startswith("aa:") and name.endswith(":frames"):
        k = name.split(":")[1]
        if not k.isdigit():
            raise InputError(f"method {name!r}: use aa:K:frames with an integer K, e.g. aa:2:frames")
        return Method(name, TranslatedProfileEmbedder(k=int(k)).frame_vectors)
    embedder = get_embedder(name)
    return Method(name, lambda sequences: embedder.embed(sequences)[:, None, :])


def centred_unit(vectors: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Rows minus the reference mean (when given), L2-normalised: cosine via inner product."""
    flat = vectors.reshape(-1, vectors.shape[-1]).astype(np.float32)
    if mean is not None:
        flat = flat - mean
    return np.ascontiguousarray(flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12))


def best_tiles(reference: np.ndarray, queries: np.ndarray, k: int, threads: int = 1) -> np.ndarray:
    """Top ``k`` tile ids per query when tiles and queries have several rows each (score = best row pair).

    Each query row searches ``rows * k`` reference rows (a tile holds at most ``rows`` of them, so
    a tile in the true top ``k`` by best pair is always found); hits are merged per tile by max.
    """
    from genoembed.vector_index import import_faiss

    faiss = import_faiss()
    faiss.omp_set_num_threads(threads)
    n_tiles, rows, dim = reference.shape
    index = faiss.IndexFlatIP(dim)
    index.add(reference.reshape(-1, dim))
    depth = min(rows * k, n_tiles * rows)
    scores, ids = index.search(queries.reshape(-1, dim), depth)
    n_queries = queries.shape[0]
    scores, tiles = scores.reshape(n_queries, -1), ids.reshape(n_queries, -1) // rows
    out = np.full((n_queries, k), -1, dtype=np.int64)
    for q in range(n_queries):
        order = np.argsort(-scores[q], kind="stable")
        _, first = np.unique(tiles[q][order], return_index=True)
        ranked = tiles[q][order][np.sort(first)][:k]
        out[q, :len(ranked)] = ranked
    return out


def _bin(identity: float) -> str:
    return next(name for name, low, high in PROTEIN_BINS if low <= identity < high)


def score_rows(base: dict, ranks: np.ndarray, identities: np.ndarray, ks: Sequence[int]) -> list[dict]:
    """One row for all queries with a homolog plus one per protein identity bin."""
    labels = np.array([_bin(x) for x in identities], dtype=object)
    rows = []
    for name in ("all", *(b[0] for b in PROTEIN_BINS)):
        mask = np.ones(len(ranks), bool) if name == "all" else labels == name
        row = dict(base, identity_bin=name, queries=int(mask.sum()))
        for k in ks:
            row[f"recall_at_{k}"] = recall_at_k(ranks=ranks[mask], k=k) if mask.any() else math.nan
        row["mrr"] = mrr(ranks=ranks[mask]) if mask.any() else math.nan
        rows.append(row)
    return rows


@dataclass(frozen=True)
class ProteinTask:
    """One direction: query windows, their truth genes' spans and identities, and the target tiling."""

    direction: str
    queries: list[str]
    truth: list[list[Span]]
    identities: np.ndarray
    tile_spans: list[Span]
    tile_sequences: list[str]


def protein_task(query_path: str | Path, target_path: str | Path, *, n_queries: int = 300, window: int = 1000,
                 stride: int = 500, strands: str = "+", min_gene_bp: int = 300, max_evalue: float = 1e-5,
                 min_coverage: float = 0.5, seed: int = 0, threads: int = 1,
                 say: Callable[[str], None] = log.info) -> ProteinTask:
    """Sample query genes, find their protein homologs in the target, tile the target."""
    query_records, target_records = read_records(query_path), read_records(target_path)
    say(f"calling genes with pyrodigal: {Path(query_path).name}, {Path(target_path).name}")
    query_genes = [g for g in call_genes(query_records) if len(g.dna) >= min_gene_bp]
    target_genes = call_genes(target_records)
    if not query_genes or not target_genes:
        raise InputError(f"{query_path if not query_genes else target_path}: pyrodigal called no genes "
                         f"(query genes need >= {min_gene_bp} bp); is it a nucleotide genome?")
    rng = np.random.default_rng(seed)
    sampled = np.sort(rng.choice(len(query_genes), size=min(n_queries, len(query_genes)), replace=False))
    say(f"aligning {len(sampled)} query proteins to {len(target_genes)} target proteins (pyopal SW)")
    truth = protein_truth([query_genes[i].protein for i in sampled], [g.protein for g in target_genes],
                          max_evalue, min_coverage, threads)
    if truth.num_rows == 0:
        raise InputError(f"{query_path} -> {target_path}: no sampled query gene has a protein homolog "
                         f"(E <= {max_evalue}, coverage >= {min_coverage}); sample more with --queries")
    genes = [query_genes[sampled[i]] for i in truth.column("query_gene").to_pylist()]
    targets = [target_genes[i] for i in truth.column("target_gene").to_pylist()]
    spans, sequences = target_tiles(target_records, window, stride, strands)
    return ProteinTask(f"{Path(query_path).name} -> {Path(target_path).name}",
                       [central_window(g, window) for g in genes],
                       [[(t.contig, t.start, t.end, t.strand)] for t in targets],
                       truth.column("identity").to_numpy(), spans, sequences)


def evaluate_task(task: ProteinTask, methods: Sequence[Method], ks: Sequence[int] = (1, 10),
                  threads: int = 1, say: Callable[[str], None] = log.info) -> list[dict]:
    """Recall of every method on one task: rows per identity bin, with vectors per tile and embed cost."""
    rows = []
    max_k = max(ks)
    for method in methods:
        say(f"{task.direction}: {method.name}")
        began = time.perf_counter()
        reference = method.vectors(task.tile_sequences)
        per_1000 = 1000 * (time.perf_counter() - began) / len(task.tile_sequences)
        queries = method.vectors(task.queries)
        mean = reference.reshape(-1, reference.shape[-1]).mean(axis=0) if method.centre else None
        n_rows = reference.shape[1]
        ids = best_tiles(centred_unit(reference, mean).reshape(reference.shape),
                         centred_unit(queries, mean).reshape(queries.shape), 2 * max_k, threads)
        hits = [distinct_loci([task.tile_spans[i] for i in row if i >= 0])[:max_k] for row in ids]
        base = {"direction": task.direction, "method": method.name, "vectors_per_tile": n_rows,
                "dim": int(reference.shape[-1]), "centred": method.centre, "tiles": len(task.tile_sequences),
                "embed_seconds_per_1000_tiles": per_1000}
        rows += score_rows(base, correct_ranks(hits, task.truth), task.identities, ks)
    return rows


def protein_summary(rows: Sequence[dict], ks: Sequence[int] = (1, 10)) -> str:
    """A Markdown table: one line per direction x method, recall per identity bin (3 significant digits)."""
    from genoembed.eval.run import significant

    bins = ["all", *(b[0] for b in PROTEIN_BINS)]
    header = ["direction", "method", "vectors/tile", "dim",
              *(f"R@{k} {b}" for b in bins for k in ks), "queries (" + " / ".join(bins) + ")"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups: dict[tuple, dict] = {}
    for row in rows:
        groups.setdefault((row["direction"], row["method"]), {})[row["identity_bin"]] = row
    for (direction, method), by_bin in groups.items():
        first = by_bin["all"]
        cells = [direction, method, str(first["vectors_per_tile"]), str(first["dim"]),
                 *(significant(by_bin[b].get(f"recall_at_{k}")) for b in bins for k in ks),
                 " / ".join(str(by_bin[b]["queries"]) for b in bins)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
