"""Interval joins of two Arrow tables: overlap and nearest feature, by the rules of :mod:`genoembed.feature_index`.

Both take a ``left`` table and a ``right`` table with ``genome``, ``chrom``, ``start``, ``end``, ``strand``
columns (0-based half-open, :mod:`genoembed.schema`; ``right`` may have ``parts``) and return every left
column, every right column prefixed (``feature_`` by default) and one measure column: a row per (left row,
feature) pair. The rules (keys, parts, strand modes, circular contigs, distance) are stated once, in
:mod:`genoembed.feature_index`, and carried out there; the SQL views ``hit_features`` / ``hit_nearest`` call
the same index (:mod:`genoembed.sql`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from genoembed.feature_index import FeatureIndex

FEATURE_PREFIX = "feature_"


def overlap(left: pa.Table, right: pa.Table, strand: str = "ignore", bin_size: int | None = None,
            prefix: str = FEATURE_PREFIX, circles: dict[tuple[str, str], int] | None = None) -> pa.Table:
    """Each overlapping (left row, feature) pair once: ``left.*``, ``{prefix}*`` and ``overlap_bp`` (summed
    over the feature's overlapping parts). ``circles``: lengths of the circular contigs."""
    rows, features, bp = FeatureIndex.from_table(right, bin_size, circles).overlaps(left, strand)
    return paired(left, right, rows, features, "overlap_bp", bp, prefix)


def nearest(left: pa.Table, right: pa.Table, strand: str = "ignore", bin_size: int | None = None,
            prefix: str = FEATURE_PREFIX, circles: dict[tuple[str, str], int] | None = None) -> pa.Table:
    """For each left row its nearest features, all ties (``bedtools closest -D b -t all``): ``left.*``,
    ``{prefix}*`` and ``distance``; a left row with no candidate once, with nulls."""
    rows, features, distance = FeatureIndex.from_table(right, bin_size, circles).nearest(left, strand)
    return paired(left, right, rows, features, "distance", distance, prefix)


def paired(left: pa.Table, right: pa.Table, rows: np.ndarray, features: np.ndarray, measure: str,
           values: np.ndarray, prefix: str = FEATURE_PREFIX) -> pa.Table:
    """Left rows ``rows`` beside right rows ``features`` (-1: none, null columns and measure), columns prefixed."""
    none = features < 0
    taken = right.take(pa.array(np.where(none, 0, features), mask=none))  # a null index takes a null row
    columns = [*left.take(pa.array(rows, pa.int64())).columns, *taken.columns, pa.array(values, pa.int64(), mask=none)]
    return pa.Table.from_arrays(columns, names=[*left.column_names, *(prefix + n for n in right.column_names), measure])
