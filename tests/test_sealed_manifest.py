"""Manifest format 5 (issue 24): complete genomes sealed into immutable files, so an append writes the genome
being added, not every genome of the store, and stores of format 4 keep opening.

Each store here is also read cold (a copy at another path: nothing of it is cached in this process) and
compared with a store whose manifest never seals (one ``manifest.json``, as format 4 wrote it)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from genoembed.build import index
from genoembed.embedders import get_embedder
from genoembed.errors import StoreError
from genoembed.indexing import update_store_index
from genoembed.manifest import FORMAT_VERSION, MANIFEST, SEAL_GENOMES, SEALED
from genoembed.regions import Query
from genoembed.remove import remove
from genoembed.search import search
from genoembed.store import Store, write_lock
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec
from genoembed.verify import verify_store

from conftest import DATA

MANIFEST_MODULE = sys.modules["genoembed.manifest"]
# what tests/data/store_v4 was built with (tests/data/SOURCE.md)
TILING = TilingSpec(window=500, stride=250, strands="+")


def strain(folder, number):
    return write_fasta(folder / f"strain{number}.fa",
                       random_genome({"contig_1": 1500, "contig_2": 1000}, seed=100 + number))


def append(fasta, out, first=False):
    return index(fasta, out, embedder=get_embedder("kmer:3"), tiling=TILING, index_spec=IndexSpec("Flat"),
                 append=not first)


def build(folder, out, count):
    for number in range(count):
        store = append(strain(folder, number), out, first=number == 0)
    return store


def region(store: Store, genome: str) -> Query:
    return Query("q", store.genome(genome).fetch("contig_1", 0, 500))


def cold(store: Store, where) -> Store:
    """The store read by a reader that has cached nothing of it (a copy at another path)."""
    shutil.copytree(store.root, where)
    return Store.open(where)


def contents(store: Store) -> tuple:
    """What the manifest says about genomes and shards, and every row the shards hold."""
    rows = [batch.to_pylist() for batch in store.iter_batches(["tile_id", "genome", "chrom", "start", "end"])]
    vectors = np.concatenate([block for _ids, block in store.iter_embeddings()])
    return store.manifest["genomes"], store.manifest["shards"], rows, vectors.tobytes()


@pytest.fixture(scope="module")
def sealed_and_unsealed(tmp_path_factory):
    """20 genomes appended one at a time, sealed as they complete; and the same never sealed."""
    folder = tmp_path_factory.mktemp("sealed")
    sealed = build(folder, folder / "sealed", 20)
    patch = pytest.MonkeyPatch()
    patch.setattr(MANIFEST_MODULE, "SEAL_GENOMES", 10**9)
    unsealed = build(folder, folder / "unsealed", 20)
    patch.undo()
    return sealed, unsealed


def test_complete_genomes_are_sealed_and_folded(sealed_and_unsealed, tmp_path):
    sealed, unsealed = sealed_and_unsealed
    top = json.loads((sealed.root / MANIFEST).read_bytes())
    assert top["format_version"] == FORMAT_VERSION == 6
    assert len(top["genomes"]) < SEAL_GENOMES and len(top["shards"]) == len(top["genomes"])
    # 20 genomes in files of 16 and (none yet of) 8 genomes: a binary counter
    assert [entry["genomes"] for entry in top["sealed"]] == [16]
    assert len(json.loads((unsealed.root / MANIFEST).read_bytes())["genomes"]) == 20
    reread = cold(sealed, tmp_path / "copy")
    assert contents(reread) == contents(sealed) == contents(unsealed)
    assert list(reread.genomes) == [f"strain{n}" for n in range(20)]
    assert verify_store(reread) == [] and verify_store(sealed) == []


@pytest.mark.slow
def test_an_append_writes_the_same_manifest_bytes_however_large_the_store(tmp_path, monkeypatch):
    """The manifest work of an append is the new genome's, counted in bytes written: appends to a store of 4
    genomes and to one of 16 (sealing after 2, so neither append seals) write manifests that differ only by
    what lists the store's files in one line each (sealed files, index parts: O(log n)). Unsealed, the larger store's writes carry its 12 more genomes each time."""
    written = []
    real = MANIFEST_MODULE.atomic_write_bytes
    monkeypatch.setattr(MANIFEST_MODULE, "atomic_write_bytes",
                        lambda path, data: (written.append((path.name, len(data))), real(path, data))[1])

    def growth(seal_after: int, kind: str) -> tuple[list[int], int]:
        monkeypatch.setattr(MANIFEST_MODULE, "SEAL_GENOMES", seal_after)
        sizes, listing = {}, {}
        for count in (4, 16):
            out = tmp_path / f"{kind}{count}"
            build(tmp_path, out, count)
            written.clear()
            append(strain(tmp_path, count), out)
            assert [name for name, _ in written] == [MANIFEST] * 5  # join, sequence, shard, complete, index
            sizes[count] = [size for _, size in written]
            top = json.loads((out / MANIFEST).read_bytes())
            listing[count] = sum(len(json.dumps(value)) for value in
                                 (top["sealed"], top["index"]["parts"]))
        return [large - small for small, large in zip(sizes[4], sizes[16])], listing[16] - listing[4]

    sealed, listed = growth(2, "sealed")
    assert all(0 <= extra <= listed + 16 for extra in sealed) and listed < 1000, (sealed, listed)
    unsealed, _ = growth(10**9, "unsealed")
    entry = len(json.dumps(Store.open(tmp_path / "sealed16").genomes["strain3"]))
    assert all(extra >= 12 * entry for extra in unsealed), (unsealed, entry)


@pytest.mark.slow
def test_an_append_writes_as_many_manifest_bytes_at_40_genomes_as_at_10(tmp_path, monkeypatch):
    """Issue 24: the bytes one append writes to manifest.json at 10 genomes and at 40 are the same but for the
    two O(log n) lists of files (sealed files, index parts), counted and taken off, and a few digits of larger
    tile ids. Sealing after 2, both stores hold two sealed files ([8, 2] and [32, 8]) and no genome inline.
    An index entry that listed every genome's name wrote 30 names (~360 bytes) more at 40."""
    written = []
    real = MANIFEST_MODULE.atomic_write_bytes
    monkeypatch.setattr(MANIFEST_MODULE, "atomic_write_bytes",
                        lambda path, data: (written.append((path.name, data)), real(path, data))[1])
    monkeypatch.setattr(MANIFEST_MODULE, "SEAL_GENOMES", 2)
    out = tmp_path / "s"

    def appended(number: int) -> tuple[list[int], list[int]]:
        """(bytes of each manifest.json write of appending strain ``number``, less its lists of files; how many
        sealed files and index parts the last write lists)."""
        written.clear()
        append(strain(tmp_path, number), out)
        assert [name for name, _ in written] == [MANIFEST] * 5  # join, sequence, shard, complete, index
        sizes = []
        for _, data in written:
            top = json.loads(data)
            listings = (top["sealed"], (top["index"] or {}).get("parts", []))
            sizes.append(len(data) - sum(len(json.dumps(listing, separators=(",", ":"))) for listing in listings))
        assert "genomes" not in top["index"] and top["index"]["tile_ids_below"] == Store.open(out).id_limit
        return sizes, [len(listing) for listing in listings]

    build(tmp_path, out, 10)
    at_10, listed_10 = appended(10)
    for number in range(11, 40):
        append(strain(tmp_path, number), out)
    at_40, listed_40 = appended(40)
    assert len(Store.open(out).genomes) == 41
    assert all(abs(large - small) <= 16 for small, large in zip(at_10, at_40)), (at_10, at_40)
    assert max(listed_10 + listed_40) <= 6, (listed_10, listed_40)  # O(log n) lists of files


def test_removing_a_sealed_genome_or_its_contigs(sealed_and_unsealed, tmp_path):
    sealed, unsealed = sealed_and_unsealed
    stores = [Store.open(shutil.copytree(store.root, tmp_path / name)) for store, name in
              ((sealed, "sealed"), (unsealed, "unsealed"))]
    for store in stores:
        remove(store, "strain3")
        remove(Store.open(store.root), "strain12", ["contig_2"])
    reread = [cold(store, tmp_path / f"cold{number}") for number, store in enumerate(stores)]
    assert contents(reread[0]) == contents(reread[1])
    assert "strain3" not in reread[0].genomes
    assert reread[0].genomes["strain12"]["contig_lengths"] == {"contig_1": 1500}
    assert all(verify_store(store) == [] for store in reread)
    hits = search(reread[0], [region(reread[0], "strain12")], k=3, genome="strain12")
    assert hits.num_rows == 3 and set(hits["genome"].to_pylist()) == {"strain12"}


def test_a_long_lived_reader_caches_only_the_sealed_files_the_newest_snapshot_lists(tmp_path, monkeypatch):
    """Appends fold sealed files and removes dissolve them; a process that reads the store after each (a server)
    holds, in each of its caches of sealed files, those the newest manifest lists, not every one it ever read."""
    store_module = sys.modules["genoembed.store"]
    monkeypatch.setattr(MANIFEST_MODULE, "SEAL_GENOMES", 2)
    out = tmp_path / "s"
    folder = str(out / SEALED)

    def cached() -> list[set[str]]:
        return [{path for path in paths if path.startswith(folder)} for paths in (
            MANIFEST_MODULE._SEALED_FILES, {path for path, _ in MANIFEST_MODULE._SEALED_GENOME_FILES},
            {path for path, _ in store_module._SEALED_SHARDS_FOUND})]

    build(tmp_path, out, 4)
    ever = set()
    for number in range(4, 10):
        append(strain(tmp_path, number), out)
        if number % 2:  # strain1, strain3, strain5 lie in early sealed files: they and those after them dissolve
            remove(Store.open(out), f"strain{number - 4}")
        store = Store.open(out)
        listed = {str(out / descriptor["path"]) for descriptor in store.manifest["sealed"]}
        files, genome_files, shards_found = cached()
        assert files == shards_found == listed and genome_files <= listed, number
        ever |= set(map(str, (out / SEALED).glob("genomes-*.json"))) | files
    assert len(ever) > len(listed) + 3  # what the caches would hold without forgetting
    assert verify_store(store) == [] and len(store.genomes) == 7


def test_a_damaged_or_missing_sealed_file_is_one_line(sealed_and_unsealed, tmp_path):
    sealed, _ = sealed_and_unsealed
    top = json.loads((sealed.root / MANIFEST).read_bytes())
    path = top["sealed"][0]["path"]
    damaged = shutil.copytree(sealed.root, tmp_path / "damaged")
    data = bytearray((damaged / path).read_bytes())
    data[100] ^= 1
    (damaged / path).write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"{path}: sealed part of the manifest changed or is corrupt") as error:
        Store.open(damaged)
    assert "\n" not in str(error.value)
    (damaged / path).unlink()
    with pytest.raises(StoreError, match=f"{path}: cannot read this sealed part of the manifest"):
        Store.open(damaged)
    # a store opened before the damage: verify hashes the sealed files again
    store = Store.open(shutil.copytree(sealed.root, tmp_path / "opened"))
    (tmp_path / "opened" / path).write_bytes(bytes(data))
    assert f"{path}: sha256 differs from the manifest (sealed genomes)" in verify_store(store)


def test_a_writer_killed_between_the_sealed_file_and_the_manifest(tmp_path, monkeypatch):
    """Killed after writing a sealed file, before the manifest naming it: readers see the last commit, verify
    names the orphan, and the same append rerun leaves the store a clean build makes."""
    out = tmp_path / "s"
    build(tmp_path, out, SEAL_GENOMES - 1)  # the next append completes the eighth genome: it seals
    real = MANIFEST_MODULE.atomic_write_bytes

    def killed(path, data):
        if path.name == MANIFEST and any((out / SEALED).glob("genomes-*.json")):
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(MANIFEST_MODULE, "atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        append(strain(tmp_path, SEAL_GENOMES - 1), out)
    monkeypatch.undo()
    store = Store.open(out)
    assert len(store.genomes) == SEAL_GENOMES - 1 and not store.manifest["sealed"]
    assert f"{SEALED}/genomes-00000.json: not in the manifest (orphan of an interrupted write); delete it" \
        in verify_store(store)
    del store
    resumed = append(strain(tmp_path, SEAL_GENOMES - 1), out)
    clean = build(tmp_path, tmp_path / "clean", SEAL_GENOMES)
    assert contents(cold(resumed, tmp_path / "cold")) == contents(clean)
    assert verify_store(resumed) == [] and len(resumed.manifest["sealed"]) == 1


def test_a_dead_writers_partial_sealed_file_is_removed(sealed_and_unsealed, tmp_path):
    root = shutil.copytree(sealed_and_unsealed[0].root, tmp_path / "s")
    leftover = root / SEALED / ".genomes-00099.json.partial.99999"
    leftover.write_bytes(b"{half")
    assert any("partial file" in problem for problem in verify_store(Store.open(root)))
    with write_lock(root):
        pass
    assert not leftover.exists() and verify_store(Store.open(root)) == []


def test_format_4_store_opens_appends_and_verifies(tmp_path):
    """tests/data/store_v4: ten genomes appended one at a time by genoembed at format 4 (one manifest.json)."""
    old = Store.open(shutil.copytree(DATA / "store_v4", tmp_path / "store_v4"))
    assert old.manifest["format_version"] == FORMAT_VERSION and old.manifest["sealed"] == []
    assert len(old.genomes) == 10 and verify_store(old) == []
    hits = search(old, [region(old, "strain4")], k=2, genome="strain4")
    assert set(hits["genome"].to_pylist()) == {"strain4"}
    appended = append(strain(tmp_path, 10), old.root)  # the first writer seals the ten complete genomes
    top = json.loads((old.root / MANIFEST).read_bytes())
    assert top["format_version"] == FORMAT_VERSION and [entry["genomes"] for entry in top["sealed"]] == [10]
    assert verify_store(appended) == []
    clean = build(tmp_path, tmp_path / "clean", 11)
    assert contents(cold(appended, tmp_path / "cold"))[2:] == contents(clean)[2:]


@pytest.mark.parametrize("unlisted", [["strain8", "strain9"], []])
def test_an_index_genome_list_becomes_the_tile_ids_it_covers(tmp_path, unlisted):
    """Format 5 -> 6: ``index.genomes`` gives way to ``tile_ids_below``. Here the index holds strain0-7 only (its
    second part gone), as if the appends of strain8 and strain9 had not reached their index update: the bound
    comes from the first genome the list leaves out, or, when the list names them all (a genome sealed before
    its append indexed it), from the parts' id ranges. Either way the next update indexes exactly those two."""
    root = shutil.copytree(DATA / "store_v4", tmp_path / "store")
    top = json.loads((root / MANIFEST).read_bytes())
    index = top["index"]
    (root / index["parts"].pop()["path"]).unlink()
    index.update(ntotal=index["parts"][0]["ntotal"],
                 genomes=[name for name in top["genomes"] if name not in unlisted])
    (root / MANIFEST).write_text(json.dumps(top))
    store = Store.open(root)
    assert "genomes" not in store.manifest["index"] and store.manifest["index"]["tile_ids_below"] == \
        store.genomes["strain8"]["first_tile_id"] == 64
    assert f"{index['path']}: index does not cover genome(s) strain8, strain9; rerun `genoembed index` to " \
        "update it" in verify_store(store)
    update_store_index(store, IndexSpec("Flat"))
    store = Store.open(root)
    assert store.manifest["index"]["ntotal"] == store.num_tiles == 80 and verify_store(store) == []
    hits = search(store, [region(store, "strain9")], k=1, genome="strain9")
    assert hits["genome"].to_pylist() == ["strain9"] and hits["start"].to_pylist() == [0]
