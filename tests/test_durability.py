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
