"""Interval joins in DuckDB: overlap and nearest feature, fast at genome scale.

Both take two named relations (tables or views) with ``chrom``, ``start``,
``end``, ``strand`` columns in the 0-based half-open convention of
:mod:`genoembed.schema`, and return every left column, every right column
prefixed (``feature_`` by default) and one measure column.

Overlap: ``[a.start, a.end)`` and ``[b.start, b.end)`` overlap iff
``a.start < b.end AND b.start < a.end``. Touching intervals ``[0,10)`` and
``[10,20)`` do not overlap. A zero-length interval ``[p,p)`` overlaps only a
feature strictly containing its point (``start < p < end``), with
``overlap_bp = 0``; two zero-length intervals never overlap. (bedtools widens
zero-length records by 1 bp on each side instead, so it differs there only.)

Why binned: a DuckDB range join on that predicate ran 50 s for 10^6 x 5*10^4
intervals; cutting the genome into bins, exploding each interval into the
bins it touches, equi-joining on ``(chrom, bin)`` and keeping each pair only
in the bin holding ``greatest(a.start, b.start)`` (that is, bin
``greatest(first bin of a, first bin of b)``) ran 0.12 s. That bin is touched
by both intervals whenever they overlap, so each pair is emitted exactly
once, with no DISTINCT.

Bin size, unless given: ``max(10 kb, mean length of the left side, mean
length of the right side)``. An interval of length L touches at most
``2 + (L - 1) / bin`` bins, so the exploded tables are at most ~3x their
inputs whatever the length distribution (a chromosome-long ``region`` row
only costs its own bins), while bins stay near the typical interval length so
few candidate pairs per bin fail the overlap test.

Strand modes: ``ignore``; ``same`` (both ``+`` or both ``-``); ``opposite``
(one ``+``, one ``-``). Under ``same``/``opposite`` an unstranded ``.``
interval matches nothing, as with ``bedtools -s`` / ``-S``.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa

from genoembed.errors import InputError

STRAND_MODES = ("ignore", "same", "opposite")
DEFAULT_BIN_SIZE = 10_000
FEATURE_PREFIX = "feature_"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def overlap_sql(left: str, right: str, strand: str = "ignore", bin_size: int | None = None,
                prefix: str = FEATURE_PREFIX) -> str:
    """One SELECT: each overlapping (left, right) pair once, ``left.*``, ``{prefix}*`` and ``overlap_bp``.

    ``left`` and ``right`` are relation names chosen by the caller (checked to
    be plain identifiers, never user text); the query has no parameters, so it
    can define a view.
    """
    _check_names(left, right, strand, bin_size, prefix)
    strand_key = _strand_key("l.strand", strand)
    strand_filter = "" if strand_key is None else f"AND {strand_key} = r.strand"
    return f"""
WITH {_bin_cte(left, right, bin_size)},
_ge_lb AS ({_explode(left)}),
_ge_rb AS ({_explode(right)})
SELECT l.* EXCLUDE (_ge_first, _ge_bin), COLUMNS(r.* EXCLUDE (_ge_first, _ge_bin)) AS '{prefix}\\0',
       least(l."end", r."end") - greatest(l.start, r.start) AS overlap_bp
FROM _ge_lb l
JOIN _ge_rb r ON l.chrom = r.chrom AND l._ge_bin = r._ge_bin
WHERE l.start < r."end" AND r.start < l."end" {strand_filter}
  AND greatest(l._ge_first, r._ge_first) = l._ge_bin"""


def nearest_sql(left: str, right: str, strand: str = "ignore", bin_size: int | None = None,
                prefix: str = FEATURE_PREFIX) -> str:
    """One SELECT: for each left row its nearest right feature(s), ``left.*``, ``{prefix}*`` and ``distance``.

    Distance is ``bedtools closest -D b``: 0 when overlapping, otherwise the
    gap in bp plus one (book-ended features are 1 apart), negative when the
    left interval lies upstream of the feature on the *feature's* strand
    (left of a ``+`` or ``.`` feature, right of a ``-`` feature). Ties keep
    every tied feature (bedtools' default ``-t all``); all overlapping features
    tie at 0. Left rows with no candidate on their chrom (and strand) appear
    once with null feature columns and null distance.

    Strategy: overlaps come from the binned join; only left rows without one
    look further, with two ASOF joins per row (the greatest feature end at or
    before ``start``, the least feature start at or after ``end``) and an
    equi-join back on that coordinate to collect ties. Nothing is cross-joined.
    ``_ge_l`` and ``_ge_alone`` are MATERIALIZED: the row ids must be computed
    once, and DuckDB planned the ASOF joins on an inlined anti-join as a
    quadratic inequality join (minutes at 10^6 rows instead of ~1 s).
    """
    _check_names(left, right, strand, bin_size, prefix)
    strand_key = _strand_key("strand", strand)
    key_column = "NULL::VARCHAR" if strand_key is None else strand_key
    match_up = "" if strand_key is None else "AND l._ge_key = up.strand"
    match_dn = "" if strand_key is None else "AND l._ge_key = dn.strand"
    match_r = "" if strand_key is None else "AND b._ge_key = r.strand"
    match_overlap = "" if strand_key is None else "AND l._ge_key = r.strand"
    left_keys = '(SELECT _ge_lid, chrom, start, "end", _ge_key FROM _ge_l)'
    return f"""
WITH {_bin_cte(left, right, bin_size)},
_ge_l AS MATERIALIZED (SELECT *, row_number() OVER () AS _ge_lid, {key_column} AS _ge_key FROM {left}),
_ge_lb AS ({_explode(left_keys)}),
_ge_rb AS ({_explode(right)}),
_ge_overlaps AS (
    SELECT l._ge_lid, r.* EXCLUDE (_ge_first, _ge_bin), 0::BIGINT AS _ge_distance
    FROM _ge_lb l
    JOIN _ge_rb r ON l.chrom = r.chrom AND l._ge_bin = r._ge_bin
    WHERE l.start < r."end" AND r.start < l."end" {match_overlap}
      AND greatest(l._ge_first, r._ge_first) = l._ge_bin),
_ge_alone AS MATERIALIZED (
    SELECT l._ge_lid, l.chrom, l.start, l."end", l._ge_key FROM _ge_l l
    ANTI JOIN _ge_overlaps o ON l._ge_lid = o._ge_lid),
_ge_sides AS (
    SELECT l.*, up."end" AS _ge_up_end, dn.start AS _ge_dn_start
    FROM _ge_alone l
    ASOF LEFT JOIN {right} up ON l.chrom = up.chrom {match_up} AND l.start >= up."end"
    ASOF LEFT JOIN {right} dn ON l.chrom = dn.chrom {match_dn} AND l."end" <= dn.start),
_ge_best AS (
    SELECT *, least(start - _ge_up_end, _ge_dn_start - "end") AS _ge_gap
    FROM _ge_sides WHERE _ge_up_end IS NOT NULL OR _ge_dn_start IS NOT NULL),
_ge_candidates AS (
    SELECT * FROM _ge_overlaps
    UNION ALL BY NAME
    SELECT b._ge_lid, r.*,
           CASE WHEN r.strand = '-' THEN -(b._ge_gap + 1) ELSE b._ge_gap + 1 END AS _ge_distance
    FROM _ge_best b JOIN {right} r ON r.chrom = b.chrom AND r."end" = b._ge_up_end {match_r}
    WHERE b.start - b._ge_up_end = b._ge_gap AND r.start < b."end"
    UNION ALL BY NAME
    SELECT b._ge_lid, r.*,
           CASE WHEN r.strand = '-' THEN b._ge_gap + 1 ELSE -(b._ge_gap + 1) END AS _ge_distance
    FROM _ge_best b JOIN {right} r ON r.chrom = b.chrom AND r.start = b._ge_dn_start {match_r}
    WHERE b._ge_dn_start - b."end" = b._ge_gap)
SELECT l.* EXCLUDE (_ge_lid, _ge_key), COLUMNS(c.* EXCLUDE (_ge_lid, _ge_distance)) AS '{prefix}\\0',
       c._ge_distance AS distance
FROM _ge_l l LEFT JOIN _ge_candidates c ON l._ge_lid = c._ge_lid"""


def overlap(con: duckdb.DuckDBPyConnection, left: str, right: str, **options) -> pa.Table:
    """Run :func:`overlap_sql` on ``con``; options as there."""
    return con.sql(overlap_sql(left, right, **options)).to_arrow_table()


def nearest(con: duckdb.DuckDBPyConnection, left: str, right: str, **options) -> pa.Table:
    """Run :func:`nearest_sql` on ``con``; options as there."""
    return con.sql(nearest_sql(left, right, **options)).to_arrow_table()


def bin_size(con: duckdb.DuckDBPyConnection, left: str, right: str) -> int:
    """The bin size the joins pick for these relations when none is given (see the module docstring)."""
    _check_names(left, right, "ignore", None, FEATURE_PREFIX)
    return con.sql(f"WITH {_bin_cte(left, right, None)} SELECT size FROM _ge_bin_size").fetchall()[0][0]


def _check_names(left: str, right: str, strand: str, bin_size: int | None, prefix: str) -> None:
    if strand not in STRAND_MODES:
        raise InputError(f"strand mode {strand!r} is not one of {', '.join(STRAND_MODES)}")
    for name in (left, right):
        if not _IDENTIFIER.match(name):
            raise ValueError(f"relation name {name!r} must be a plain identifier")
    if not _PREFIX.match(prefix):
        raise ValueError(f"column prefix {prefix!r} must be a plain identifier")
    if bin_size is not None and (not isinstance(bin_size, int) or isinstance(bin_size, bool) or bin_size < 1):
        raise ValueError(f"bin_size must be a positive int or None, got {bin_size!r}")


def _strand_key(column: str, mode: str) -> str | None:
    """SQL for the right-hand strand a left row may match, NULL (matches nothing) for '.'."""
    if mode == "same":
        return f"CASE WHEN {column} IN ('+', '-') THEN {column} END"
    if mode == "opposite":
        return f"CASE {column} WHEN '+' THEN '-' WHEN '-' THEN '+' END"
    return None


def _bin_cte(left: str, right: str, bin_size: int | None) -> str:
    if bin_size is not None:
        return f"_ge_bin_size AS (SELECT {int(bin_size)}::BIGINT AS size)"
    return f"""_ge_bin_size AS (
    SELECT greatest({DEFAULT_BIN_SIZE}, coalesce(ceil(max(mean_length)), 0))::BIGINT AS size
    FROM (SELECT avg("end" - start) AS mean_length FROM {left}
          UNION ALL SELECT avg("end" - start) FROM {right}))"""


def _explode(relation: str) -> str:
    """Each row once per bin it touches; a zero-length row goes in its start's bin."""
    return f"""SELECT x.*, x.start // s.size AS _ge_first,
        unnest(generate_series(x.start // s.size, greatest(x."end" - 1, x.start) // s.size)) AS _ge_bin
        FROM {relation} x, _ge_bin_size s"""
