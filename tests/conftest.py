"""Shared fixtures: an isolated cache and small real stores built with the k-mer embedder."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
PLASMID_FASTA = DATA / "NC_005816.fna"
PLASMID_GENBANK = DATA / "NC_005816.gb"
DEMO = Path(__file__).parent.parent / "genoembed" / "data" / "demo"
CHLOROPLAST_FASTA = DEMO / "NC_000932.fa"
CHLOROPLAST_GENBANK = DEMO / "NC_000932.gb"
# the project's shared data set lies beside the checkout (developers and CI alike)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Keep .fai indexes and decompressed genomes out of the user's cache."""
    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("GENOEMBED_CACHE", str(cache))
    yield cache
    patch.undo()


@pytest.fixture
def fresh_cache(tmp_path_factory, monkeypatch) -> Path:
    """An empty cache for one test (for tests of what the cache holds)."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("GENOEMBED_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def chloroplast_store(tmp_path_factory):
    """Chloroplast, 1 kb tiles every 500 bp on the forward strand (canonical 4-mer vectors are the same on both), Flat index."""
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.build import index
    from genoembed.tiles import TilingSpec

    out = tmp_path_factory.mktemp("stores") / "chloroplast"
    return index(CHLOROPLAST_FASTA, out, embedder=KmerEmbedder(k=4), tiling=TilingSpec(strands="+"),
                 shard_rows=128)


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread for a module of tiny-model tests (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
