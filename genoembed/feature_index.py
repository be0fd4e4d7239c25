"""Overlapping and nearest features of a batch of intervals, from features indexed once in memory.

Why a second engine beside :mod:`genoembed.joins`: the DuckDB joins plan and run a query of a dozen
steps for every call, 35-100 ms even for ten hits against the demo's 258 features, which made an
annotated search in ``genoembed serve`` cost 15x the search. A :class:`FeatureIndex` is built once per
annotation set (and strand mode), then answers a batch with a few numpy sorts and searches, well
under a millisecond for a search's hits. It answers what a search's ``overlapping`` / ``nearest``
columns need: the names of the features overlapping each interval, and one nearest feature with its
signed distance. Its rules are those of :mod:`genoembed.joins`, and the tests hold the two to the same
pure-Python oracle: (genome, chrom) is the key; a feature with ``parts`` is matched by its parts only;
the overlap test is ``a.start < b.end AND b.start < a.end``; distance is ``bedtools closest -D b``
(0 overlapping, else gap + 1, negative upstream of the part measured); strand modes ``ignore`` /
``same`` / ``opposite``, a ``.`` interval matching nothing when stranded. Of several features tied
for nearest, the one listed first in the table is reported (the SQL join lists them all).

Layout: parts are grouped by (genome, chrom) (and strand when stranded), sorted by start with the
running maximum of their ends, sorted by end, and copied into bins of ``bin_size`` bp like the SQL
join's (a part goes to every bin whose starts could reach it), so overlap candidates come from one
equi-search per interval bin and the nearest part from the two sorted orders (as the SQL join's ASOF
step does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genoembed.errors import InputError
from genoembed.joins import STRAND_MODES

_SHIFT = np.int64(1) << np.int64(36)  # coordinates stay below 2^36 (68 Gbp); group keys live above them
_PLUS, _MINUS = 0, 1


@dataclass
class _Layout:
    """The parts of one strand mode, grouped and sorted (see the module docstring)."""

    by_start: np.ndarray  # part numbers sorted by (group, start)
    start_keys: np.ndarray  # group * 2^36 + start, in that order
    run_end: np.ndarray  # running max of the ends within each group, in that order
    by_end: np.ndarray
    end_keys: np.ndarray
    bin_parts: np.ndarray  # part number of every bin copy, sorted by bin key
    bin_keys: np.ndarray
    bins_per_group: int


@dataclass
class FeatureIndex:
    """Features (an ``ANNOTATIONS``-like table) indexed for :meth:`overlapping_and_nearest`."""

    labels: list  # per feature: name, else type (the ``overlapping`` column lists these)
    names: list
    types: list
    contig_numbers: dict  # (genome, chrom) -> the number of the parts' contig
    part_contig: np.ndarray
    part_start: np.ndarray
    part_end: np.ndarray
    part_strand: np.ndarray  # 0 '+', 1 '-', 2 '.'
    part_feature: np.ndarray
    part_number: np.ndarray
    bin_size: int
    _layouts: dict = field(default_factory=dict)

    @classmethod
    def from_table(cls, features: pa.Table, bin_size: int | None = None) -> "FeatureIndex":
        """Index ``features`` (columns genome, chrom, start, end, strand, type, name, parts if any);
        ``bin_size`` defaults to the mean part length."""
        spans = features.select(["start", "end", "strand"])
        parts = features["parts"].combine_chunks() if "parts" in features.column_names else \
            pa.nulls(features.num_rows, pa.list_(pa.struct([("start", pa.int64()), ("end", pa.int64()),
                                                              ("strand", pa.string())])))
        whole = pc.is_null(parts).to_numpy(zero_copy_only=False)
        listed = parts.filter(pc.invert(pc.is_null(parts)))
        owner = np.flatnonzero(~whole)[pc.list_parent_indices(listed).to_numpy()] if len(listed) else \
            np.empty(0, np.int64)
        flat = pc.list_flatten(listed)
        offsets = listed.offsets.to_numpy()
        single = np.flatnonzero(whole)
        numbers = np.concatenate([np.ones(len(single), np.int64), _ranks(np.diff(offsets)) + 1])
        part_feature = np.concatenate([single, owner]).astype(np.int64)
        part_start = np.concatenate([_ints(spans["start"]).take(single), _ints(flat.field("start"))])
        part_end = np.concatenate([_ints(spans["end"]).take(single), _ints(flat.field("end"))])
        strands = pa.concat_arrays([spans["strand"].combine_chunks().take(pa.array(single, pa.int64())),
                                    flat.field("strand").cast(pa.string())])
        part_strand = np.full(len(strands), 2, np.int8)
        part_strand[pc.equal(strands, "+").to_numpy(zero_copy_only=False)] = _PLUS
        part_strand[pc.equal(strands, "-").to_numpy(zero_copy_only=False)] = _MINUS
        keys = pc.binary_join_element_wise(features["genome"], features["chrom"], "\0")  # a null genome: null key
        contigs = pc.unique(keys).drop_null()
        contig_of_feature = _ints(pc.fill_null(pc.index_in(keys, contigs), -1))
        order = np.lexsort((numbers, part_feature))
        names = features["name"].to_pylist()
        types = features["type"].to_pylist()
        size = bin_size or (int(np.ceil(np.mean(part_end - part_start))) if len(part_start) else 1)
        if len(part_end) and part_end.max() >= _SHIFT:
            raise InputError(f"a feature ends at {part_end.max()}: coordinates past 2^36 are not supported")
        return cls(labels=[n if n is not None else t for n, t in zip(names, types)], names=names, types=types,
                   contig_numbers={tuple(key.split("\0", 1)): n for n, key in enumerate(contigs.to_pylist())},
                   part_contig=contig_of_feature[part_feature[order]], part_start=part_start[order],
                   part_end=part_end[order], part_strand=part_strand[order], part_feature=part_feature[order],
                   part_number=numbers[order],
                   bin_size=max(1, int(size)))

    def overlapping_and_nearest(self, intervals: pa.Table, strand: str = "ignore") -> pa.Table:
        """Per row of ``intervals`` (genome, chrom, start, end, strand), in order: ``overlapping`` (the distinct
        labels of overlapping features, sorted, ', '-joined; null when none), ``nearest``, ``nearest_type``
        and ``nearest_distance`` (one nearest feature; null when the contig has none)."""
        if strand not in STRAND_MODES:
            raise InputError(f"strand mode {strand!r} is not one of {', '.join(STRAND_MODES)}")
        layout = self._layout(strand)
        group = self._groups_of(intervals, strand)
        start, end = _ints(intervals["start"]), _ints(intervals["end"])
        hit, feature = self._overlaps(layout, group, start, end)
        overlapping: list[str | None] = [None] * intervals.num_rows
        nearest_feature = np.full(intervals.num_rows, -1, np.int64)
        distance = np.zeros(intervals.num_rows, np.int64)
        if len(hit):
            first = np.flatnonzero(np.r_[True, hit[1:] != hit[:-1]])  # pairs come sorted by (row, feature)
            nearest_feature[hit[first]] = feature[first]
            for row, low, high in zip(hit[first].tolist(), first.tolist(), [*first[1:].tolist(), len(hit)]):
                overlapping[row] = ", ".join(sorted({self.labels[f] for f in feature[low:high].tolist()}))
        apart = np.flatnonzero((nearest_feature < 0) & (group >= 0))
        found, measured, rows = self._nearest(layout, group[apart], start[apart], end[apart])
        nearest_feature[apart[rows]] = found
        distance[apart[rows]] = measured
        known = nearest_feature >= 0
        pick = np.where(known, nearest_feature, 0)
        return pa.table({
            "overlapping": pa.array(overlapping, pa.string()),
            "nearest": pa.array([self.names[f] if k else None for f, k in zip(pick, known)], pa.string()),
            "nearest_type": pa.array([self.types[f] if k else None for f, k in zip(pick, known)], pa.string()),
            "nearest_distance": pa.array(distance, pa.int64(), mask=~known)})

    # ---------------------------------------------------------------- internals

    def _part_groups(self, strand: str) -> np.ndarray:
        """Group of every part under ``strand`` (-1: matches nothing, a '.' part when stranded)."""
        if strand == "ignore":
            return self.part_contig
        return np.where(self.part_strand < 2, self.part_contig * 2 + self.part_strand, -1)

    def _groups_of(self, intervals: pa.Table, strand: str) -> np.ndarray:
        contig = np.array([self.contig_numbers.get(key, -1) for key in
                           zip(intervals["genome"].to_pylist(), intervals["chrom"].to_pylist())], dtype=np.int64)
        if strand == "ignore":
            return contig
        own = intervals["strand"].to_numpy(zero_copy_only=False) if intervals.num_rows else np.empty(0, object)
        wanted = np.full(len(own), -1, np.int64)
        plus, minus = own == "+", own == "-"
        if strand == "same":
            wanted[plus], wanted[minus] = _PLUS, _MINUS
        else:
            wanted[plus], wanted[minus] = _MINUS, _PLUS
        return np.where((contig >= 0) & (wanted >= 0), contig * 2 + wanted, -1)

    def _layout(self, strand: str) -> _Layout:
        if strand not in self._layouts:
            groups = self._part_groups(strand)
            kept = np.flatnonzero(groups >= 0)
            group, start, end = groups[kept], self.part_start[kept], self.part_end[kept]
            by_start = np.lexsort((start, group))
            start_keys = group[by_start] * _SHIFT + start[by_start]
            run_end = np.maximum.accumulate(group[by_start] * _SHIFT + end[by_start]) - group[by_start] * _SHIFT
            by_end = np.lexsort((end, group))
            size = self.bin_size
            first = np.maximum(start - size + 1, 0) // size
            last = np.maximum(end - 1, start) // size
            bins_per_group = int(last.max()) + 2 if len(last) else 1
            copies = last - first + 1
            part = np.repeat(np.arange(len(kept)), copies)
            bins = np.repeat(first, copies) + _ranks(copies)
            keys = group[part] * bins_per_group + bins
            order = np.argsort(keys, kind="stable")
            self._layouts[strand] = _Layout(
                by_start=kept[by_start], start_keys=start_keys, run_end=run_end, by_end=kept[by_end],
                end_keys=group[by_end] * _SHIFT + end[by_end], bin_parts=kept[part[order]], bin_keys=keys[order],
                bins_per_group=bins_per_group)
        return self._layouts[strand]

    def _overlaps(self, layout: _Layout, group: np.ndarray, start: np.ndarray,
                  end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(interval row, feature) of every overlapping pair, once each."""
        rows = np.flatnonzero(group >= 0)
        size = self.bin_size
        first, last = start[rows] // size, np.maximum(end[rows] - 1, start[rows]) // size
        copies = last - first + 1
        row = np.repeat(rows, copies)
        bins = np.repeat(first, copies) + _ranks(copies)
        inside = bins < layout.bins_per_group
        row, keys = row[inside], group[row[inside]] * layout.bins_per_group + bins[inside]
        low = np.searchsorted(layout.bin_keys, keys, "left")
        high = np.searchsorted(layout.bin_keys, keys, "right")
        pair_row = np.repeat(row, high - low)
        part = layout.bin_parts[np.repeat(low, high - low) + _ranks(high - low)]
        meets = (start[pair_row] < self.part_end[part]) & (self.part_start[part] < end[pair_row])
        features = np.int64(len(self.labels))
        pairs = np.unique(pair_row[meets] * features + self.part_feature[part[meets]])
        return pairs // features, pairs % features

    def _nearest(self, layout: _Layout, group: np.ndarray, start: np.ndarray,
                 end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For intervals overlapping nothing: (feature, signed distance, position in the inputs) of the first
        listed feature among those nearest, for the intervals whose group has parts."""
        if not len(layout.start_keys):
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        base = group * _SHIFT
        group_low = np.searchsorted(layout.start_keys, base, "left")
        group_high = np.searchsorted(layout.start_keys, base + _SHIFT, "left")
        before = np.searchsorted(layout.start_keys, base + end, "left")  # parts starting before the end
        has_up, has_down = before > group_low, before < group_high
        up_end = np.where(has_up, layout.run_end[np.maximum(before - 1, 0)], 0)
        down_start = np.where(has_down, layout.start_keys[np.minimum(before, len(layout.start_keys) - 1)] - base, 0)
        big = np.iinfo(np.int64).max
        up_gap = np.where(has_up, start - up_end, big)
        down_gap = np.where(has_down, down_start - end, big)
        gap = np.minimum(up_gap, down_gap)
        candidates = []
        for side, wanted, keys, order, value in (
                ("up", has_up & (up_gap == gap), layout.end_keys, layout.by_end, up_end),
                ("down", has_down & (down_gap == gap), layout.start_keys, layout.by_start, down_start)):
            rows = np.flatnonzero(wanted)
            low = np.searchsorted(keys, base[rows] + value[rows], "left")
            high = np.searchsorted(keys, base[rows] + value[rows], "right")
            row = np.repeat(rows, high - low)
            part = order[np.repeat(low, high - low) + _ranks(high - low)]
            if side == "up":  # parts ending at the running end, among those starting before the interval's end
                keep = self.part_start[part] < end[row]
                row, part = row[keep], part[keep]
            minus = self.part_strand[part] == _MINUS
            step = gap[row] + 1
            signed = np.where(minus, -step, step) if side == "up" else np.where(minus, step, -step)
            candidates.append((row, part, signed))
        row = np.concatenate([c[0] for c in candidates])
        part = np.concatenate([c[1] for c in candidates])
        signed = np.concatenate([c[2] for c in candidates])
        feature = self.part_feature[part]
        order = np.lexsort((self.part_number[part], feature, row))
        row, feature, signed = row[order], feature[order], signed[order]
        first = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]) if len(row) else np.empty(0, np.int64)
        return feature[first], signed[first], row[first]


def _ints(values) -> np.ndarray:
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.int64)


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0..n-1 within each run of ``counts`` (the offsets that expand ranges into their members)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if not total:
        return np.empty(0, np.int64)
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)

