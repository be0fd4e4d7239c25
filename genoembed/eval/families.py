"""Gene-family agreement: does the top hit of a gene tile land in a gene of the same family?

A looser question than locus retrieval, with annotation truth (:func:`family_key`).
"""


from __future__ import annotations

import math
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from genoembed.errors import InputError


from genoembed.eval.metrics import recall_at_k
from genoembed.eval.run import (build_reference_index, minimap2_spans, mutated_sequences, safe_name, spans_from_ids,
                                tile_coordinates)
from genoembed.eval.truth import Span, minimap2_available



log = logging.getLogger(__name__)

# Products, not ``gene`` features: a GenBank gene spans its introns (trnK's holds matK), while the
# CDS/tRNA/rRNA lists its exons as parts.
FAMILY_FEATURE_TYPES = ("CDS", "tRNA", "rRNA")

# Demerec-style symbol: a three-letter lowercase stem naming the pathway or complex ("rpo" = RNA
# polymerase, "psb" = photosystem II), then the subunit: an optional lowercase letter ("trnfM"), an
# uppercase letter or digit, and anything after it ("rpoC1", "rrn4.5S", "nuoA-N").
GENE_SYMBOL = re.compile(r"([a-z]{3})(?:[a-z]?[A-Z0-9][\w.\-]*)?")

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
        match = GENE_SYMBOL.fullmatch(symbol)
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
    from genoembed.seqio import reverse_complement

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
    from genoembed.features import read_annotations

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
    from genoembed.build import index as build_store
    from genoembed.tiles import TilingSpec
    from genoembed.vector_index import IndexSpec, search_index

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
            store = build_store(ref_genome, root / safe_name(name), embedder=embedder, tiling=tiling,
                                index_spec=IndexSpec())
            coordinates = tile_coordinates(store)
            faiss_index = build_reference_index(store, "Flat")
            for rate in substitution_rates:
                _scores, ids = search_index(faiss_index, embedder.embed(mutated[rate]), min(depth, store.num_tiles),
                                            store.metric)
                base = {"method": name, "kind": "embedding", "substitution_rate": float(rate), "tile": tile}
                rows += family_agreement_rows(base, spans_from_ids(ids, coordinates), tiles, ref_features, modes,
                                              chance, ks)
        if minimap2 or (minimap2 is None and minimap2_available()):
            preset = "sr" if tile <= 300 else "asm20"
            for rate in substitution_rates:
                say(f"minimap2 -x {preset}: gene tiles, substitution {rate}")
                hits, _seconds = minimap2_spans(reference, mutated[rate], preset, root, depth)
                base = {"method": f"minimap2 -x {preset}", "kind": "aligner", "substitution_rate": float(rate),
                        "tile": tile}
                rows += family_agreement_rows(base, hits, tiles, ref_features, modes, chance, ks)
    finally:
        if workdir_context:
            workdir_context.cleanup()
    return pa.Table.from_pylist(rows)

