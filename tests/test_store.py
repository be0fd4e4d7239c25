import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from genoembed import schema
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.errors import StoreError
from genoembed.genome import open_genome
from genoembed.build import index
from genoembed.manifest import file_sha256
from genoembed.store import PROVENANCE_KEY, Store, write_lock
from genoembed.store_writer import StoreWriter, genome_entry
from genoembed.tiles import TilingSpec, plan_tiles

from conftest import PLASMID_FASTA


def build(out, **options):
    options.setdefault("embedder", KmerEmbedder(k=3, canonical=False))  # strand-specific: both strands are tiled
    options.setdefault("tiling", TilingSpec(window=500, stride=250, strands="both"))
    return index(PLASMID_FASTA, out, shard_rows=options.pop("shard_rows", 16), **options)


def all_rows(store):
    return [batch for batch in store.iter_batches()]


def test_shards_hold_every_tile_with_embeddings_and_provenance(tmp_path):
    store = build(tmp_path / "s")
    genome = open_genome(PLASMID_FASTA)
    planned = [b for b in plan_tiles(genome, TilingSpec(window=500, stride=250, strands="both"))]
    expected_ids = np.concatenate([b.column("tile_id").to_numpy() for b in planned])
    assert store.num_tiles == len(expected_ids) == sum(s["rows"] for s in store.manifest["shards"])
    assert len(store.manifest["shards"]) == -(-len(expected_ids) // 16)
    ids = np.concatenate([ids for ids, _ in store.iter_embeddings()])
    np.testing.assert_array_equal(ids, expected_ids)
    # the stored vectors are exactly what the embedder gives for the planned sequences
    sequences = [s for b in planned for s in b.column(schema.SEQUENCE).to_pylist()]
    vectors = np.concatenate([v for _, v in store.iter_embeddings(batch_rows=7)])
    np.testing.assert_allclose(vectors, KmerEmbedder(k=3, canonical=False).embed(sequences), rtol=1e-6)
    for shard in store.manifest["shards"]:
        path = store.root / shard["path"]
        assert file_sha256(path) == shard["sha256"]
        metadata = pq.read_schema(path).metadata
        provenance = json.loads(metadata[PROVENANCE_KEY])
        assert provenance["embedder"]["fingerprint"] == KmerEmbedder(k=3, canonical=False).fingerprint
        assert provenance["genome"]["sha256"] == genome.checksum
        assert provenance["tiling"]["window"] == 500
    assert pq.read_schema(store.shard_paths[0]).field(schema.EMBEDDING).type.list_size == 64


def test_shard_size_does_not_change_rows(tmp_path):
    small = build(tmp_path / "a", shard_rows=5)
    large = build(tmp_path / "b", shard_rows=1000)
    a = np.concatenate([v for _, v in small.iter_embeddings()])
    b = np.concatenate([v for _, v in large.iter_embeddings()])
    np.testing.assert_array_equal(a, b)


class CrashingEmbedder(KmerEmbedder):
    """Fails after a given number of calls, like a killed GPU job."""

    def __init__(self, fail_after):
        super().__init__(k=3, canonical=False)
        self.calls = 0
        self.fail_after = fail_after

    def embed(self, sequences):
        self.calls += 1
        if self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        return super().embed(sequences)


def test_interrupted_build_resumes_to_identical_store(tmp_path):
    reference = build(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "crash", embedder=CrashingEmbedder(fail_after=3), batch_rows=10)
    with pytest.raises(StoreError, match="incomplete"):
        Store.open(tmp_path / "crash")
    partial = json.loads((tmp_path / "crash" / "manifest.json").read_text())
    assert partial["status"] == "building" and 0 < sum(s["rows"] for s in partial["shards"]) < reference.num_tiles
    resumed = build(tmp_path / "crash", batch_rows=10)
    assert resumed.num_tiles == reference.num_tiles
    for (ids_a, a), (ids_b, b) in zip(reference.iter_embeddings(), resumed.iter_embeddings()):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(a, b)
    assert not list((tmp_path / "crash").rglob("*.partial.*"))


def test_rebuilding_with_another_model_is_refused_unless_overwrite(tmp_path):
    build(tmp_path / "s")
    with pytest.raises(StoreError, match=r"different embedder \(.*k: \d stored, 2 now.*\); use --overwrite"):
        build(tmp_path / "s", embedder=KmerEmbedder(k=2, canonical=False))
    store = build(tmp_path / "s", embedder=KmerEmbedder(k=2, canonical=False), overwrite=True)
    assert store.dim == 16


HOLD_LOCK = """
import sys, time
from pathlib import Path
from genoembed.store import write_lock
with write_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read() if sys.argv[2] == "wait" else None
    if sys.argv[2] == "die":
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
"""


def hold_lock(root, mode: str) -> subprocess.Popen:
    """A process that takes the writer lock and keeps it until its stdin closes ("wait"), or dies holding it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(root), mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    store = build(tmp_path / "s")
    holder = hold_lock(store.root, "wait")
    try:
        with pytest.raises(StoreError, match=f"being written by process {holder.pid};"):
            with write_lock(store.root, wait=0.2):
                pass
    finally:
        holder.communicate("")
    with write_lock(store.root, wait=0):  # free again once the holder is done
        pass


def test_lock_of_a_killed_writer_is_free_whatever_its_pid_became(tmp_path):
    """A SIGKILLed writer leaves .lock with its PID; the kernel released the lock itself, so the next writer
    takes it at once, also when the recorded PID now belongs to a live process (here: this one, and pid 1)."""
    store = build(tmp_path / "s")
    holder = hold_lock(store.root, "die")
    holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    assert (store.root / ".lock").read_text() == str(holder.pid)
    for recorded in (str(holder.pid), "1", str(os.getpid())):
        (store.root / ".lock").write_text(recorded)
        with write_lock(store.root, wait=0):
            assert (store.root / ".lock").read_text() == str(os.getpid())


def test_missing_shard_and_newer_format_are_reported(tmp_path):
    store = build(tmp_path / "s")
    store.shard_paths[1].unlink()
    with pytest.raises(StoreError, match="missing"):
        Store.open(store.root)
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest["format_version"] = 99
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="newer than this genoembed"):
        Store.open(store.root)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a genoembed store"):
        Store.open(tmp_path)


def test_tiles_lookup_preserves_requested_order(tmp_path):
    store = build(tmp_path / "s")
    wanted = np.array([17, 3, 40, 3])
    rows = store.tiles(wanted)
    assert rows.column("tile_id").to_pylist() == [17, 3, 40, 3]


def test_writer_rejects_wrong_embedding_shape(tmp_path):
    genome = open_genome(PLASMID_FASTA)
    batch = next(plan_tiles(genome, TilingSpec(window=500, stride=500)))
    writer = StoreWriter(tmp_path / "s", {"embedding_dtype": "float32"}, dim=8, genome=genome_entry(genome))
    with pytest.raises(StoreError, match="expected"):
        writer.write(batch, np.zeros((batch.num_rows, 9), dtype=np.float32))


def test_float16_store_round_trips(tmp_path):
    store = build(tmp_path / "s", embedding_dtype="float16")
    assert pq.read_schema(store.shard_paths[0]).field(schema.EMBEDDING).type.value_type == "halffloat"
    ids, vectors = next(store.iter_embeddings())
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)


def test_repeated_lookups_use_the_loci_cache_and_agree_with_parquet_reads(chloroplast_store):
    """The second lookup of a Store object builds its in-memory loci; answers equal the row-group reads;
    a refresh with nothing new keeps them, a commit drops them."""
    import numpy as np

    store = Store.open(chloroplast_store.root)
    ids = np.random.default_rng(0).choice(store.num_tiles, size=50, replace=False)
    first = store.tiles(ids)
    assert store._loci is None
    second = store.tiles(ids[::-1])
    assert store._loci is not None
    assert second.to_pylist() == first.to_pylist()[::-1]
    store.refresh()  # nothing committed since: the loci stay
    assert store._loci is not None
    with store.transaction():  # a commit: a new snapshot, the loci go
        pass
    assert store._loci is None


def test_info_counts_sizes_while_a_writer_removes_files(tmp_path, monkeypatch):
    """`info` walks the store; a temporary file removed between the walk and its stat (a writer committing)
    is skipped, not an error."""
    from pathlib import Path

    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.synthetic import random_genome, write_fasta
    from genoembed.tiles import TilingSpec

    fasta = write_fasta(tmp_path / "g.fa", random_genome({"c": 5000}, seed=3))
    store = index(fasta, tmp_path / "s", embedder=KmerEmbedder(k=3), tiling=TilingSpec(window=500, stride=250))
    vanishing = store.root / ".manifest.json.partial.999"
    vanishing.write_text("{}")
    real_stat, looked_at = Path.stat, []

    def stat_after_removal(path, *args, **kwargs):
        if path == vanishing:
            looked_at.append(path)
            if len(looked_at) == 2:  # seen as a file, then renamed away by the writer before its size is read
                vanishing.unlink()
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat_after_removal)
    info = store.info()
    assert info["bytes_on_disk"] > 0 and info["tiles"] == store.num_tiles
