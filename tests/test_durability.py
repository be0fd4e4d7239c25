"""SIGKILL at random moments during `index`, then resume: the store equals an uninterrupted build."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from genoembed.store import Store
from genoembed.synthetic import random_genome, write_fasta
from genoembed.verify import verify_store

BUILD = """
import sys, time
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.build import index
from genoembed.tiles import TilingSpec

class SlowKmer(KmerEmbedder):
    def embed(self, sequences):
        time.sleep(0.05)  # stands in for a GPU batch
        return super().embed(sequences)

index(sys.argv[1], sys.argv[2], embedder=SlowKmer(k=3, canonical=False), tiling=TilingSpec(window=300, stride=150, strands="both"),
      batch_rows=16, shard_rows=40)
"""


def build(fasta, out, kill_after=None):
    process = subprocess.Popen([sys.executable, "-c", BUILD, str(fasta), str(out)], env=os.environ.copy())
    if kill_after is None:
        assert process.wait(timeout=120) == 0
        return True
    time.sleep(kill_after)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return process.returncode == 0


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path):
    fasta = write_fasta(tmp_path / "g.fa", random_genome({"a": 40_000, "b": 25_000}, seed=7))
    build(fasta, tmp_path / "reference")
    reference = Store.open(tmp_path / "reference")
    rng = np.random.default_rng(1)
    kills = 0
    for _ in range(8):
        if build(fasta, tmp_path / "killed", kill_after=float(rng.uniform(0.8, 2.0))):
            break
        kills += 1
    build(fasta, tmp_path / "killed")
    assert kills >= 2, "the build finished before it could be killed; slow it down"
    resumed = Store.open(tmp_path / "killed")
    assert verify_store(resumed) == []
    assert resumed.num_tiles == reference.num_tiles
    for (ids_a, a), (ids_b, b) in zip(reference.iter_embeddings(), resumed.iter_embeddings()):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(a, b)
    assert reference.tiles(np.arange(reference.num_tiles)) == resumed.tiles(np.arange(resumed.num_tiles))


def test_full_disk_while_writing_a_shard_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """ENOSPC in the middle of a build: a one-line error naming the shard, no half-written file, and the
    same command resumes once there is space."""
    import errno

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from genoembed.cli import app

    write_fasta(tmp_path / "g.fa", random_genome({"c1": 9000}, seed=2))
    real_write = pq.write_table
    calls = {"n": 0}

    def full_disk(table, where, **options):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(where, "wb") as handle:
                handle.write(b"PAR1 half a shard")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, where, **options)

    monkeypatch.setattr(pq, "write_table", full_disk)
    command = ["index", "--fasta", str(tmp_path / "g.fa"), "-o", str(tmp_path / "s"), "--model", "kmer:3",
               "--window", "300", "--stride", "150", "--shard-rows", "20", "-q"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "No space left on device" in result.output and "part-00001.parquet" in result.output
    assert not [path for path in (tmp_path / "s").rglob("*") if ".partial" in path.name]
    monkeypatch.setattr(pq, "write_table", real_write)
    assert CliRunner().invoke(app, command).exit_code == 0  # resumes after the shard that was complete
    assert verify_store(Store.open(tmp_path / "s")) == []


def test_read_only_store_cannot_be_written_but_is_still_searched(tmp_path, monkeypatch):
    """A read-only mount (EROFS on the lock file): writers get one line, search answers without saving."""
    import errno

    from typer.testing import CliRunner

    from genoembed.cli import app

    write_fasta(tmp_path / "g.fa", random_genome({"c1": 6000}, seed=3))
    out = tmp_path / "s"
    assert CliRunner().invoke(app, ["index", "--fasta", str(tmp_path / "g.fa"), "-o", str(out), "--model",
                                    "kmer:3", "--window", "300", "-q"]).exit_code == 0
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(os, "access", lambda path, mode: not (mode & os.W_OK and str(path).startswith(str(out))))
    for args in (["remove", str(out), "--genome", "g"],
                 ["index", "--fasta", str(tmp_path / "g.fa"), "-o", str(out), "--model", "kmer:3", "--window", "300",
                  "--factory", "HNSW16"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "read-only" in result.output and "Traceback" not in result.output
    searched = CliRunner().invoke(app, ["search", str(out), "--region", "c1:1-300", "-k", "2", "-f", "tsv"])
    assert searched.exit_code == 0 and len(searched.stdout.splitlines()) == 3
    assert "not saved" in searched.output


def test_taking_the_writer_lock_removes_a_dead_writers_partial_files(tmp_path):
    """A writer killed while saving the index (or a shard, or the manifest) leaves a temporary file; the next
    writer removes it, so the store verifies again (saved searches, written without the lock, are left)."""
    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.store import write_lock

    write_fasta(tmp_path / "g.fa", random_genome({"c1": 6000}, seed=4))
    store = index(tmp_path / "g.fa", tmp_path / "s", embedder=KmerEmbedder(k=3))
    leftovers = [tmp_path / "s" / "index" / ".vectors.faiss.partial.99999",
                 tmp_path / "s" / "shards" / ".part-00009.parquet.partial.99999",
                 tmp_path / "s" / ".manifest.json.partial.99999"]
    searching = tmp_path / "s" / "searches" / ".last.parquet.partial.99999"
    searching.parent.mkdir(exist_ok=True)
    for path in leftovers + [searching]:
        path.write_bytes(b"half written")
    assert any("partial file" in problem for problem in verify_store(store))
    with write_lock(store.root):
        pass
    assert not any(path.exists() for path in leftovers) and searching.exists()
    searching.unlink()
    assert verify_store(Store.open(store.root)) == []
