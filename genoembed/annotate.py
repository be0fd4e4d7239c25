"""Add annotation files to a store (checked against the genome's contigs) and annotate hits."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import duckdb
from genoembed import features
from genoembed.errors import InputError
from genoembed.files import atomic_write_bytes
from genoembed.manifest import file_sha256
from genoembed.store import Store


def annotation_set_name(path: Path) -> str:
    """SQL-friendly name from a file name: ``NC_000932.gb`` -> ``NC_000932``."""
    stem = path.name
    for suffix in (".gz", ".gb", ".gbk", ".genbank", ".gff3", ".gff", ".gtf", ".bed"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"\W", "_", stem) or "annotations"


def add_annotations(store: Store, path: str | Path, name: str | None = None, format: str | None = None,
                    aliases: dict[str, str] | None = None, auto_alias: bool = False) -> dict:
    """Parse, check contigs against the store's genomes, and save as ``annotations/NAME.parquet``."""
    path = Path(path)
    table = features.read_annotations(path, format=format, aliases=aliases)
    lengths = store.contig_lengths
    if auto_alias:
        table = features.apply_aliases(table, features.suggest_aliases(table, lengths))
    features.require_known_contigs(table, lengths, path)
    name = name or annotation_set_name(path)
    target = store.root / "annotations" / f"{name}.parquet"
    target.parent.mkdir(exist_ok=True)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(target, sink.getvalue().to_pybytes())
    entry = {"path": f"annotations/{name}.parquet", "source": str(path), "rows": table.num_rows,
             "sha256": file_sha256(target), "added": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    store.record("annotations", name, entry)
    return entry


def annotate_hits(store: Store, hits: pa.Table, strand: str = "ignore", types: tuple[str, ...] | None = None) \
        -> pa.Table:
    """Hits plus the names of overlapping features and the nearest feature with signed distance."""
    import duckdb

    from genoembed.joins import nearest_sql, overlap_sql
    from genoembed.sql import connect

    con: duckdb.DuckDBPyConnection = connect(store)
    # rows come back in the order given (queries in input order), not sorted by query name
    con.register("hits_in", hits.append_column("hit_order", pa.array(range(hits.num_rows), pa.int64())))
    type_filter = ""
    if types:
        con.register("wanted_types", pa.table({"type": list(types)}))
        type_filter = "WHERE type IN (SELECT type FROM wanted_types)"
    con.execute(f"CREATE TEMP VIEW features_in AS SELECT * FROM annotations {type_filter}")
    overlaps = overlap_sql("hits_in", "features_in", strand=strand)
    nearest = nearest_sql("hits_in", "features_in", strand=strand)
    query = f"""
        WITH o AS ({overlaps}),
             overlap_names AS (
                 SELECT query, rank, string_agg(DISTINCT coalesce(feature_name, feature_type), ', '
                                                ORDER BY coalesce(feature_name, feature_type)) AS overlapping
                 FROM o GROUP BY query, rank),
             n AS ({nearest}),
             nearest_one AS (
                 SELECT query, rank, arg_min(feature_name, abs(distance)) AS nearest,
                        arg_min(feature_type, abs(distance)) AS nearest_type, min_by(distance, abs(distance)) AS distance
                 FROM n GROUP BY query, rank)
        SELECT h.* EXCLUDE (hit_order), overlap_names.overlapping, nearest_one.nearest, nearest_one.nearest_type,
               nearest_one.distance AS nearest_distance
        FROM hits_in h
        LEFT JOIN overlap_names USING (query, rank)
        LEFT JOIN nearest_one USING (query, rank)
        ORDER BY h.hit_order"""
    try:
        return con.sql(query).to_arrow_table()
    except duckdb.Error as error:
        raise InputError(f"annotating hits failed: {str(error).splitlines()[0]}") from None
