"""Issue 16: a corrupt manifest is one clear error, and readers keep answering while a writer appends/removes.

* Manifest fuzz: hypothesis mutates a real store's manifest.json; opening, verifying, searching and SQL
  either work or raise a one-line :class:`GenoembedError`; the CLI exits 0/1/2 without a traceback.
* Chaos: reader threads (and spawned processes) search and query a store while a writer appends and
  removes a genome, and while a writer is SIGKILLed mid-append; the store ends equal to a clean build.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from genoembed.build import index
from genoembed.cli import app
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.errors import GenoembedError
from genoembed.remove import remove
from genoembed.search import Query, search
from genoembed.sql import run_sql
from genoembed.manifest import MANIFEST
from genoembed.store import Store
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec
from genoembed.verify import verify_store

TILING = TilingSpec(window=300, stride=150, strands="+")
EMBEDDER = KmerEmbedder(k=3)
SEQUENCE = "ACGT" * 100
LENGTHS = [{"a1": 6_000, "a2": 3_000}, {"b1": 5_000, "b2": 2_000}, {"c1": 4_000}]
ROUNDS = 40  # append + remove rounds under the reader threads (a few seconds)
ROWS_SQL = "SELECT genome, chrom, start, strand FROM tiles ORDER BY tile_id"


def build(fasta, out, append=False, shard_rows=40, **options):
    return index(fasta, out, embedder=EMBEDDER, tiling=TILING, index_spec=IndexSpec("Flat"), shard_rows=shard_rows,
                 batch_rows=40, append=append, **options)


def queries() -> list[Query]:
    genome = random_genome({"q": 2_000}, seed=99)["q"]
    return [Query(f"q{n}", genome[n * 400:n * 400 + 300]) for n in range(4)]


def answers(store: Store) -> list[tuple]:
    """What searching a store says, row for row (tile ids included: a clean build assigns the same ones)."""
    hits = search(store, queries(), k=5)
    return [(row["query"], row["rank"], row["tile_id"], row["genome"], row["chrom"], row["start"], row["strand"],
             round(row["score"], 5)) for row in hits.to_pylist()]


def rows(store: Store) -> list[dict]:
    return run_sql(store, ROWS_SQL).to_pylist()


@pytest.fixture(scope="module")
def fastas(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fastas")
    return [write_fasta(folder / f"g{n}.fa", random_genome(length, seed=n + 1)) for n, length in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def two_genomes(tmp_path_factory, fastas) -> Path:
    """A clean two-genome store (never written to by the tests: copy it first)."""
    out = tmp_path_factory.mktemp("clean") / "store"
    build(fastas[0], out)
    build(fastas[1], out, append=True)
    return out


def copy_store(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# --- 1. manifest fuzz ------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["abc", "2", "", "..", "/etc/passwd", "x/../.."])
    | st.floats(allow_nan=False, allow_infinity=False, width=32),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["a", "path", "rows"]),
                                                                       children, max_size=3),
    max_leaves=6)


def _containers(value, path=()):
    """Every (path, container) inside a JSON value, the value itself first."""
    yield path, value
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if isinstance(child, (dict, list)):
            yield from _containers(child, path + (key,))


@st.composite
def mutated_manifests(draw, original: dict) -> bytes:
    """One mutation of ``original``: a key deleted, a value replaced, the file truncated or not an object."""
    kind = draw(st.sampled_from(["delete", "replace", "replace", "replace", "truncate", "not_object", "version"]))
    text = json.dumps(original, indent=2)
    if kind == "truncate":
        return text[:draw(st.integers(0, len(text) - 1))].encode()
    if kind == "not_object":
        return json.dumps(draw(st.lists(JSON_VALUES, max_size=2) | st.integers() | st.text(max_size=5))).encode()
    manifest = json.loads(text)
    if kind == "version":
        manifest["format_version"] = draw(st.sampled_from([0, 1, 3, -1, "2", 2.0, None, True]))
        return json.dumps(manifest).encode()
    places = [(path, container) for path, container in _containers(manifest) if container]
    _path, container = draw(st.sampled_from(places))
    key = draw(st.sampled_from(sorted(container) if isinstance(container, dict) else range(len(container))))
    if kind == "delete":
        del container[key]
    else:
        container[key] = draw(JSON_VALUES)
    return json.dumps(manifest).encode()


def assert_one_line_or_works(action):
    try:
        action()
    except GenoembedError as error:
        assert "\n" not in str(error), str(error)


def exercise(root: Path):
    """Open, verify, search and query ``root``: each works or fails with a one-line GenoembedError; CLI too."""
    def everything():
        store = Store.open(root)
        assert_one_line_or_works(lambda: verify_store(store))
        assert_one_line_or_works(lambda: search(store, [Query("q", SEQUENCE)], k=2))
        assert_one_line_or_works(lambda: run_sql(store, "SELECT count(*) FROM tiles"))

    assert_one_line_or_works(everything)
    runner = CliRunner()
    for arguments in (["verify", str(root)], ["search", str(root), "--sequence", SEQUENCE, "-k", "2"]):
        result = runner.invoke(app, arguments)
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"{arguments[0]}: {result.exception!r}"
        assert result.exit_code in (0, 1, 2), (arguments[0], result.exit_code, output)
        assert "Traceback" not in output


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory, two_genomes) -> tuple[Path, dict]:
    root = copy_store(two_genomes, tmp_path_factory.mktemp("fuzz") / "store")
    return root, json.loads((root / MANIFEST).read_bytes())


# Cases the fuzz (and a sweep over every field) found: each was a traceback before the fixes in
# store.manifest_problems and sql._create_views.
REGRESSIONS = {
    "embedder kind a list": lambda m: m["provenance"]["embedder"].update(kind=[]),
    "kmer k a string": lambda m: m["provenance"]["embedder"].update(k="abc"),
    "kmer k null": lambda m: m["provenance"]["embedder"].update(k=None),
    "embedding_dtype unknown": lambda m: m["provenance"].update(embedding_dtype="2"),
    "embedding_dtype a list": lambda m: m["provenance"].update(embedding_dtype=[]),
    "no shards": lambda m: m.update(shards=[]),
    "shard sha256 missing": lambda m: m["shards"][0].pop("sha256"),
    "index.metric unknown": lambda m: m["index"].update(metric="abc"),
    "index.sha256 missing": lambda m: m["index"].pop("sha256"),
    "index.tile_ids_below a string": lambda m: m["index"].update(tile_ids_below="abc"),
    "index.tile_ids_below null": lambda m: m["index"].update(tile_ids_below=None),
    "index.tile_ids_below negative": lambda m: m["index"].update(tile_ids_below=-1),
    "index.parts a number": lambda m: m["index"].update(parts=3),
    "index.parts[0] outside the store": lambda m: m["index"]["parts"][0].update(path="../../etc/passwd"),
    "index.parts[0].ntotal a string": lambda m: m["index"]["parts"][0].update(ntotal="x"),
    "index.trained null": lambda m: m["index"].update(trained=None),
    "annotations null": lambda m: m.update(annotations=None),
    "annotations a list": lambda m: m.update(annotations=[]),
    # issue 25
    "tiling.window a string": lambda m: m["provenance"]["tiling"].update(window="abc"),
    "tiling empty": lambda m: m["provenance"].update(tiling={}),
    "annotation entry without rows": lambda m: m.update(annotations={"x": {"path": "annotations/x.parquet"}}),
    "dim 1e12": lambda m: m.update(dim=10**12),
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_manifest_regressions_are_one_line_errors(fuzz_store, case):
    root, original = fuzz_store
    manifest = json.loads(json.dumps(original))
    REGRESSIONS[case](manifest)
    try:
        (root / MANIFEST).write_text(json.dumps(manifest))
        exercise(root)
    finally:
        (root / MANIFEST).write_text(json.dumps(original, indent=2))
        shutil.rmtree(root / "searches", ignore_errors=True)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_manifest_is_a_one_line_error_or_works(fuzz_store, data):
    root, original = fuzz_store
    mutated = data.draw(mutated_manifests(original))
    try:
        (root / MANIFEST).write_bytes(mutated)
        exercise(root)
    finally:
        (root / MANIFEST).write_text(json.dumps(original, indent=2))
        shutil.rmtree(root / "searches", ignore_errors=True)


# --- 2. chaos: readers while a writer appends and removes --------------------------------------------------------

def read_once(root: Path) -> tuple[int, set[str], int]:
    """One reader call: (hits per query, genomes hit, tiles counted by SQL) from a freshly opened snapshot."""
    store = Store.open(root)
    complete = set(store.genomes)
    hits = search(store, [Query("q", SEQUENCE)], k=3)
    genomes = set(hits.column("genome").to_pylist())
    assert genomes <= complete | set(store.genomes), (genomes, complete)  # the snapshot search retried on
    count = run_sql(Store.open(root), "SELECT count(*) AS n FROM tiles").column("n")[0].as_py()
    return hits.num_rows, genomes, count


def test_readers_keep_answering_while_a_writer_appends_and_removes(tmp_path, fastas, two_genomes):
    root = copy_store(two_genomes, tmp_path / "store")
    stop, failures, answers_seen = threading.Event(), [], []
    counts = {Store.open(root).num_tiles}

    def reader():
        while not stop.is_set():
            try:
                answers_seen.append(read_once(root))
            except BaseException as error:  # noqa: BLE001 - every reader failure is the test's finding
                failures.append(repr(error))
                return

    def writer():
        try:
            for _round in range(ROUNDS):
                counts.add(build(fastas[2], root, append=True).num_tiles)
                remove(Store.open(root), "g2")
        except BaseException as error:  # noqa: BLE001
            failures.append(f"writer: {error!r}")
        finally:
            stop.set()

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    write = threading.Thread(target=writer)
    write.start()
    write.join()
    for thread in readers:
        thread.join()
    assert not failures, failures
    assert answers_seen
    for hits, genomes, count in answers_seen:
        assert hits == 3
        assert genomes <= {"g0", "g1", "g2"}
        assert count in counts
    store = Store.open(root)
    assert verify_store(store) == []
    clean = Store.open(two_genomes)
    assert rows(store) == rows(clean)
    assert answers(store) == answers(clean)


def _reader_process(root: str, stop, results) -> None:
    """A spawned reader: search and count until ``stop`` is set; report (ok, detail) per call."""
    while not stop.is_set():
        try:
            hits, _genomes, _count = read_once(Path(root))
            results.put(("ok", hits))
        except BaseException as error:  # noqa: BLE001
            results.put(("error", repr(error)))
            return


def _drain(results) -> list[tuple]:
    import queue

    seen = []
    while True:
        try:
            seen.append(results.get(timeout=0.05))
        except queue.Empty:
            return seen


WRITER = """
import sys
from genoembed.build import index
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec

def progress(done, total):
    print(done, flush=True)
    sys.stdin.readline()  # the test says when to go on (or kills this process)

index(sys.argv[1], sys.argv[2], embedder=KmerEmbedder(k=3), tiling=TilingSpec(window=300, stride=150, strands="+"),
      index_spec=IndexSpec("Flat"), shard_rows=40, batch_rows=40, append=True, progress=progress)
"""


@pytest.mark.slow
def test_process_readers_survive_appends_and_a_killed_writer(tmp_path, fastas, two_genomes):
    root = copy_store(two_genomes, tmp_path / "store")
    big = write_fasta(tmp_path / "big.fa", random_genome({"d1": 40_000}, seed=7))  # several shards
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    readers = [context.Process(target=_reader_process, args=(str(root), stop, results)) for _ in range(2)]
    for process in readers:
        process.start()
    seen = []
    try:
        seen += [results.get(timeout=120) for _ in readers]  # the readers are up and answering
        # an append (then a removal) under the reader processes
        build(fastas[2], root, append=True)
        remove(Store.open(root), "g2")
        # a writer killed after it committed at least one shard of the big genome
        with subprocess.Popen([sys.executable, "-c", WRITER, str(big), str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) as writer:
            while True:
                line = writer.stdout.readline()
                assert line, "the writer ended before writing a shard"
                manifest = json.loads((root / MANIFEST).read_bytes())
                if any(shard["genome"] == "big" for shard in manifest["shards"]):
                    break
                writer.stdin.write("go\n")
                writer.stdin.flush()
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        # readers still answer from the complete genomes (the killed writer's genome is hidden)
        hits, genomes, _count = read_once(root)
        assert hits == 3 and genomes <= {"g0", "g1"}
        assert "big" not in Store.open(root).genomes
        build(big, root, append=True)  # the same append, rerun: resumes and finishes
    finally:
        stop.set()
        while any(process.is_alive() for process in readers):  # drain first: a full queue blocks its writer
            seen += _drain(results)
            for process in readers:
                process.join(timeout=0.1)
    seen += _drain(results)
    assert all(process.exitcode == 0 for process in readers), [p.exitcode for p in readers]
    assert [detail for status, detail in seen if status == "error"] == []
    assert seen and all(hits == 3 for _status, hits in seen)
    store = Store.open(root)
    assert verify_store(store) == []
    clean = build(big, copy_store(two_genomes, tmp_path / "clean"), append=True)
    assert rows(store) == rows(clean)
    assert [row[3:] for row in answers(store)] == [row[3:] for row in answers(clean)]
