"""The ray engine on a local 2-CPU Ray cluster, compared row by row with the local engine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the ray engine needs the dist extra")

from genoembed.embedders.kmer import KmerEmbedder  # noqa: E402
from genoembed.errors import InputError, MissingExtraError  # noqa: E402
from genoembed.build import index  # noqa: E402

ENGINE_OPTIONS = {"num_workers", "preserve_order", "loader", "address", "gpus_per_worker", "max_retries"}


def index_with_ray(fasta, out, **options):
    """The same build on the Ray engine (no FAISS index, as the comparison stores have none)."""
    engine_options = {name: options.pop(name) for name in list(options) if name in ENGINE_OPTIONS}
    return index(fasta, out, engine="ray", engine_options=engine_options, index_spec=None, **options)
from genoembed.store import Store  # noqa: E402
from genoembed.tiles import TilingSpec  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    # Ray Data's advice when a tiny data set has fewer blocks than actors at start-up
    pytest.mark.filterwarnings("ignore:The minimum number of concurrent actors:UserWarning"),
]
TILING = TilingSpec(strands="both")
DATA = Path(__file__).parent / "data"
PLASMID_FASTA = DATA / "NC_005816.fna"
CHLOROPLAST_FASTA = Path(__file__).parent.parent / "genoembed" / "data" / "demo" / "NC_000932.fa"


@pytest.fixture(scope="module", autouse=True)
def cluster():
    # workers unpickle this module's crash-once embedder by value (they cannot import tests/)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def rows(store: Store) -> pa.Table:
    return pa.concat_tables(pq.read_table(path) for path in store.shard_paths)


def assert_same_store(got: Store, want: Store, atol: float = 1e-5) -> None:
    got_rows, want_rows = rows(got), rows(want)
    assert got_rows.drop_columns(["embedding"]).equals(want_rows.drop_columns(["embedding"]))
    dim = got.dim
    np.testing.assert_allclose(got_rows["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, dim),
                               want_rows["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, dim),
                               atol=atol)
    assert [s["rows"] for s in got.manifest["shards"]] == [s["rows"] for s in want.manifest["shards"]]
    assert got.provenance == want.provenance
    assert got.manifest["status"] == "complete"
    assert not (got.root / ".plan").exists()


@pytest.fixture(scope="module")
def local_kmer(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "store"
    return index(CHLOROPLAST_FASTA, out, embedder=KmerEmbedder(k=4, canonical=False), tiling=TILING, shard_rows=128,
                 index_spec=None)


@pytest.mark.parametrize(("workers", "preserve_order"), [(1, True), (2, False)])
def test_same_rows_as_local_engine(tmp_path, local_kmer, workers, preserve_order):
    got = index_with_ray(CHLOROPLAST_FASTA, tmp_path / "store", embedder=KmerEmbedder(k=4, canonical=False), tiling=TILING,
                         shard_rows=128, batch_rows=48, num_workers=workers, preserve_order=preserve_order)
    assert_same_store(got, local_kmer)


def tiny_esm(directory):
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    from genoembed.embedders.tokenize import kmer_vocab, write_kmer_tokenizer

    write_kmer_tokenizer(directory, k=6)
    config = EsmConfig(vocab_size=len(kmer_vocab(6)), pad_token_id=1, mask_token_id=2, max_position_embeddings=64,
                       position_embedding_type="absolute", token_dropout=False, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config.architectures = ["EsmForMaskedLM"]
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(str(directory))
    return directory


def test_tiny_transformer_same_rows_as_local_engine(tmp_path):
    from genoembed.embedders.hf import TransformersEmbedder

    embedder = TransformersEmbedder(tiny_esm(tmp_path / "model"), batch_size=16, device="cpu")
    tiling = TilingSpec(window=300, stride=300)
    want = index(PLASMID_FASTA, tmp_path / "local", embedder=embedder, tiling=tiling, shard_rows=10, index_spec=None)
    got = index_with_ray(PLASMID_FASTA, tmp_path / "ray", embedder=embedder, tiling=tiling, shard_rows=10,
                         batch_rows=8, num_workers=2)
    assert_same_store(got, want)


class CrashOnce:
    """Kills its worker process on the third batch the first time any worker gets there."""

    def __init__(self, marker):
        self.inner, self.marker, self.calls = KmerEmbedder(k=4, canonical=False), marker, 0
        self.dim, self.fingerprint = self.inner.dim, self.inner.fingerprint

    def embed(self, sequences):
        self.calls += 1
        if self.calls == 3 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return self.inner.embed(sequences)

    def describe(self):
        return {**self.inner.describe(), "marker": self.marker}


def crash_once_loader(spec):
    return CrashOnce(spec["marker"])


def test_killed_worker_is_retried_and_store_is_complete(tmp_path, local_kmer):
    marker = str(tmp_path / "crashed")
    embedder = CrashOnce(marker)
    got = index_with_ray(CHLOROPLAST_FASTA, tmp_path / "store", embedder=embedder, tiling=TILING, shard_rows=128,
                         batch_rows=32, num_workers=2, loader=crash_once_loader)
    assert os.path.exists(marker), "no worker was killed"
    tiles = rows(got)
    assert tiles["tile_id"].to_pylist() == list(range(local_kmer.num_tiles))
    np.testing.assert_allclose(tiles["embedding"].combine_chunks().flatten().to_numpy(),
                               rows(local_kmer)["embedding"].combine_chunks().flatten().to_numpy(), atol=1e-6)


class FailAfter:
    """Local-engine embedder that raises after ``batches`` batches (an interrupted build)."""

    def __init__(self, batches):
        self.inner, self.left = KmerEmbedder(k=4, canonical=False), batches
        self.dim, self.fingerprint = self.inner.dim, self.inner.fingerprint

    def embed(self, sequences):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.inner.embed(sequences)

    def describe(self):
        return self.inner.describe()


def test_resumes_a_local_build_interrupted_midway(tmp_path, local_kmer):
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        index(CHLOROPLAST_FASTA, out, embedder=FailAfter(5), tiling=TILING, shard_rows=128, batch_rows=50,
              index_spec=None)
    partial = Store.open(out, require_complete=False)
    written = sum(shard["rows"] for shard in partial.manifest["shards"])  # readers see none of them yet
    assert partial.num_tiles == 0 and 0 < written < local_kmer.num_tiles
    got = index_with_ray(CHLOROPLAST_FASTA, out, embedder=KmerEmbedder(k=4, canonical=False), tiling=TILING, shard_rows=128,
                         batch_rows=40, num_workers=2)
    assert_same_store(got, local_kmer)


def test_missing_ray_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'genoembed\[dist\]'"):
        index_with_ray(PLASMID_FASTA, tmp_path / "store", embedder=KmerEmbedder(k=4, canonical=False))
    assert not (tmp_path / "store").exists()


def test_appending_a_genome_on_ray_matches_the_local_engine(tmp_path):
    stores = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        options = {"num_workers": 2} if engine == "ray" else {}
        for fasta in (CHLOROPLAST_FASTA, PLASMID_FASTA):
            stores[engine] = index(fasta, out, embedder=KmerEmbedder(k=4, canonical=False), tiling=TILING, shard_rows=128,
                                   batch_rows=64, append=True, engine=engine, engine_options=options)
    assert list(stores["ray"].genomes) == [CHLOROPLAST_FASTA.name.split(".")[0], PLASMID_FASTA.name.split(".")[0]]
    assert stores["ray"].manifest["genomes"] == stores["local"].manifest["genomes"]
    assert_same_store(stores["ray"], stores["local"])


def test_gpu_actors_rebuild_transformers_models_on_the_gpu():
    """A GPU actor's record asks for CUDA (the numpy table path would leave the GPU idle) and keeps the driver's
    float32 precision; CPU actors and non-transformers embedders keep the record as it is."""
    from genoembed.embedders import get_embedder, load_embedder
    from genoembed.ray_engine import worker_spec

    spec = get_embedder("default").describe()
    assert worker_spec(spec, 0) == spec
    assert worker_spec(KmerEmbedder(4).describe(), 1) == KmerEmbedder(4).describe()
    on_gpu = worker_spec(spec, 0.5)
    assert on_gpu == {**spec, "device": "cuda"}
    if not __import__("torch").cuda.is_available():  # the registry hands the record to the torch embedder
        with pytest.raises(InputError, match="device 'cuda' was requested but no CUDA GPU is available"):
            load_embedder(on_gpu)
