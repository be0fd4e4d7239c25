"""Issue 25: names that cannot traverse, outputs that cannot destroy, one writer, readers that survive `remove`,
saved searches never seen half-written.

Each test works on its own copy of a small two-genome store (random genomes, 3-mer embedder, Flat index).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from genoembed.annotate import add_annotations, annotate_hits
from genoembed.build import index
from genoembed.cli import app
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.errors import InputError, StoreError
from genoembed.remove import remove
from genoembed.search import Query, save_hits, search
from genoembed.sql import run_sql
from genoembed.store import Store, write_lock
from genoembed.subsets import resolve, tile_filter
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.tracks import similarity
from genoembed.vector_index import IndexSpec
from genoembed.verify import verify_store
from genoembed.writers import committed_files

TILING = TilingSpec(window=300, stride=150, strands="+")
EMBEDDER = KmerEmbedder(k=3)
LENGTHS = [{"a1": 6_000, "a2": 3_000}, {"b1": 5_000, "b2": 2_000}]
runner = CliRunner()


def build(fasta, out, append=False, **options):
    return index(fasta, out, embedder=EMBEDDER, tiling=TILING, index_spec=IndexSpec("Flat"), shard_rows=40,
                 batch_rows=40, append=append, **options)


@pytest.fixture(scope="module")
def fastas(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fastas")
    return [write_fasta(folder / f"g{n}.fa", random_genome(length, seed=n + 11)) for n, length in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, fastas) -> Path:
    out = tmp_path_factory.mktemp("clean") / "store"
    build(fastas[0], out)
    build(fastas[1], out, append=True)
    search(Store.open(out), ["a1:1-300"], k=3, save_as="kept")
    return out


@pytest.fixture
def root(clean, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(clean, copy, ignore=shutil.ignore_patterns(".readers", ".lock"))
    return copy


@pytest.fixture
def bed(tmp_path) -> Path:
    path = tmp_path / "features.bed"
    path.write_text("a1\t100\t900\tgeneA\t0\t+\na1\t1200\t1700\tgeneB\t0\t-\n")  # genome g0's contig
    return path


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file of a store (readers' leases aside)."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and ".readers" not in path.parts}


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genoembed: error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --- finding 2: names are identifiers --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../other/shards/part-00000", "x;DROP TABLE", "a b", "1abc", "", "x" * 64,
                                  "séance"])
def test_annotation_and_search_names_that_are_not_identifiers_are_refused(root, tmp_path, bed, name):
    other = tmp_path / "other"
    shutil.copytree(root, other)
    before, other_before = digest(root), digest(other)
    one_line_error(runner.invoke(app, ["annotate", str(root), str(bed), "--name", name]), "annotation set name")
    one_line_error(runner.invoke(app, ["search", str(root), "--region", "a1:1-300", "--name", name]), "search name")
    assert digest(root) == before and digest(other) == other_before
    with pytest.raises(InputError, match="search name"):
        search(Store.open(root), ["a1:1-300"], k=2, save_as=name)


@pytest.mark.parametrize("name", ["../x", "a/b", "-x", ".hidden", "x;y", "a b"])
def test_genome_names_are_one_word(tmp_path, fastas, name):
    result = runner.invoke(app, ["index", "--fasta", str(fastas[0]), "--output", str(tmp_path / "s"),
                                 "--model", "kmer:3", "--genome-name", name, "--factory", "Flat", "-q"])
    one_line_error(result, "genome name", "--genome-name")
    assert not (tmp_path / "s").exists()


def test_annotation_set_names_from_file_names_are_identifiers(root, tmp_path, bed):
    odd = tmp_path / "1000 genomes-v2.bed"
    shutil.copy(bed, odd)
    entry = add_annotations(Store.open(root), odd)
    assert re.fullmatch(r"annotations/_1000_genomes_v2\.[0-9a-f]{16}\.parquet", entry["path"])


# --- finding 3: outputs never destroy what is not theirs -------------------------------------------------------

def test_index_output_must_be_new_empty_or_a_store(tmp_path, fastas):
    base = ["index", "--fasta", str(fastas[0]), "--model", "kmer:3", "--factory", "Flat", "-q"]
    busy = tmp_path / "busy"
    (busy / "index").mkdir(parents=True)
    (busy / "shards").mkdir()
    for keep in (busy / "notes.txt", busy / "index" / "mine.txt", busy / "shards" / "part-00000.parquet"):
        keep.write_text("mine")
    for flags in ([], ["--overwrite"]):
        one_line_error(runner.invoke(app, base + ["--output", str(busy)] + flags), "holds other files")
    assert sorted(p.relative_to(busy).as_posix() for p in busy.rglob("*") if p.is_file()) == \
        ["index/mine.txt", "notes.txt", "shards/part-00000.parquet"]
    for place in ("/", str(Path.home())):
        one_line_error(runner.invoke(app, base + ["--output", place, "--overwrite"]), "root or home directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, base + ["--output", str(empty)]).exit_code == 0
    one_line_error(runner.invoke(app, base + ["--output", str(empty / "shards" / "inner")]), "inside the store")


def test_overwrite_never_deletes_its_own_input(root, fastas):
    inside = root / "index" / "g.fa"
    shutil.copy(fastas[0], inside)
    result = runner.invoke(app, ["index", "--fasta", str(inside), "--output", str(root), "--model", "kmer:3",
                                 "--factory", "Flat", "--overwrite", "-q"])
    one_line_error(result, "g.fa: an input inside the store")
    assert inside.read_bytes() == fastas[0].read_bytes()


def test_a_reader_of_the_old_store_survives_index_overwrite(root, fastas, tmp_path):
    """`index --overwrite` retires the old store's files instead of deleting them: a reader of the old store
    finishes on its snapshot (search, SQL, its genome's sequence); the new store equals a clean build and, once
    no reader is left, holds nothing else."""
    reader = Store.open(root)
    old_files = {path for path in root.rglob("*") if path.is_file() and path.parts[-2] in ("shards", "index")}
    tiles = run_sql(reader, "SELECT count(*) AS n FROM tiles").column("n")[0].as_py()
    vector = reader.embedder().embed(["ACGT" * 75])[0]
    result = runner.invoke(app, ["index", "--fasta", str(fastas[1]), "--output", str(root), "--model", "kmer:3",
                                 "--window", "300", "--stride", "150", "--strands", "+", "--factory", "Flat",
                                 "--shard-rows", "40", "--batch-rows", "40", "--overwrite", "-q"])
    assert result.exit_code == 0, result.output
    assert all(path.is_file() for path in old_files)  # kept: the reader's snapshot lists them
    # the reader answers from the old store: both genomes, its shards, its index, its sequences
    assert set(search(reader, ["a1:1-300"], k=3)["genome"].to_pylist()) <= {"g0", "g1"}
    assert run_sql(reader, "SELECT count(*) AS n FROM tiles").column("n")[0].as_py() == tiles
    assert similarity(reader, vector, "g0").num_rows > 0
    del reader
    with write_lock(root):  # the next writer deletes what no reader holds
        pass
    clean = build(fastas[1], tmp_path / "clean")
    query = "SELECT * FROM tiles ORDER BY tile_id"
    assert run_sql(Store.open(root), query).equals(run_sql(clean, query))
    assert list(Store.open(root).genomes) == ["g1"] and verify_store(Store.open(root)) == []
    listed = committed_files(Store.open(root).manifest)
    on_disk = {path.relative_to(root).as_posix() for folder in ("shards", "index", "annotations")
               for path in (root / folder).glob("*") if path.is_file()}
    assert on_disk == {path for path in listed if path.split("/")[0] in ("shards", "index", "annotations")}


def test_no_verb_writes_into_any_store(root, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(root, other)
    before = digest(other)
    link = tmp_path / "link"
    link.symlink_to(other / "shards")
    attempts = [["sql", str(root), "SELECT 1 AS one", "--output", str(other / "manifest.json")],
                ["sql", str(root), "SELECT 1 AS one", "-f", "parquet", "-o", str(link / "part-00000.parquet")],
                ["track", str(root), "-r", "a1:1-300", "-o", str(other / "shards" / "part-00000.parquet")],
                ["search", str(root), "--region", "a1:1-300", "--no-save", "-o", str(other / "index" / "x.tsv")],
                ["plot", "embeddings", str(root), "-o", str(root / "pca.png")],
                ["explain", str(root), "--region", "a1:1-300", "--hit", "a1:301-600", "-o", str(other / "x")]]
    for words in attempts:
        one_line_error(runner.invoke(app, words), "inside the store")
    assert digest(other) == before
    assert not (root / "pca.png").exists()


# --- finding 5: one writer, whatever happened to the last one ---------------------------------------------------

CONTENDER = """
import json, os, sys, time
from pathlib import Path
from genoembed.errors import StoreError
from genoembed.store import write_lock
root, go, out, rounds = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
held = []
for number in range(rounds):
    while not (go / str(number)).exists():
        time.sleep(0.001)
    try:
        with write_lock(root):  # waits its turn (a moment) or is refused; never shares it
            start = time.monotonic_ns()
            time.sleep(0.02)
            held.append((start, time.monotonic_ns()))
    except StoreError:
        pass
    (go / f"{number}.{os.getpid()}").touch()
out.write_text(json.dumps(held))
"""


@pytest.mark.slow
def test_contenders_on_a_stale_lock_never_hold_it_together(root, tmp_path):
    """Six processes released at once onto a lock left by a dead writer (its PID recorded, or reused by a live
    process), round after round: never two holders at a time, and each takes it in turn."""
    go, contenders, rounds = tmp_path / "go", 6, 8
    go.mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(root), str(go), str(tmp_path / f"{n}.json"),
                                 str(rounds)]) for n in range(contenders)]
    try:
        for number in range(rounds):
            (root / ".lock").write_text(str(os.getppid() if number % 2 else 999_999_999))  # live or dead PID
            (go / str(number)).touch()
            deadline = time.monotonic() + 60
            while len(list(go.glob(f"{number}.*"))) < contenders:
                assert time.monotonic() < deadline and all(w.poll() in (None, 0) for w in workers)
                time.sleep(0.01)
    finally:
        for worker in workers:
            assert worker.wait(60) == 0
    spans = sorted(tuple(span) for n in range(contenders) for span in json.loads((tmp_path / f"{n}.json").read_text()))
    assert len(spans) == rounds * contenders
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:])), "two writers held the lock"


# --- finding 4: every write under the lock, re-annotating asks for --replace -------------------------------------

def test_annotate_writes_nothing_while_another_writer_holds_the_lock(root, bed):
    add_annotations(Store.open(root), bed, name="genes")
    before = digest(root)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from genoembed.store import write_lock\n"
                               "with write_lock(Path(sys.argv[1])):\n print('held', flush=True); sys.stdin.read()",
                               str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        result = runner.invoke(app, ["annotate", str(root), str(bed), "--name", "genes", "--replace"])
        one_line_error(result, f"being written by process {holder.pid}")
    finally:
        holder.communicate("")
    assert digest(root) == before
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM annotations").column("n")[0].as_py() == 2


def test_reannotating_a_name_needs_replace(root, bed, tmp_path):
    assert runner.invoke(app, ["annotate", str(root), str(bed), "--name", "genes"]).exit_code == 0
    one_line_error(runner.invoke(app, ["annotate", str(root), str(bed), "--name", "genes"]),
                   "annotation set 'genes' exists; pass --replace")
    fewer = tmp_path / "fewer.bed"
    fewer.write_text(bed.read_text().splitlines()[0] + "\n")
    assert runner.invoke(app, ["annotate", str(root), str(fewer), "--name", "genes", "--replace"]).exit_code == 0
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM annotations").column("n")[0].as_py() == 1


def test_concurrent_annotates_one_wins_the_other_says_why(root, bed):
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def annotate(number: int) -> None:
        barrier.wait()
        try:
            add_annotations(Store.open(root), bed, name="genes")
            outcomes.append("added")
        except (InputError, StoreError) as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=annotate, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("added") == 1, outcomes
    refused = next(o for o in outcomes if o != "added")
    assert "annotation set 'genes' exists; pass --replace" in refused or "being written by process" in refused
    assert verify_store(Store.open(root)) == []


def overlapping_names(hits, features: list[tuple[str, int, int, str]]) -> list[str | None]:
    """Oracle: per hit, the sorted names of the features (chrom, start, end, name; genome g0) it overlaps."""
    names = []
    for genome, chrom, start, end in zip(*(hits[c].to_pylist() for c in ("genome", "chrom", "start", "end"))):
        found = sorted({name for c, s, e, name in features if genome == "g0" and c == chrom and s < end and start < e})
        names.append(", ".join(found) or None)
    return names


def test_a_reader_of_the_old_annotation_set_survives_reannotation(root, bed, tmp_path):
    """Re-annotating a name writes a new file and switches the manifest: a reader opened before finishes its
    annotated search and SQL joins on the old set, a new reader sees the new one, and the old file is deleted
    once no reader holds it (nothing else left behind)."""
    old_features = [("a1", 100, 900, "geneA"), ("a1", 1200, 1700, "geneB")]
    add_annotations(Store.open(root), bed, name="genes")
    hits = search(Store.open(root), ["a1:1-1000", "a1:1101-1400"], k=4, save_as="mine")
    expected = {(q, r, n) for q, r, names in zip(hits["query"].to_pylist(), hits["rank"].to_pylist(),
                                                 overlapping_names(hits, old_features)) if names
                for n in names.split(", ")}
    assert {n for _, _, n in expected} == {"geneA", "geneB"}
    reader = Store.open(root)
    old_file = root / reader.manifest["annotations"]["genes"]["path"]
    fewer = tmp_path / "fewer.bed"
    fewer.write_text("a1\t2000\t2500\tgeneC\t0\t+\n")
    result = runner.invoke(app, ["annotate", str(root), str(fewer), "--name", "genes", "--replace"])
    assert result.exit_code == 0, result.output
    assert old_file.is_file()  # kept: the reader's snapshot lists it
    # the reader's first annotated search and its joins read the old set, whole
    assert annotate_hits(reader, hits)["overlapping"].to_pylist() == overlapping_names(hits, old_features)
    joined = run_sql(reader, "SELECT query, rank, feature_name FROM hit_features_mine")
    assert set(zip(*(joined[c].to_pylist() for c in joined.column_names))) == expected
    assert run_sql(reader, "SELECT count(*) AS n FROM annotations").column("n")[0].as_py() == 2
    # a new reader sees the new set
    fresh = Store.open(root)
    assert run_sql(fresh, "SELECT name FROM annotations").column("name").to_pylist() == ["geneC"]
    assert annotate_hits(fresh, hits)["overlapping"].to_pylist() == \
        overlapping_names(hits, [("a1", 2000, 2500, "geneC")])
    del reader, fresh
    with write_lock(root):  # the next writer deletes what no reader holds
        pass
    assert not old_file.exists()
    listed = {entry["path"] for entry in Store.open(root).manifest["annotations"].values()}
    assert {f"annotations/{path.name}" for path in (root / "annotations").iterdir()} == listed
    assert verify_store(Store.open(root)) == []


def test_an_annotation_set_of_an_older_store_under_its_fixed_name_reads_and_is_replaced(root, bed, tmp_path):
    """Stores written before versioned annotation files list ``annotations/NAME.parquet``: read as they are, and
    a replacement retires that file like any other version."""
    add_annotations(Store.open(root), bed, name="genes")
    manifest = json.loads((root / "manifest.json").read_text())
    versioned = root / manifest["annotations"]["genes"]["path"]
    versioned.rename(root / "annotations" / "genes.parquet")
    manifest["annotations"]["genes"]["path"] = "annotations/genes.parquet"
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert verify_store(Store.open(root)) == []
    reader = Store.open(root)
    assert run_sql(reader, "SELECT count(*) AS n FROM annotations").column("n")[0].as_py() == 2
    fewer = tmp_path / "fewer.bed"
    fewer.write_text(bed.read_text().splitlines()[0] + "\n")
    add_annotations(Store.open(root), fewer, name="genes", replace=True)
    assert run_sql(reader, "SELECT count(*) AS n FROM annotations").column("n")[0].as_py() == 2  # its snapshot
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM annotations").column("n")[0].as_py() == 1
    del reader
    with write_lock(root):
        pass
    assert not (root / "annotations" / "genes.parquet").exists()
    assert verify_store(Store.open(root)) == []


# --- finding 7: remove keeps what readers of older snapshots read -----------------------------------------------

def test_a_reader_of_the_old_snapshot_survives_remove(root):
    reader = Store.open(root)
    old_shards = list(reader.shard_paths)
    remove(Store.open(root), "g1", contigs=["b1"])
    assert all(path.is_file() for path in old_shards)  # kept: this reader may still read them
    # everything the reader's snapshot answers still answers, and the same way (genome filter, tracks, SQL)
    on_b1 = run_sql(reader, "SELECT count(*) AS n FROM tiles WHERE genome = 'g1' AND chrom = 'b1'").column("n")[0]
    assert resolve(reader, tile_filter("g1", ["b1"])).size == on_b1.as_py() > 0  # read from the old shards
    vector = reader.embedder().embed(["ACGT" * 75])[0]
    assert similarity(reader, vector, "g1").num_rows > 0
    assert run_sql(reader, "SELECT count(*) AS n FROM tiles").column("n")[0].as_py() == reader.num_tiles
    del reader
    with write_lock(root):  # the next writer deletes what no reader holds
        pass
    current = {path for path in Store.open(root).shard_paths}
    assert [path for path in old_shards if path.is_file() and path not in current] == []
    assert verify_store(Store.open(root)) == []


@contextlib.contextmanager
def clock_off_by(monkeypatch, skew_ns: int):
    """This process's clock ``skew_ns`` off the file server's (time.time_ns is what a lease would have used)."""
    real = time.time_ns
    with monkeypatch.context() as host:
        host.setattr(time, "time_ns", lambda: real() + skew_ns)
        yield


def test_leases_and_retirements_compare_on_the_file_systems_clock(root, monkeypatch):
    """A store shared by hosts whose clocks differ (NFS): a reader on a host an hour ahead of the writer's, then
    one on a host an hour behind. Retired shards are kept while the reader holds the old snapshot and deleted
    once it lets go (ahead) or moves on to the new snapshot (behind): only the file system's times compare."""
    hour = 3600 * 10**9

    def retired_by(removal) -> list[Path]:
        before = list(Store.open(root).shard_paths)
        removal(Store.open(root))  # the writer, on the file server's time
        return [path for path in before if path not in set(Store.open(root).shard_paths)]

    with clock_off_by(monkeypatch, +hour):
        ahead = Store.open(root)
    retired = retired_by(lambda store: remove(store, "g1", contigs=["b1"]))
    assert retired and all(path.is_file() for path in retired)  # the reader ahead may still read them
    del ahead
    with write_lock(root):  # the next writer deletes what no reader holds
        pass
    assert not [path for path in retired if path.is_file()]

    with clock_off_by(monkeypatch, -hour):
        behind = Store.open(root)
    retired = retired_by(lambda store: remove(store, "g1"))
    assert retired and all(path.is_file() for path in retired)
    time.sleep(0.05)  # past the file system's timestamp granularity (a clock tick)
    with clock_off_by(monkeypatch, -hour):
        behind.refresh()  # moves on to the snapshot without them
    with write_lock(root):
        pass
    assert not [path for path in retired if path.is_file()]
    assert run_sql(behind, "SELECT count(*) AS n FROM tiles").column("n")[0].as_py() == behind.num_tiles


def test_a_killed_readers_lease_keeps_nothing(root):
    """A reader SIGKILLed with the store open leaves its lease file, but the kernel dropped its lock: the next
    remove deletes the old shards at once and the dead lease with them."""
    reader = subprocess.Popen([sys.executable, "-c", "import os, signal, sys\nfrom genoembed.store import Store\n"
                               "store = Store.open(sys.argv[1])\nprint('open', flush=True)\n"
                               "os.kill(os.getpid(), signal.SIGKILL)", str(root)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline() == "open\n"
    reader.communicate()
    assert list((root / ".readers").glob("*.lease"))
    remove(Store.open(root), "g1", contigs=["b1"])
    assert set((root / "shards").glob("part-*.parquet")) == set(Store.open(root).shard_paths)
    assert not [lease for lease in (root / ".readers").glob("*.lease") if lease.name.startswith(f"{reader.pid}.")]


def test_genome_filtered_searches_and_tracks_keep_answering_while_a_writer_removes(root, fastas, tmp_path):
    """Finding 7 under load: readers keep a snapshot for a while (as a server request or a track does) while a
    writer appends and removes a genome; no reader call fails."""
    stop, failures, calls = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                store = Store.open(root)
                vector = store.embedder().embed(["ACGT" * 75])[0]
                time.sleep(0.01)  # the writer commits meanwhile
                search(store, [Query("q", "ACGT" * 75)], k=3, genome="g0")
                similarity(store, vector, "g0")
                run_sql(store, "SELECT count(*) FROM tiles WHERE genome = 'g0'")
                calls.append(1)
            except BaseException as error:  # noqa: BLE001 - every reader failure is the finding
                failures.append(repr(error))
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _round in range(6):
            remove(Store.open(root), "g1")
            build(fastas[1], root, append=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    assert calls


# --- findings 6/8: saved searches are switched whole; a damaged one blocks only itself ----------------------------

def test_a_reader_never_pairs_a_sidecar_with_another_searchs_hits(root):
    reader = Store.open(root)
    entry = reader.searches()["kept"]
    save_hits(Store.open(root), search(Store.open(root), ["b1:1-300"], k=4), "kept", {})
    # the reader's sidecar still names its own version, unchanged
    path = root / entry["path"]
    assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert Store.open(root).searches()["kept"]["path"] != entry["path"]
    assert run_sql(Store.open(root), "SELECT count(*) AS n FROM hits_kept").column("n")[0].as_py() == 4


def test_parallel_searches_and_sql_on_an_annotated_store(root, bed):
    add_annotations(Store.open(root), bed, name="genes")
    failures, barrier = [], threading.Barrier(6)

    def worker(number: int) -> None:
        barrier.wait()
        try:
            for _ in range(6):
                if number % 2:
                    run_sql(Store.open(root), "SELECT count(*) FROM hits JOIN hit_features USING (query, rank)")
                else:
                    save_hits(Store.open(root), search(Store.open(root), [f"a1:{number * 300 + 1}-{number * 300 + 300}"],
                                                       k=3), "last", {})
        except BaseException as error:  # noqa: BLE001
            failures.append(repr(error))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    with write_lock(root):
        pass
    assert len(list((root / "searches").glob("last.*.parquet"))) == 1  # old versions swept once no reader holds them


@pytest.mark.parametrize("leased", [True, False])
def test_sql_retries_a_switched_search_only_for_a_reader_without_a_lease(root, monkeypatch, leased):
    """Between making its views and running its query, a reader's `last` is switched by a save and swept. With a
    lease the version it reads is kept and the query runs once; a reader that could take no lease (here `.readers`
    cannot be made; in life, a store another user writes) loses it, and run_sql answers from the new version."""
    if not leased:
        (root / ".readers").write_text("not a folder")
    save_hits(Store.open(root), search(Store.open(root), ["a1:1-300"], k=2), "last", {})
    reader = Store.open(root)
    assert reader.protected is leased
    module, connects = sys.modules["genoembed.sql"], []
    connect_files = module.connect_files

    def connect_then_switch(*arguments):
        con = connect_files(*arguments)
        if not connects:  # once: a later save switches `last`, and a writer sweeps
            old = root / reader.searches()["last"]["path"]
            save_hits(Store.open(root), search(Store.open(root), ["b1:1-300"], k=5), "last", {})
            with write_lock(root):
                pass
            assert old.exists() is leased
        connects.append(1)
        return con

    monkeypatch.setattr(module, "connect_files", connect_then_switch)
    rows = run_sql(reader, "SELECT count(*) AS n FROM hits").column("n")[0].as_py()
    assert (rows, len(connects)) == ((2, 1) if leased else (5, 2))


def test_a_damaged_saved_search_blocks_only_itself(root):
    assert runner.invoke(app, ["search", str(root), "--region", "a1:1-300"]).exit_code == 0
    last = json.loads((root / "searches" / "last.json").read_text())
    (root / last["path"]).write_bytes(b"not parquet")
    result = runner.invoke(app, ["search", str(root), "--region", "a1:301-600", "--no-save"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["sql", str(root), "SELECT count(*) FROM hits_kept"]).exit_code == 0
    one_line_error(runner.invoke(app, ["sql", str(root), "SELECT count(*) FROM hits"]),
                   "saved search 'last' cannot be read", "sha256 differs")
    (root / "searches" / "kept.json").write_text("{broken")
    assert runner.invoke(app, ["sql", str(root), "SELECT count(*) FROM tiles"]).exit_code == 0
    problems = verify_store(Store.open(root))  # verify names both
    assert any("kept.json: unreadable sidecar" in problem for problem in problems), problems
    assert any(last["path"] in problem and "sha256 differs" in problem for problem in problems), problems
    # a new search of that name replaces the damaged one
    assert runner.invoke(app, ["search", str(root), "--region", "a1:301-600"]).exit_code == 0
    assert runner.invoke(app, ["sql", str(root), "SELECT count(*) FROM hits"]).exit_code == 0


def test_a_readers_saved_search_version_stays_while_saves_switch_it(root):
    """Many threads of one process save `last` (the same hits again and again) while readers hold the version its
    sidecar named: every held version stays readable and unchanged for as long as its reader's store is open,
    and once no reader is left one version remains. Before the fix the sweep dated a version by when it first saw
    it unnamed, which could be a save in flight (or an earlier life of a name made from the content) older than
    the reader that later read it, and deleted it under that reader."""
    opened = Store.open(root)
    answers = [search(opened, [f"a1:{start}-{start + 299}"], k=3) for start in (1, 1501, 3001)]
    del opened
    failures, barrier = [], threading.Barrier(8)

    def saver(number: int) -> None:
        barrier.wait()
        try:
            for turn in range(40):
                save_hits(Store.open(root), answers[(number + turn) % len(answers)], "last", {})
        except BaseException as error:  # noqa: BLE001 - every failure is the finding
            failures.append(f"save: {error!r}")

    def reader() -> None:
        barrier.wait()
        try:
            for turn in range(40):
                store = Store.open(root)
                entry = store.searches()["last"]
                time.sleep(0.005)  # savers switch `last` and sweep meanwhile
                path = root / entry["path"]
                assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], entry["path"]
                assert pq.read_table(path).num_rows == entry["rows"]
                if turn == 20:  # SQL reads the version named when it starts, kept by this reader's lease
                    assert run_sql(store, "SELECT count(*) AS n FROM hits").column("n")[0].as_py() == 3
        except BaseException as error:  # noqa: BLE001
            failures.append(f"read: {error!r}")

    save_hits(Store.open(root), answers[0], "last", {})
    threads = [threading.Thread(target=saver, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    with write_lock(root):
        pass
    assert len(list((root / "searches").glob("last.*.parquet"))) == 1
    assert verify_store(Store.open(root)) == []
