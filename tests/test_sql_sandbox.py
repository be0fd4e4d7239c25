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
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

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


def outside_copy(root: Path, relative: str) -> Path:
    """A valid copy of one of the store's files, placed beside (outside) the store."""
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
    # the manifest's own check refuses an annotation path, a search's sidecar check a search path
    with pytest.raises(StoreError, match=rf"{name}.*(points outside the store|must describe {relative})"):
        run_sql(Store.open(root), "SELECT count(*) FROM annotations")


@pytest.mark.parametrize("relative", ["searches/a.parquet", "annotations/NC_000932.parquet",
                                      "shards/part-00000.parquet"])
def test_symlink_to_a_file_outside_the_store_is_refused(root, relative):
    target = outside_copy(root, relative)
    (root / relative).unlink()
    (root / relative).symlink_to(target)
    with pytest.raises(StoreError, match=rf"{relative}.*outside the store"):
        run_sql(Store.open(root), "SELECT 1 AS one")


def test_symlink_inside_the_store_is_fine(root):
    moved = root / "searches" / "moved.parquet"
    (root / "searches" / "a.parquet").rename(moved)
    (root / "searches" / "a.parquet").symlink_to(moved)
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM hits_a").to_pylist() == [{"n": 6}]


def test_changed_annotation_file_fails_its_sha256(root):
    path = root / "annotations" / "NC_000932.parquet"
    pq.write_table(pq.read_table(path).slice(0, 10), path)
    with pytest.raises(StoreError, match=r"NC_000932.parquet: sha256 differs.*genoembed verify"):
        run_sql(Store.open(root), "SELECT count(*) FROM annotations")


def test_search_sha256_is_checked_when_the_manifest_has_one(root):
    from genoembed.manifest import file_sha256

    edit_manifest(root, "searches", "a", sha256=file_sha256(root / "searches" / "a.parquet"))
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM hits_a").to_pylist() == [{"n": 6}]
    edit_manifest(root, "searches", "a", sha256="0" * 64)
    with pytest.raises(StoreError, match=r"a.parquet: sha256 differs"):
        run_sql(Store.open(root), "SELECT count(*) AS n FROM hits_a")


def test_search_name_that_is_not_an_identifier_is_refused(root):
    name = "x AS SELECT 1; SELECT 2 --"
    shutil.copy(root / "searches" / "a.parquet", root / "searches" / f"{name}.parquet")
    entry = json.loads((root / "searches" / "a.json").read_text())
    (root / "searches" / f"{name}.json").write_text(json.dumps({**entry, "path": f"searches/{name}.parquet"}))
    with pytest.raises(StoreError, match="search name 'x AS SELECT 1"):
        run_sql(Store.open(root), "SELECT 1 AS one")


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


def test_ctrl_c_interrupts_the_query_and_is_reraised(root):
    """Ctrl-C (simulated) stops a running query within seconds, not at its 30 s timeout.

    Python's own SIGINT handler is installed for the test: a process started in the background by a
    non-interactive shell (`./.ci/run &`) inherits SIGINT ignored, and then no Ctrl-C reaches it at all."""
    store = Store.open(root)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctrl_c = threading.Timer(0.5, _thread.interrupt_main)
    started = time.monotonic()
    ctrl_c.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sql(store, ENDLESS, timeout=30)
    finally:
        ctrl_c.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 15
    assert not [t for t in threading.enumerate() if t.name == "genoembed-sql" and t.is_alive()]


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
