"""`genoembed sql`: read-only DuckDB over a store.

Views: ``tiles`` (no vectors), ``embeddings`` (tile_id, embedding),
``annotations`` (all ingested feature sets), ``hits`` (the last search) and
``hits_NAME`` for each saved search, plus ``hit_features`` (hits x
overlapping features) and ``hit_nearest`` (nearest feature per hit, signed
distance), and ``hit_features_NAME`` / ``hit_nearest_NAME`` for each saved
search (joining ``hits_NAME`` with ``hit_features`` would pair one search's
hits with another's features). Only SELECT statements run (and EXPLAIN of one).

The sandbox, by construction rather than by statement lists: DuckDB gets no
file access at all (``enable_external_access = false`` with no allowed path,
so ``COPY ... TO``, ``EXPORT``, ``ATTACH``, ``INSTALL`` and persistent secrets
are refused whatever statement wraps them: ``EXPLAIN ANALYZE COPY`` once wrote
over a shard when the store's files were DuckDB's allowed paths, which allow
writing as well as reading). The views read Arrow datasets: pyarrow opens the
store's files, for reading only, and DuckDB scans what it hands over. No
Python variable is visible to a query (replacement scans off), settings are
locked, and only a SELECT, or EXPLAIN (ANALYZE) of exactly one SELECT, runs.
DuckDB always allows its temp directory, which defaults to ``.tmp`` in the
working directory; each connection gets a private ``tempfile.mkdtemp``
directory instead (mode 0700, outside the working directory, removed with the
connection), so big queries can still spill to disk.

Which files are exposed: only those the manifest names whose resolved path
(after symlinks) lies inside the resolved store root, so a manifest entry
like ``../../etc/x`` or a symlink planted in ``searches/`` is refused.
Every file, shards included, is checked against its manifest ``sha256``
(when it has one) before DuckDB may read it, so SQL never serves a damaged
shard. A file's checksum is remembered under its identity (path, device,
inode, size, modification time; :func:`genoembed.genome.remembered_checksum`),
so a connection re-reads only files that changed since they were last hashed:
a store's gigabytes are read once, and a served store answers each search
without re-hashing GENCODE's annotations. A damaged saved search hides only
its own views: a query naming them is refused with the reason, every other
query runs.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import duckdb
from genoembed import schema
from genoembed.errors import InputError, StoreError, command
from genoembed.genome import remembered_checksum
from genoembed.interrupts import interruptible, off_the_main_thread
from genoembed.store import SNAPSHOT_RETRIES, Store

DEFAULT_TIMEOUT = 60.0
# EXPLAIN's own words before the statement it explains (which EXPLAIN ANALYZE runs); anything else is refused.
_EXPLAIN = re.compile(r"\s*EXPLAIN\s+(?:ANALY[SZ]E\s+|\([^()]*\)\s*)?", re.IGNORECASE)
# Connection settings fixed before the views are made, then locked: no file access, no extension loading,
# no persistent secrets, no Python objects found by name.
_SANDBOX = {"python_enable_replacements": False,
            "autoinstall_known_extensions": False, "autoload_known_extensions": False,
            "allow_persistent_secrets": False, "allow_community_extensions": False}
# DuckDB error lines worth keeping after the first: they name the fix.
_HINTS = ("Did you mean", "Candidate bindings")
# How often a waiting thread wakes to notice Ctrl-C, and to repeat an interrupt that came too early.
_BATCH_ROWS = 65_536  # rows per fetched batch when a result is bounded


@dataclass(frozen=True)
class StoreFiles:
    """The checked, resolved files a connection may read: shards, annotation sets, saved searches by name,
    and the saved searches that cannot be read (name -> why).

    ``owners`` maps an annotation file written before annotations had a ``genome`` column to its
    contig -> genome table (see :func:`annotation_owners`)."""

    shards: list[str]
    annotations: list[str]
    searches: dict[str, str]
    owners: dict[str, dict[str, str]]
    damaged: dict[str, str] = field(default_factory=dict)

    @property
    def all(self) -> list[str]:
        return self.shards + self.annotations + list(self.searches.values())


def store_files(store: Store) -> StoreFiles:
    """Every file the manifest names, resolved, contained in the store and (where it has a sha256) verified."""
    root = store.root.resolve()
    shards = [checked_file(root, "shards", shard["genome"], shard) for shard in store.shards]
    annotations, owners = [], {}
    for name, entry in store.manifest.get("annotations", {}).items():
        annotations.append(checked_file(root, "annotations", name, entry))
        if entry.get("genome_in_file") is False:
            owners[annotations[-1]] = annotation_owners(store, entry)
    searches, damaged = {}, {}
    for name, entry in store.searches(damaged).items():
        try:
            searches[name] = checked_file(root, "searches", name, entry)
        except StoreError as error:  # a damaged saved search hides its own views, nothing else
            damaged[name] = str(error)
    return StoreFiles(shards, annotations, searches, owners, damaged)


def annotation_owners(store: Store, entry: dict) -> dict[str, str]:
    """contig -> genome for the rows of an annotation file written before the ``genome`` column
    (:func:`genoembed.manifest.m002_annotation_genomes`): the set's genome, or for a set of a several-genome
    store, the one candidate holding the contig; names several candidates hold are left out (join nothing)."""
    candidates = [entry["genome"]] if entry.get("genome") else entry.get("genome_candidates", [])
    holders: dict[str, list[str]] = {}
    for genome in candidates:
        for chrom in store.contig_lengths.get(genome, {}):
            holders.setdefault(chrom, []).append(genome)
    return {chrom: genomes[0] for chrom, genomes in holders.items() if len(genomes) == 1}


def inside_store(root: Path, listed: str, what: str) -> str:
    """``root / listed`` resolved through symlinks, refused unless it is a file inside ``root`` (resolved)."""
    resolved = (root / listed).resolve()
    if not resolved.is_relative_to(root):
        raise StoreError(f"{root}: {what} ({listed}) resolves to {resolved}, outside the store; "
                         f"restore the file or remove the entry, then run {command('verify', root)}")
    if not resolved.is_file():
        raise StoreError(f"{root}: {what} ({listed}) is missing; run {command('verify', root)}")
    return str(resolved)


def checked_file(root: Path, section: str, name: str, entry: dict) -> str:
    """:func:`inside_store`, then the file's sha256 against the manifest's when it records one."""
    path = inside_store(root, entry["path"], f"{section} {name!r}")
    if "sha256" in entry and remembered_checksum(Path(path)) != entry["sha256"]:
        raise StoreError(f"{root / entry['path']}: sha256 differs from the manifest ({section} {name!r} changed "
                         f"since it was written); run {command('verify', root)} and write it again")
    return path


def _parquet_view(con, name: str, paths: list[str], columns: str = "*", empty: pa.Schema | None = None) -> None:
    """View ``name`` over the Parquet files ``paths`` (columns by name, missing ones null), read by pyarrow."""
    con.register(f"_{name}_files", _dataset(paths) if paths else empty.empty_table())
    con.execute(f"CREATE VIEW {name} AS SELECT {columns} FROM _{name}_files")


def _dataset(paths: list[str]):
    """The Parquet files as one Arrow dataset, opened by pyarrow for reading (DuckDB never opens a file)."""
    import pyarrow.dataset as ds

    return ds.dataset(paths, schema=_unified_schema(paths), format="parquet")


def _unified_schema(paths: list[str]) -> pa.Schema:
    """The files' schemas merged by column name (an older file lacking a column reads it as null)."""
    schemas = []
    for path in paths:
        try:
            schemas.append(pq.read_schema(path))
        except (OSError, pa.ArrowException) as error:
            raise StoreError(f"{path}: unreadable Parquet ({_message(error)}); "
                             f"run `genoembed verify` on its store and rebuild or rewrite it") from None
    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowException, TypeError) as error:
        raise StoreError(f"{paths[0]}: the store's files disagree on a column type ({_message(error)}); "
                         "run `genoembed verify` on the store") from None
    return pa.schema([field.with_type(_scannable(field.type)) for field in unified])


def _scannable(kind: pa.DataType) -> pa.DataType:
    """The type pyarrow casts a column to as it scans, for DuckDB: float16 (which DuckDB cannot take from Arrow)
    as float32, fixed-size lists as lists (``embedding`` stays FLOAT[], as DuckDB's own Parquet reader gives it)."""
    if pa.types.is_float16(kind):
        return pa.float32()
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind):
        return pa.list_(_scannable(kind.value_type))
    return kind


def _annotations_view(con, files: StoreFiles) -> None:
    """``annotations``: every set, keyed by (genome, chrom); files written before the ``genome`` column get it
    from their contig -> genome table."""
    current = [path for path in files.annotations if path not in files.owners]
    selects = []
    if current:
        con.register("_annotations_files", _dataset(current))
        selects.append("SELECT * FROM _annotations_files")
    for number, (path, owners) in enumerate(files.owners.items()):
        con.register(f"_annotation_file_{number}", _dataset([path]))
        con.register(f"_annotation_owners_{number}", pa.table({"chrom": pa.array(list(owners), pa.string()),
                                                               "genome": pa.array(list(owners.values()), pa.string())}))
        selects.append(f"SELECT o.genome, f.* FROM _annotation_file_{number} f "
                       f"LEFT JOIN _annotation_owners_{number} o ON f.chrom = o.chrom")
    if not selects:
        con.register("_annotations_empty", schema.ANNOTATIONS.empty_table())
        selects = ["SELECT * FROM _annotations_empty"]
    con.execute(f"CREATE VIEW _feature_rows AS {' UNION ALL BY NAME '.join(selects)}")
    # one set of names across views: hit_features' feature_type / feature_name here too (type, name kept)
    con.execute("CREATE VIEW annotations AS SELECT *, type AS feature_type, name AS feature_name FROM _feature_rows")


def _feature_views(con, suffix: str) -> None:
    """``hit_features{suffix}`` and ``hit_nearest{suffix}`` over ``hits{suffix}``."""
    from genoembed.joins import nearest_sql, overlap_sql

    hits = f"hits{suffix}"
    for view, join in (("features", overlap_sql), ("nearest", nearest_sql)):  # feature_id as annotations names it
        con.execute(f"CREATE VIEW hit_{view}{suffix} AS SELECT *, feature_feature_id AS feature_id FROM "
                    f"({join(hits, JOINED_ANNOTATIONS, strand='ignore')})")


# The annotations as the joins see them. On a circular contig of length L every feature is matched through its
# parts, each cut at the origin and given three times, one turn apart: at -L, 0 and +L for the SQL joins
# (JOINED_ANNOTATIONS), at 0, +L and +2L for the numpy index of search's feature columns, which takes no negative
# coordinate and meets intervals moved one turn ahead (AHEAD_ANNOTATIONS). Joins compare intervals on a line; with
# the copies a hit through the origin (end past L) meets the features after it, and the nearest feature is the
# nearest either way round (each interval lies within [0, 2L), so a copy one turn away on each side is all that
# can be nearer). The feature's own start/end are kept (GFF3's convention); its parts column shows the copies.
JOINED_ANNOTATIONS, AHEAD_ANNOTATIONS = "_ge_annotations", "_ge_annotations_ahead"


def _joined_annotations(con, circles: dict[tuple[str, str], int]) -> None:
    if not circles:
        for view in (JOINED_ANNOTATIONS, AHEAD_ANNOTATIONS):
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM annotations")
        return
    con.register("_ge_circles", pa.table({"genome": [genome for genome, _ in circles],
                                          "chrom": [chrom for _, chrom in circles],
                                          "_ge_circle": list(circles.values())}))

    def part(start: str, end: str) -> str:
        return f"{{'start': {start}, 'end': {end}, 'strand': p.strand}}"

    end, length = 'p."end"', "_ge_circle"
    cut = (f"CASE WHEN {end} > {length} THEN [{part('p.start', length)}, {part('0::BIGINT', f'{end} - {length}')}] "
           f"ELSE [{part('p.start', end)}] END")
    for view, turns in ((JOINED_ANNOTATIONS, (-1, 0, 1)), (AHEAD_ANNOTATIONS, (0, 1, 2))):
        copies = ", ".join(f"list_transform(_ge_cut, lambda p: {part(f'p.start + {turn} * {length}', f'{end} + {turn} * {length}')})"
                           for turn in turns)
        con.execute(f"""CREATE VIEW {view} AS
WITH with_parts AS (
    SELECT * FROM annotations
    UNION ALL BY NAME SELECT * FROM (SELECT NULL::{schema.PARTS_SQL_TYPE} AS parts) WHERE false),
cut AS (
    SELECT a.*, c.{length}, flatten(list_transform(
        coalesce(a.parts, [{{'start': a.start, 'end': a."end", 'strand': a.strand}}]), lambda p: {cut})) AS _ge_cut
    FROM with_parts a JOIN _ge_circles c USING (genome, chrom))
SELECT * EXCLUDE ({length}, _ge_cut) REPLACE (list_concat({copies})::{schema.PARTS_SQL_TYPE} AS parts) FROM cut
UNION ALL BY NAME
SELECT * FROM with_parts a WHERE NOT EXISTS (
    SELECT 1 FROM _ge_circles c WHERE c.genome IS NOT DISTINCT FROM a.genome AND c.chrom = a.chrom)""")


def _create_views(con, files: StoreFiles, circles: dict[tuple[str, str], int]) -> None:
    # a store whose shards are all gone (every genome's tiles removed) still has empty views, not an error
    _parquet_view(con, "tiles", files.shards, f"* EXCLUDE ({schema.EMBEDDING})", empty=schema.TILES)
    _parquet_view(con, "embeddings", files.shards, f"tile_id, {schema.EMBEDDING}",
                  empty=pa.schema([schema.embeddings_schema(1).field(name) for name in ("tile_id", schema.EMBEDDING)]))
    _annotations_view(con, files)
    _joined_annotations(con, circles)
    for name, path in files.searches.items():
        _parquet_view(con, f"hits_{name}", [path])
        _feature_views(con, f"_{name}")
    last = files.searches.get("last")
    _parquet_view(con, "hits", [last] if last else [], empty=schema.HITS)
    _feature_views(con, "")


def connect(store: Store, settings: dict | None = None) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with the store's views, locked to reading the store's checked files.

    ``settings``: more DuckDB configuration (the server bounds ``memory_limit`` and ``threads``).
    """
    return connect_files(store, store_files(store), settings)


def connect_files(store: Store, files: StoreFiles, settings: dict | None = None) -> duckdb.DuckDBPyConnection:
    """:func:`connect` over files already checked."""
    import duckdb  # here, not at the top: searches that join nothing never pay DuckDB's import

    temp = tempfile.mkdtemp(prefix="genoembed-sql-")
    con = duckdb.connect(":memory:", config={**(settings or {}), "temp_directory": temp, **_SANDBOX})
    con.execute("SET enable_external_access = false")  # after temp_directory, which it would refuse to set
    # callers (annotate, plot) keep the connection as long as they like: the directory goes with it
    weakref.finalize(con, shutil.rmtree, temp, ignore_errors=True)
    circles = {(name, chrom): entry["contig_lengths"][chrom] for name, entry in store.genomes.items()
               for chrom in entry.get("circular", ()) if chrom in entry["contig_lengths"]}
    try:
        off_the_main_thread(lambda: _create_views(con, files, circles))  # where no Ctrl-C lands inside DuckDB
    except (duckdb.Error, pa.ArrowException, OSError) as error:
        raise _unreadable(store, files, error) from None
    con.execute("SET lock_configuration = true")
    return con


def check_statement(con: duckdb.DuckDBPyConnection, query: str, damaged: dict[str, str]) -> None:
    """Refuse anything but one SELECT (or EXPLAIN of one), and a query naming a damaged search's views."""
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as error:
        raise InputError(f"SQL: {_message(error)}") from None
    if len(statements) != 1:
        raise InputError(f"SQL: give exactly one statement (got {len(statements)})")
    kind = statements[0].type.name
    if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs the statement it explains: judged by that one
        explained = query[_EXPLAIN.match(query).end():] if _EXPLAIN.match(query) else ""
        try:
            inner = con.extract_statements(explained) if explained.strip() else []
        except duckdb.Error:
            inner = []
        kind = inner[0].type.name if len(inner) == 1 else "EXPLAIN of something other than one SELECT"
    if kind != "SELECT":
        raise InputError(f"SQL: only SELECT queries are allowed on a store (got {kind}); "
                         "the store is opened read-only")
    for name, why in damaged.items():
        views = ("hits", "hit_features", "hit_nearest") if name == "last" else ()
        views += tuple(f"{view}_{name}" for view in ("hits", "hit_features", "hit_nearest"))
        if re.search(rf"\b({'|'.join(views)})\b", query, re.IGNORECASE):
            raise StoreError(f"saved search {name!r} cannot be read: {why}")


def _unreadable(store: Store, files: StoreFiles, error: Exception) -> StoreError:
    """A one-line error naming the first file whose Parquet footer is unreadable (DuckDB's may not name it)."""
    for path in files.all:
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowException) as bad:
            return StoreError(f"{path}: unreadable Parquet ({_message(bad)}); "
                              f"run {command('verify', store.root)} and rebuild or rewrite it")
    return StoreError(f"{store.root}: DuckDB cannot read the store ({_message(error)}); "
                      f"run {command('verify', store.root)}")


def run_sql(store: Store, query: str, parameters: dict | list | None = None,
            timeout: float | None = DEFAULT_TIMEOUT, max_rows: int | None = None,
            settings: dict | None = None, cancelled: threading.Event | None = None) -> pa.Table:
    """Run one read-only statement; parameters are bound (``$name`` or ``?``), never formatted in.

    The query is stopped after ``timeout`` seconds (None: no limit) or on
    Ctrl-C, which is re-raised once DuckDB has stopped; the timeout covers
    fetching the rows too. With ``max_rows``, rows are fetched in batches and
    a result longer than that is refused once its first ``max_rows + 1`` rows
    are read (so ``SELECT * FROM range(3e7)`` never builds its 30 million rows).
    ``settings`` are passed to :func:`connect`. Setting ``cancelled`` (from another thread) stops the
    query as the timeout does (the server's way to free a worker whose request it gave up on).
    """
    import duckdb

    if timeout is not None and not timeout > 0:
        raise InputError(f"SQL: timeout must be a positive number of seconds (or none), got {timeout!r}")
    for attempt in range(SNAPSHOT_RETRIES):
        seen = None if store.protected else _search_paths(store)
        try:
            files = store_files(store)
            con = connect_files(store, files, settings)
            check_statement(con, query, files.damaged)
        except StoreError:
            # A writer removed a file of this snapshot (`genoembed remove` rewrites shards and deletes the old
            # ones once the new manifest is committed): answer from the newest one, as search does. Retried
            # only while writers keep committing, so a damaged store is reported at once.
            if attempt == SNAPSHOT_RETRIES - 1 or not _moved(store, seen):
                raise
            continue
        try:
            return interruptible(con, lambda: _fetch(con, query, parameters, max_rows), timeout, cancelled)
        except TimeoutError:
            if cancelled is not None and cancelled.is_set():
                raise InputError("SQL: query cancelled") from None
            raise InputError(f"SQL: query stopped after {timeout:g} s; raise --timeout "
                             "(0: no limit; timeout=None in Python)") from None
        except duckdb.Error as error:
            # a shard deleted after the views were made fails as an IO or "permission" (allowed_paths) error;
            # retry only when a writer did commit since, so a query's own mistakes are reported at once
            if attempt == SNAPSHOT_RETRIES - 1 or not _moved(store, seen):
                raise InputError(f"SQL: {_message(error)}") from None


def _moved(store: Store, searches: dict[str, str] | None) -> bool:
    """True when a writer committed since ``store``'s snapshot, or (for a reader without a lease) a saved search
    now names another file than ``searches`` did.

    Saved searches switch by sidecar, without a new manifest. A reader with a lease keeps every version it
    read until it is done (:func:`genoembed.writers.sweep_retired`), so for it a failure on one is a damaged
    store, reported at once. A reader without one (a store it cannot write to) has nothing kept for it: a
    version it read may be swept by another user's next write, and the query is worth retrying.
    """
    return store.moved_on() or (searches is not None and _search_paths(store) != searches)


def _search_paths(store: Store) -> dict[str, str]:
    """Saved search -> the file its sidecar names now."""
    return {name: entry["path"] for name, entry in store.searches({}).items()}


def _fetch(con: duckdb.DuckDBPyConnection, query: str, parameters, max_rows: int | None) -> pa.Table:
    """The result as one table; with ``max_rows``, streamed in batches and refused past that many rows."""
    relation = con.sql(query, params=parameters)
    if relation is None:  # a statement with no result set
        return pa.table({})
    if max_rows is None:
        return relation.to_arrow_table()
    reader = relation.fetch_arrow_reader(min(max_rows + 1, _BATCH_ROWS))
    batches, rows = [], 0
    for batch in reader:
        batches.append(batch)
        rows += batch.num_rows
        if rows > max_rows:
            raise ResultTooLarge(f"SQL: the result has more than {max_rows} rows (this server's limit); "
                                 "add LIMIT, filter or aggregate")
    return pa.Table.from_batches(batches, schema=reader.schema)


class ResultTooLarge(InputError):
    """A result over the caller's row limit."""


def _message(error: Exception) -> str:
    """DuckDB's first line plus its hint lines ("Did you mean ..."), as one line."""
    lines = [line.strip() for line in str(error).strip().splitlines()]
    return " ".join([lines[0], *(line for line in lines[1:] if line.startswith(_HINTS))])
