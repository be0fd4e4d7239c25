"""`genoembed sql`: read-only DuckDB over a store.

Views: ``tiles`` (no vectors), ``embeddings`` (tile_id, embedding),
``annotations`` (all ingested feature sets), ``hits`` (the last search) and
``hits_NAME`` for each saved search, plus ``hit_features`` (hits x
overlapping features) and ``hit_nearest`` (nearest feature per hit, signed
distance). Only SELECT/EXPLAIN statements run; the connection can read the
store's own files and nothing else, and cannot write anywhere.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from genoembed import schema
from genoembed.errors import InputError
from genoembed.store import Store

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def _parquet_view(con, name: str, paths: list[str], columns: str = "*", empty: pa.Schema | None = None) -> None:
    if paths:
        listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        con.execute(f"CREATE VIEW {name} AS SELECT {columns} FROM read_parquet([{listed}], union_by_name=true)")
    else:
        con.register(f"_{name}_empty", empty.empty_table())
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_empty")


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with the store's views, locked to reading the store's files."""
    from genoembed.joins import nearest_sql, overlap_sql

    con = duckdb.connect(":memory:")
    shards = [str(p) for p in store.shard_paths]
    _parquet_view(con, "tiles", shards, f"* EXCLUDE ({schema.EMBEDDING})")
    _parquet_view(con, "embeddings", shards, f"tile_id, {schema.EMBEDDING}")
    annotation_files = [str(store.root / entry["path"]) for entry in store.manifest.get("annotations", {}).values()]
    _parquet_view(con, "annotations", annotation_files, empty=schema.ANNOTATIONS)
    searches = store.manifest.get("searches", {})
    readable = shards + annotation_files
    for name, entry in searches.items():
        path = str(store.root / entry["path"])
        readable.append(path)
        _parquet_view(con, f"hits_{name}", [path])
    _parquet_view(con, "hits", [str(store.root / searches["last"]["path"])] if "last" in searches else [],
                  empty=schema.HITS)
    con.execute(f"CREATE VIEW hit_features AS {overlap_sql('hits', 'annotations', strand='ignore')}")
    con.execute(f"CREATE VIEW hit_nearest AS {nearest_sql('hits', 'annotations', strand='ignore')}")
    con.execute("SET allowed_paths = $paths", {"paths": readable})
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def run_sql(store: Store, query: str, parameters: dict | list | None = None) -> pa.Table:
    """Run one read-only statement; parameters are bound (``$name`` or ``?``), never formatted in."""
    con = connect(store)
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as error:
        raise InputError(f"SQL: {_first_line(error)}") from None
    if len(statements) != 1:
        raise InputError(f"SQL: give exactly one statement (got {len(statements)})")
    if statements[0].type not in _ALLOWED:
        raise InputError(f"SQL: only SELECT queries are allowed on a store (got {statements[0].type.name}); "
                         "the store is opened read-only")
    try:
        return con.sql(query, params=parameters).to_arrow_table()
    except duckdb.Error as error:
        raise InputError(f"SQL: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]
