"""Queries much shorter than the window (reads), placed by shared minimizers instead of one embedding.

A 150 bp read holds a seventh of a 1 kb tile's k-mers, so its vector is close to nothing in the store
(cosine 0.02-0.1 to its true tile). What such a read does share with its true locus is exact k-mers.
This module is minimap2's first stage in numpy: canonical (k, w) minimizers of every contig of the
store (k=15, w=10, hashed so that low-complexity k-mers are not favoured), sorted once and cached in
the store's ``cache/`` directory (written to a temporary name and renamed, so concurrent searches never
read a half-written file); a read's minimizers are looked up, each match votes for a diagonal (the
target position of the read's first base on the matched strand), and votes within ``BAND`` bases of
each other form a placement. Placements are ranked by the number of the read's minimizers that vote
for them; ``score`` is that number over the read's minimizers (0-1). ``--align`` then aligns the read
there, like any hit. Minimizers occurring more than ``MAX_OCCURRENCES`` times (repeats) are skipped, as
minimap2 skips its most frequent ones.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.errors import InputError
from genoembed.files import atomic_file
from genoembed.seqio import codes_by_length, encode_bases, kmer_index, reverse_complement_codes
from genoembed.store import Store

K, W = 15, 10
BAND = 64  # diagonals this close are one placement (indels of the read against the genome)
MAX_OCCURRENCES = 200
MAX_INDEXED_BASES = 500_000_000  # above this the in-memory minimizer table (~1.2 GB) is refused
_MASK = (1 << 64) - 1
log = logging.getLogger("genoembed")


def _hash(values: np.ndarray) -> np.ndarray:
    """minimap2's invertible 64-bit integer hash (``hash64``), so minimizers are not biased to poly-A."""
    key = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        key = (~key + (key << np.uint64(21)))
        key = key ^ (key >> np.uint64(24))
        key = (key + (key << np.uint64(3))) + (key << np.uint64(8))
        key = key ^ (key >> np.uint64(14))
        key = (key + (key << np.uint64(2))) + (key << np.uint64(4))
        key = key ^ (key >> np.uint64(28))
        key = key + (key << np.uint64(31))
    return key


def minimizers(sequence: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, position, strand) of the canonical (K, W) minimizers of ``sequence``; strand is +1 when the
    forward k-mer is the canonical one, -1 when its reverse complement is."""
    _, hashed, position, strand = minimizers_of_rows(encode_bases(sequence)[None, :])
    return hashed, position, strand


def minimizers_of_rows(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row, hash, position, strand) of the minimizers of every row of equal-length base codes at once, by
    row then position; k-mers with an ambiguous base and palindromes (no strand) are never minimizers."""
    empty = np.empty(0, np.int64)
    if codes.shape[1] < K:
        return empty, np.empty(0, np.uint64), empty, np.empty(0, np.int8)
    forward, clean = kmer_index(codes, K)
    reverse = kmer_index(reverse_complement_codes(codes), K)[0][:, ::-1]
    forward, reverse = forward.astype(np.int64), reverse.astype(np.int64)
    hashed = _hash(np.minimum(forward, reverse))
    hashed[~clean] = np.uint64(_MASK)
    width = min(W, hashed.shape[1])
    windows = np.lib.stride_tricks.sliding_window_view(hashed, width, axis=1)
    chosen = np.zeros(hashed.shape, dtype=bool)
    rows = np.arange(len(hashed))[:, None]
    chosen[rows, np.argmin(windows, axis=2) + np.arange(windows.shape[1])] = True
    chosen &= clean & (forward != reverse)
    row, position = np.nonzero(chosen)
    strand = np.where(forward[row, position] < reverse[row, position], 1, -1).astype(np.int8)
    return row, hashed[row, position], position.astype(np.int64), strand


class SeedIndex:
    """Sorted minimizers of every contig of a store: hash, contig number, position, strand."""

    def __init__(self, contigs: list[tuple[str, str]], hashes, contig, position, strand):
        self.contigs = contigs  # (genome, chrom) per contig number
        self.hashes, self.contig, self.position, self.strand = hashes, contig, position, strand

    @classmethod
    def of_store(cls, store: Store) -> "SeedIndex":
        """The store's minimizer index, built once and cached under ``cache/`` keyed by its genomes' checksums."""
        total = sum(sum(contigs.values()) for contigs in store.contig_lengths.values())
        if total > MAX_INDEXED_BASES:
            raise InputError(f"{store.root}: {total:,} bp is too large for the in-memory seed index of short queries "
                             f"(at most {MAX_INDEXED_BASES:,} bp); align reads with minimap2, or index the store with "
                             "a --window close to the read length")
        key = hashlib.sha256(json.dumps([K, W, sorted((name, entry.get("sha256")) for name, entry
                                                      in store.genomes.items())]).encode()).hexdigest()[:16]
        path = store.root / "cache" / f"seeds-{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as saved:
                    contigs = [tuple(pair) for pair in json.loads(str(saved["contigs"]))]
                    return cls(contigs, saved["hashes"], saved["contig"], saved["position"], saved["strand"])
            except (OSError, ValueError, KeyError):
                log.warning("%s: unreadable seed cache, rebuilding it", path)
        index = cls.build(store)
        index.save(path)
        return index

    @classmethod
    def build(cls, store: Store) -> "SeedIndex":
        contigs, pieces = [], []
        for genome_name in store.genomes:
            genome = store.genome(genome_name)
            for chrom, length in genome.contigs.items():
                hashed, position, strand = minimizers(genome.fetch(chrom, 0, length).upper())
                pieces.append((hashed, np.full(len(hashed), len(contigs), np.int32), position, strand))
                contigs.append((genome_name, chrom))
        hashes, contig, position, strand = (np.concatenate([piece[i] for piece in pieces]) for i in range(4))
        order = np.argsort(hashes, kind="stable")
        return cls(contigs, hashes[order], contig[order], position[order], strand[order])

    def save(self, path) -> None:
        try:
            path.parent.mkdir(exist_ok=True)
            with atomic_file(path, "seed cache") as partial, open(partial, "wb") as handle:
                np.savez(handle, contigs=np.array(json.dumps(self.contigs)), hashes=self.hashes,
                         contig=self.contig, position=self.position, strand=self.strand)
        except Exception as error:  # a read-only store only costs building the index again next time
            log.debug("seed cache not written to %s: %s", path, error)

    def place(self, sequences: list[str], k: int) -> list[list[dict]]:
        """Up to ``k`` placements of each sequence: genome, chrom, start, end (0-based half-open, not yet clipped
        to the contig), strand, score (fraction of the sequence's minimizers voting for it), votes. Sequences of
        one length are handled as one array (a batch of reads costs a few array passes, not one per read)."""
        places: list[list[dict]] = [[] for _ in sequences]
        for rows, codes in codes_by_length([sequence.upper() for sequence in sequences]):
            read, hashed, position, strand = minimizers_of_rows(codes)
            if len(hashed):
                self._vote(rows[read], hashed, position, strand, codes.shape[1], k, places)
        return places

    def _vote(self, read, hashed, query_position, query_strand, length: int, k: int, places: list) -> None:
        """Each minimizer match votes for a diagonal of its read; a read's votes within ``BAND`` of each other on
        one contig and strand are one placement; the ``k`` with most distinct minimizers are kept per read."""
        first = np.searchsorted(self.hashes, hashed, side="left")
        counts = np.searchsorted(self.hashes, hashed, side="right") - first
        usable = (counts > 0) & (counts <= MAX_OCCURRENCES)
        if not usable.any():
            return
        seed = np.repeat(np.flatnonzero(usable), counts[usable])
        offsets = np.arange(len(seed)) - np.repeat(np.cumsum(counts[usable]) - counts[usable], counts[usable])
        target = np.repeat(first[usable], counts[usable]) + offsets  # every occurrence of every usable minimizer
        same = query_strand[seed] == self.strand[target]
        # diagonal: where the read's first base (+) or last base (-) lands on the contig
        diagonal = np.where(same, self.position[target] - query_position[seed],
                            self.position[target] + query_position[seed] + K)
        contig, owner = self.contig[target].astype(np.int64), read[seed]
        order = np.lexsort((diagonal, ~same, contig, owner))
        contig, same, diagonal, seed, owner = (values[order] for values in (contig, same, diagonal, seed, owner))
        new = np.ones(len(order), dtype=bool)
        new[1:] = (owner[1:] != owner[:-1]) | (contig[1:] != contig[:-1]) | (same[1:] != same[:-1]) | \
            (np.diff(diagonal) > BAND)
        group = np.cumsum(new) - 1
        votes = np.bincount(np.unique(group * len(hashed) + seed) // len(hashed))  # a minimizer votes once
        firsts = np.flatnonzero(new)
        ends = np.append(firsts[1:], len(group))
        minimizer_count = np.bincount(read)
        ranked = np.lexsort((np.arange(len(firsts)), -votes, owner[firsts]))
        taken = {}
        for g in ranked:
            reader = int(owner[firsts[g]])
            if taken.get(reader, 0) == k:
                continue
            taken[reader] = taken.get(reader, 0) + 1
            genome, chrom = self.contigs[contig[firsts[g]]]
            centre = int(np.median(diagonal[firsts[g]:ends[g]]))
            forward = bool(same[firsts[g]])
            start, end = (centre, centre + length) if forward else (centre - length, centre)
            places[reader].append({"genome": genome, "chrom": chrom, "start": start, "end": end,
                                   "strand": "+" if forward else "-", "votes": int(votes[g]),
                                   "score": votes[g] / minimizer_count[reader]})


def place_queries(store: Store, queries: list, k: int) -> pa.Table:
    """Top-``k`` seed placements per query as a ``schema.HITS`` table; ``tile_id`` is -1 (no tile was
    searched) and ``score`` the fraction of the query's minimizers that vote for the placement."""
    index = SeedIndex.of_store(store)
    lengths = store.contig_lengths
    rows = []
    for query, found in zip(queries, index.place([query.sequence for query in queries], k)):
        for rank, place in enumerate(found, 1):
            rows.append({"query": query.name, "query_chrom": query.chrom, "query_start": query.start,
                         "query_end": query.end, "query_strand": query.strand, "rank": rank, "tile_id": -1,
                         "genome": place["genome"], "chrom": place["chrom"], "start": max(0, place["start"]),
                         "end": min(lengths[place["genome"]][place["chrom"]], place["end"]), "strand": place["strand"],
                         "score": place["score"]})
    return pa.Table.from_pylist(rows, schema=schema.HITS)
