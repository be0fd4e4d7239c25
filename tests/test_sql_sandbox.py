"""`genoembed sql` against a hostile user: the sandbox, trusted files, per-search views, stopping queries.

Each test tampers with its own copy of a small annotated store (chloroplast,
4-mer embedder) with two named searches and a ``last`` one.
"""

from __future__ import annotations

import _thread
import gc
import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from genoembed.cli import app
from genoembed.errors import InputError, StoreError
from genoembed.annotate import add_annotations
from genoembed.search import search
from genoembed.sql import connect, run_sql
from genoembed.store import Store

from conftest import CHLOROPLAST_GENBANK

ENDLESS = "SELECT count(*) FROM range(1000000000000)"
SEARCHES = {"a": "NC_000932.1:84001-85000", "b": "NC_000932.1:1-1000", "last": "NC_000932.1:30001-31000"}


@pytest.fixture(scope="module")
def annotated_root(chloroplast_store, tmp_path_factory) -> Path:
    """A copy of the shared store (left untouched) with the chloroplast's GenBank features and three searches."""
    root = tmp_path_factory.mktemp("sandbox") / "store"
    shutil.copytree(chloroplast_store.root, root)
    store = Store.open(root)
    add_annotations(store, CHLOROPLAST_GENBANK)
    for name, region in SEARCHES.items():
        search(store, [region], k=6, save_as=name)
    return root


@pytest.fixture
def root(annotated_root, tmp_path) -> Path:
    """This test's own copy of the annotated store, free to tamper with."""
    copy = tmp_path / "store"
    shutil.copytree(annotated_root, copy)
    return copy


def edit_manifest(root: Path, section: str, name: str, **changes) -> None:
    """Change an entry where the store keeps it: annotations in the manifest, a saved search in its sidecar."""
    if section == "searches":
        sidecar = root / "searches" / f"{name}.json"
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **changes}))
        return
    manifest = json.loads((root / "manifest.json").read_text())
    manifest[section][name].update(changes)
    (root / "manifest.json").write_text(json.dumps(manifest))


def stored(root: Path, relative: str) -> str:
    """Where the store keeps ``relative``: a saved search ``searches/NAME.parquet`` is the version its sidecar names,
    an annotation set ``annotations/NAME.parquet`` the version its manifest entry names."""
    if relative.startswith("searches/"):
        return json.loads((root / relative).with_suffix(".json").read_text())["path"]
    if relative.startswith("annotations/"):
        return json.loads((root / "manifest.json").read_text())["annotations"][Path(relative).stem]["path"]
    return relative


def outside_copy(root: Path, relative: str) -> Path:
    """A valid copy of one of the store's files, placed beside (outside) the store."""
    relative = stored(root, relative)
    target = root.parent / f"outside-{Path(relative).name}"
    shutil.copy(root / relative, target)
    return target


# --- 1. the temp directory ----------------------------------------------------------

def test_dot_tmp_symlink_in_working_directory_is_not_readable(root, tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd.csv").write_text("user,password\nroot,hunter2\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / ".tmp").symlink_to(secret)
    monkeypatch.chdir(work)
    with pytest.raises(InputError, match="SQL: .*disabled by configuration"):
        run_sql(Store.open(root), "SELECT * FROM read_csv('.tmp/passwd.csv')")


def test_private_temp_directory_is_outside_cwd_and_removed_with_the_connection(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    con = connect(Store.open(root))
    temp = Path(con.sql("SELECT current_setting('temp_directory')").fetchall()[0][0])
    assert temp.is_absolute() and temp.is_dir() and not temp.resolve().is_relative_to(tmp_path.resolve())
    del con
    gc.collect()
    assert not temp.exists()


# --- 2. files the manifest names ------------------------------------------------------

@pytest.mark.parametrize("section, name, relative", [
    ("searches", "a", "searches/a.parquet"),
    ("annotations", "NC_000932", "annotations/NC_000932.parquet"),
])
@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_manifest_path_outside_the_store_is_refused(root, section, name, relative, how):
    target = outside_copy(root, relative)
    edit_manifest(root, section, name, path=f"../{target.name}" if how == "dotdot" else str(target))
    # the manifest's own check refuses an annotation path (the whole store), a search's sidecar check a search
    # path (that search only: the others still answer)
    query = "SELECT count(*) FROM hits_a" if section == "searches" else "SELECT count(*) FROM annotations"
    with pytest.raises(StoreError, match=rf"{name}.*(points outside the store|must describe {relative})"):
        run_sql(Store.open(root), query)
    if section == "searches":
        assert run_sql(Store.open(root), "SELECT count(*) AS n FROM hits_b").to_pylist() == [{"n": 6}]


@pytest.mark.parametrize("relative", ["searches/a.parquet", "annotations/NC_000932.parquet",
                                      "shards/part-00000.parquet"])
def test_symlink_to_a_file_outside_the_store_is_refused(root, relative):
    target = outside_copy(root, relative)
    relative = stored(root, relative)
    (root / relative).unlink()
    (root / relative).symlink_to(target)
    # a saved search blocks only its own views; a shard or annotation set the whole store
    query = "SELECT count(*) FROM hits_a" if relative.startswith("searches/") else "SELECT 1 AS one"
    with pytest.raises(StoreError, match=rf"{relative}.*outside the store"):
        run_sql(Store.open(root), query)


def test_symlink_inside_the_store_is_fine(root):
    moved = root / "searches" / "moved.parquet"
    (root / stored(root, "searches/a.parquet")).rename(moved)
    (root / stored(root, "searches/a.parquet")).symlink_to(moved)
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM hits_a").to_pylist() == [{"n": 6}]


def test_changed_annotation_file_fails_its_sha256(root):
    path = root / stored(root, "annotations/NC_000932.parquet")
    pq.write_table(pq.read_table(path).slice(0, 10), path)
    with pytest.raises(StoreError, match=rf"{path.name}: sha256 differs.*genoembed verify"):
        run_sql(Store.open(root), "SELECT count(*) FROM annotations")


def test_search_sha256_is_checked_when_the_manifest_has_one(root):
    from genoembed.manifest import file_sha256

    edit_manifest(root, "searches", "a", sha256=file_sha256(root / stored(root, "searches/a.parquet")))
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM hits_a").to_pylist() == [{"n": 6}]
    edit_manifest(root, "searches", "a", sha256="0" * 64)
    with pytest.raises(StoreError, match=r"a\.[0-9a-f]{16}\.parquet: sha256 differs"):
        run_sql(Store.open(root), "SELECT count(*) AS n FROM hits_a")


def test_search_name_that_is_not_an_identifier_never_becomes_sql(root):
    name = "x AS SELECT 1; SELECT 2 --"
    shutil.copy(root / stored(root, "searches/a.parquet"), root / "searches" / f"{name}.parquet")
    entry = json.loads((root / "searches" / "a.json").read_text())
    (root / "searches" / f"{name}.json").write_text(json.dumps({**entry, "path": f"searches/{name}.parquet"}))
    damaged = {}
    Store.open(root).searches(damaged)
    assert "is not a plain identifier" in damaged[name]
    # it hides itself only: the store and its other searches still answer, and no view runs its name
    assert run_sql(Store.open(root), "SELECT 1 AS one").to_pylist() == [{"one": 1}]
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM hits_a").to_pylist() == [{"n": 6}]


# --- 3. per-search feature views --------------------------------------------------------

def pieces(feature: dict) -> list[tuple[int, int]]:
    """A feature's intervals: its parts when it has several (a join()), else its span."""
    return [(part["start"], part["end"]) for part in feature["parts"]] if feature.get("parts") else \
        [(feature["start"], feature["end"])]


def overlapping(hits: list[dict], features: list[dict]) -> set[tuple]:
    """(query, rank, feature start, end, type) of every hit/feature overlap (through its parts), by brute force."""
    return {(h["query"], h["rank"], f["start"], f["end"], f["type"]) for h in hits for f in features
            if h["chrom"] == f["chrom"] and any(h["start"] < e and s < h["end"] for s, e in pieces(f))}


def nearest(hits: list[dict], features: list[dict]) -> set[tuple]:
    """(query, rank, feature start, end, |distance|) of each hit's nearest features (ties kept), by brute force."""
    def gap(h, f):
        def one(s, e):
            if h["start"] < e and s < h["end"]:
                return 0
            return (s - h["end"] if s >= h["end"] else h["start"] - e) + 1
        return min(one(s, e) for s, e in pieces(f))

    found = set()
    for h in hits:
        distances = {(f["start"], f["end"]): gap(h, f) for f in features if f["chrom"] == h["chrom"]}
        best = min(distances.values())
        found |= {(h["query"], h["rank"], s, e, d) for (s, e), d in distances.items() if d == best}
    return found


@pytest.mark.parametrize("suffix, search", [("_a", "a"), ("_b", "b"), ("", "last")])
def test_each_search_joins_its_own_features(root, suffix, search):
    store = Store.open(root)
    hits = run_sql(store, f"SELECT * FROM hits_{search}").to_pylist()
    features = run_sql(store, "SELECT * FROM annotations").to_pylist()
    assert {h["query"] for h in hits} == {SEARCHES[search]}
    joined = run_sql(store, f"SELECT query, rank, feature_start, feature_end, feature_type "
                            f"FROM hits_{search} JOIN hit_features{suffix} USING (query, rank)")
    expected = overlapping(hits, features)
    assert expected and set(map(tuple, (r.values() for r in joined.to_pylist()))) == expected
    near = run_sql(store, f"SELECT query, rank, feature_start, feature_end, abs(distance) AS d "
                          f"FROM hit_nearest{suffix}")
    assert set(map(tuple, (r.values() for r in near.to_pylist()))) == nearest(hits, features)


# --- 4. stopping a query ------------------------------------------------------------------

def test_timeout_stops_an_endless_query(root):
    with pytest.raises(InputError, match=r"^SQL: query stopped after 0.5 s; raise --timeout"):
        run_sql(Store.open(root), ENDLESS, timeout=0.5)


class CtrlC:
    """Presses Ctrl-C once, from wherever it is called (Python runs the handler in the main thread)."""

    def __init__(self):
        self.pressed = False

    def __call__(self) -> None:
        if not self.pressed:
            self.pressed = True
            _thread.interrupt_main()


class InterruptingRows:
    """A view's rows for DuckDB (the Arrow stream of ``dataset``) that press Ctrl-C the first time DuckDB asks for
    them: the interrupt lands inside DuckDB's call back into Python, where a real Ctrl-C can land while views are
    made (DuckDB then reported "reading the schema ... failed", and sql a damaged store)."""

    def __init__(self, dataset, ctrl_c: CtrlC):
        self.dataset, self.ctrl_c = dataset, ctrl_c

    def __arrow_c_stream__(self, requested_schema=None):
        self.ctrl_c()
        return self.dataset.to_table().__arrow_c_stream__(requested_schema)


def press_ctrl_c_while(point: str, monkeypatch) -> None:
    """Arrange one Ctrl-C at ``point`` of a `sql` run: while the files are checked, while DuckDB makes the views,
    or once the query is handed to DuckDB."""
    module, ctrl_c = sys.modules["genoembed.sql"], CtrlC()
    if point == "checking files":
        checksum = module.remembered_checksum
        monkeypatch.setattr(module, "remembered_checksum", lambda path: (ctrl_c(), checksum(path))[1])
    elif point == "making views":
        dataset = module._dataset
        monkeypatch.setattr(module, "_dataset", lambda paths: InterruptingRows(dataset(paths), ctrl_c))
    else:
        fetch = module._fetch
        monkeypatch.setattr(module, "_fetch", lambda *arguments: (ctrl_c(), fetch(*arguments))[1])


@pytest.fixture
def ctrl_c_handled():
    """Python's own SIGINT handler, for the test: a process started in the background by a non-interactive shell
    (`./.ci/run &`) inherits SIGINT ignored, and then no Ctrl-C reaches it at all."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


POINTS = ["checking files", "making views", "running the query"]


@pytest.mark.parametrize("point", POINTS)
def test_ctrl_c_interrupts_the_query_and_is_reraised(root, monkeypatch, ctrl_c_handled, point):
    """Ctrl-C at any point of a query (an endless one, with a 30 s timeout) is a KeyboardInterrupt once DuckDB has
    stopped: never a StoreError, never the timeout, no worker left running."""
    press_ctrl_c_while(point, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_sql(Store.open(root), ENDLESS, timeout=30)
    assert not [t for t in threading.enumerate() if t.name == "genoembed-sql" and t.is_alive()]


@pytest.mark.parametrize("point", POINTS)
def test_ctrl_c_of_genoembed_sql_says_interrupted_and_exits_130(root, monkeypatch, ctrl_c_handled, point):
    press_ctrl_c_while(point, monkeypatch)
    result = CliRunner().invoke(app, ["sql", str(root), ENDLESS, "--timeout", "30"])
    assert (result.exit_code, result.output) == (130, "genoembed: interrupted\n")


def test_timeout_must_be_positive(root):
    with pytest.raises(InputError, match="timeout"):
        run_sql(Store.open(root), "SELECT 1 AS one", timeout=0)


# --- 5, 6. messages -------------------------------------------------------------------------

def test_duckdb_hint_lines_are_kept_on_one_line(root):
    with pytest.raises(InputError) as caught:
        run_sql(Store.open(root), "SELECT * FROM tile")
    message = str(caught.value)
    assert "\n" not in message and 'Did you mean "tiles"' in message
    with pytest.raises(InputError, match='Candidate bindings: .*"start"'):
        run_sql(Store.open(root), "SELECT strat FROM tiles")


def test_shard_with_corrupt_footer_is_a_one_line_store_error(root):
    shard = root / "shards" / "part-00002.parquet"
    data = bytearray(shard.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    for position in range(len(data) - 8 - footer, len(data) - 8 - footer + 40):
        data[position] ^= 0x5A
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError) as caught:
        run_sql(Store.open(root), "SELECT count(*) FROM tiles")
    message = str(caught.value)
    assert "\n" not in message and "part-00002.parquet" in message and "genoembed verify" in message


# --- 7. statements that write: refused by construction, whatever wraps them ---------------------------------

def writing_statements(root: Path) -> list[str]:
    """Every kind of DuckDB statement that writes a file or changes the sandbox, alone and wrapped in the
    statements that run another one (EXPLAIN ANALYZE, PREPARE/EXECUTE, several in one string)."""
    shard, manifest = root / "shards" / "part-00000.parquet", root / "manifest.json"
    copy = f"COPY (SELECT 'owned' AS a) TO '{shard}' (FORMAT csv, USE_TMP_FILE false)"
    export = f"EXPORT DATABASE '{root / 'shards'}'"
    writes = [copy, f"COPY tiles TO '{manifest}' (FORMAT json)", export,
              f"ATTACH '{root / 'shards' / 'x.db'}' AS x", f"ATTACH '{manifest}' AS m",
              "INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true", "RESET enable_external_access",
              f"SET allowed_paths = ['{root}']", f"SET allowed_directories = ['{root}']",
              f"SET temp_directory = '{root / 'shards'}'", "PRAGMA enable_profiling = 'json'",
              f"SET profiling_output = '{shard}'", "SET lock_configuration = false",
              "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", "CREATE TABLE t AS SELECT 1 AS a",
              "CHECKPOINT", f"CALL pragma_version()"]
    wrapped = [f"EXPLAIN ANALYZE {copy}", f"EXPLAIN ANALYZE {export}", f"EXPLAIN {copy}",
               f"explain  analyse {copy}", f"EXPLAIN (ANALYZE) {copy}", f"EXPLAIN /* x */ ANALYZE {copy}",
               f"EXPLAIN ANALYZE (SELECT 1); {copy}", f"PREPARE p AS {copy}", "EXECUTE p",
               f"SELECT 1 AS one; {copy}", f"{copy}; SELECT 1 AS one", f"SELECT * FROM query('{copy.replace(chr(39), chr(39) * 2)}')",
               f"WITH x AS (SELECT 1) {copy}"]
    return writes + wrapped


def snapshot_of(root: Path) -> dict[str, bytes]:
    """Every file of the store (readers' leases aside: they are not the store's data), byte for byte."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and ".readers" not in path.parts}


def test_no_statement_writes_from_python_cli_or_http(root):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from genoembed.cli import app
    from genoembed.serve import ServedStore, create_app

    before = snapshot_of(root)
    client = TestClient(create_app({"s": ServedStore("s", root)}))
    runner = CliRunner()
    for statement in writing_statements(root):
        with pytest.raises((InputError, StoreError)):
            run_sql(Store.open(root), statement)
        result = runner.invoke(app, ["sql", str(root), statement])
        assert result.exit_code == 2 and "Traceback" not in result.output, (statement, result.output)
        response = client.post("/sql", json={"query": statement})
        assert response.status_code == 400, (statement, response.text)
        assert snapshot_of(root) == before, statement
    assert not list(root.parent.glob("*.db")) and not (root / "shards" / "x.db").exists()


def test_the_connection_itself_cannot_touch_a_file(root):
    """Below the statement check: the connection has no file access at all, so even a statement that got past
    it could neither write the store nor read anything outside the views."""
    import duckdb

    before = snapshot_of(root)
    con = connect(Store.open(root))
    for statement in [s for s in writing_statements(root) if ";" not in s and "query(" not in s] + \
            [f"SELECT * FROM read_parquet('{root / 'shards' / 'part-00000.parquet'}')",
             f"SELECT * FROM read_text('{root / 'manifest.json'}')"]:
        try:
            con.execute(statement)
        except duckdb.Error:
            continue
        assert statement.split()[0].upper() in {"CREATE", "CHECKPOINT", "CALL", "EXPLAIN", "PREPARE"}, statement
    assert snapshot_of(root) == before
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM tiles").column("n")[0].as_py() > 0


def test_float16_embeddings_read_as_float_lists(tmp_path):
    """Views scan Arrow: a float16 store's vectors come out as FLOAT[] (as DuckDB's Parquet reader gave them),
    equal to the stored values."""
    import numpy as np

    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.tiles import TilingSpec

    from conftest import PLASMID_FASTA

    store = index(PLASMID_FASTA, tmp_path / "s", embedder=KmerEmbedder(k=3), tiling=TilingSpec(strands="+"),
                  embedding_dtype="float16")
    rows = run_sql(store, "SELECT typeof(embedding) AS t, embedding FROM embeddings ORDER BY tile_id").to_pylist()
    stored = np.concatenate([vectors for _, vectors in store.iter_embeddings()])
    assert {row["t"] for row in rows} == {"FLOAT[]"}
    np.testing.assert_array_equal(np.array([row["embedding"] for row in rows], dtype=np.float32), stored)
