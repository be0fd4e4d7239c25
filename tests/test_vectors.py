import shutil

import numpy as np
import pytest

from genoembed.errors import InputError
from genoembed.indexing import build_store_index
from genoembed.vector_index import IndexSpec, build_index, load_index, prepare, search_index


def stored_matrix(store):
    return np.concatenate([vectors for _, vectors in store.iter_embeddings()])


def brute_force(database, queries, k, metric):
    database, queries = prepare(database, metric), prepare(queries, metric)
    if metric == "ip":
        scores = queries @ database.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = ((queries[:, None, :] - database[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_numpy_brute_force(chloroplast_store, metric):
    database = stored_matrix(chloroplast_store)
    index = build_index(chloroplast_store, IndexSpec(factory="Flat", metric=metric))
    queries = database[::37] + np.random.default_rng(0).normal(0, 0.01, database[::37].shape).astype(np.float32)
    scores, ids = search_index(index, queries, 10, metric)
    want_scores, want_ids = brute_force(database, queries, 10, metric)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5)
    # ids may differ only among ties (canonical k-mers give both strands of a locus one vector):
    # every returned id must truly have the score returned for it
    full = prepare(queries, metric) @ prepare(database, metric).T if metric == "ip" else \
        ((prepare(queries, metric)[:, None] - prepare(database, metric)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(np.take_along_axis(full, ids, axis=1), scores, rtol=1e-4, atol=1e-5)


# at most 308 // 39 = 7 lists and 2**2 PQ codes fit 308 tiles (FAISS wants 39 training vectors per centroid)
@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW16", "IVF4,PQ32x2"])
def test_approximate_indexes_recall_against_exact(chloroplast_store, factory):
    database = stored_matrix(chloroplast_store)
    index = build_index(chloroplast_store, IndexSpec(factory=factory))
    queries = database[::11]
    _, exact = brute_force(database, queries, 10, "ip")
    _, found = search_index(index, queries, 10, "ip", nprobe=4, ef_search=128)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    # visiting every list (nprobe=4 of 4) / a wide HNSW beam is near-exact; 2-bit PQ loses much
    # but stays far above chance (10 / 308)
    assert recall >= (0.3 if "PQ" in factory else 0.95), recall


def test_nprobe_changes_ivf_results(chloroplast_store):
    index = build_index(chloroplast_store, IndexSpec(factory="IVF4,Flat"))
    database = stored_matrix(chloroplast_store)
    _, exact = brute_force(database, database[::5], 10, "ip")
    recalls = []
    for nprobe in (1, 4):
        _, found = search_index(index, database[::5], 10, "ip", nprobe=nprobe)
        recalls.append(np.mean([len(set(a) & set(b)) for a, b in zip(found, exact)]))
    assert recalls[0] < recalls[1]


def test_invalid_factory_and_too_many_lists(chloroplast_store):
    with pytest.raises(InputError, match="not valid"):
        build_index(chloroplast_store, IndexSpec(factory="NoSuchIndex"))
    with pytest.raises(InputError, match=r"inverted lists need at least 39 training vectors per centroid.*use e.g. --factory IVF7,Flat"):
        build_index(chloroplast_store, IndexSpec(factory="IVF4096,Flat"))


def test_query_dim_mismatch(chloroplast_store):
    index = load_index(chloroplast_store.root / chloroplast_store.refresh().manifest["index"]["path"])
    with pytest.raises(InputError, match="dim 8 but the index has dim 256"):
        search_index(index, np.zeros((1, 8), dtype=np.float32), 5, "ip")


def test_index_is_recorded_and_reloaded(chloroplast_store, tmp_path):
    entry = build_store_index(chloroplast_store, IndexSpec(factory="Flat"))
    assert entry["ntotal"] == chloroplast_store.num_tiles
    assert load_index(chloroplast_store.root / entry["path"]).ntotal == chloroplast_store.num_tiles


@pytest.mark.parametrize("factory, knob", [("IVF32,Flat", "nprobe"), ("HNSW8", "ef_search")])
def test_build_tunes_search_to_the_recall_target(tmp_path, factory, knob):
    """The manifest records the setting tuning chose; searching with it (no knob given) reaches the target on
    queries the tuning never saw, against numpy brute force."""
    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.synthetic import random_genome, write_fasta
    from genoembed.tiles import TilingSpec

    write_fasta(tmp_path / "g.fa", random_genome({"c1": 300_000, "c2": 200_000}, seed=3))
    store = index(tmp_path / "g.fa", tmp_path / "s", embedder=KmerEmbedder(k=3), tiling=TilingSpec(window=200, stride=100),
                  index_spec=IndexSpec(factory=factory, recall_target=0.9))
    tuned = store.manifest["index"]["search"]
    assert tuned["target"] == 0.9 and tuned["recall_at_10"] >= 0.9 and tuned[knob] >= 1
    assert tuned["queries"] == "held_out"
    database = stored_matrix(store)
    queries = database[5::97] + np.random.default_rng(1).normal(0, 0.02, database[5::97].shape).astype(np.float32)
    _, ids = store.vector_index().search(queries, 10)
    _, exact = brute_force(database, queries, 10, "ip")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= 0.85  # the target holds (within sampling noise) for unseen queries


def test_tuning_queries_are_mutated_windows_of_the_store_or_stored_vectors(tmp_path, caplog):
    """Tuning queries are tile-length windows of the store's genome with ~5 % substitutions (not stored
    tiles, which are their own nearest neighbours); without the FASTA it falls back to stored vectors, warned."""
    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.indexing import mutated_windows, tuning_queries
    from genoembed.synthetic import random_genome, write_fasta
    from genoembed.tiles import TilingSpec

    genome = random_genome({"c1": 50_000}, seed=5)["c1"]
    write_fasta(tmp_path / "g.fa", {"c1": genome})
    store = index(tmp_path / "g.fa", tmp_path / "s", embedder=KmerEmbedder(k=3),
                  tiling=TilingSpec(window=500, stride=250), index_spec=None)
    windows = mutated_windows(store, 50, seed=1)
    assert {len(window) for window in windows} == {500}
    every_window = np.lib.stride_tricks.sliding_window_view(np.frombuffer(genome.encode(), np.uint8), 500)
    best = [int((every_window != np.frombuffer(w.encode(), np.uint8)).sum(1).min()) for w in windows[:3]]
    assert all(10 <= differences <= 45 for differences in best), best  # 5 % of 500 = 25 expected
    vectors, kind = tuning_queries(store, 50, seed=1)
    assert kind == "held_out" and vectors.shape == (50, store.dim)
    (tmp_path / "g.fa").rename(tmp_path / "moved.fa")
    (tmp_path / "g.fa.fai").unlink(missing_ok=True)
    from genoembed.store import Store

    store = Store.open(store.root)  # a fresh snapshot: the one above keeps the genome it already opened
    vectors, kind = tuning_queries(store, 50, seed=1)
    assert kind == "held_out"  # the store carries its own sequence
    shutil.rmtree(store.root / "sequences")
    store = Store.open(store.root)
    vectors, kind = tuning_queries(store, 50, seed=1)
    assert kind == "stored" and vectors.shape == (50, store.dim)
    assert "overestimates recall" in caplog.text


def test_unreachable_target_takes_the_cheapest_setting_near_the_best_recall(chloroplast_store):
    """A PQ index that plateaus below the target is not tuned to a full scan for the last 0.1 %."""
    from genoembed.recall import PLATEAU, recall_at, tune_search

    index = build_index(chloroplast_store, IndexSpec(factory="IVF7,PQ32x2"))
    database = stored_matrix(chloroplast_store)
    queries = database[::3] + np.random.default_rng(2).normal(0, 0.01, database[::3].shape).astype(np.float32)
    _, exact = brute_force(database, queries, 10, "ip")
    recalls = {n: recall_at(search_index(index, queries, 10, "ip", nprobe=n)[1], exact, 10) for n in (1, 2, 4, 7)}
    tuned = tune_search(index, "ip", queries, exact, target=1.0)
    assert max(recalls.values()) < 1.0
    assert tuned["nprobe"] == min(n for n, recall in recalls.items() if recall >= max(recalls.values()) - PLATEAU)
    assert tuned["nprobe"] < 7 and "k_factor" not in tuned


def test_flat_index_records_no_tuning(chloroplast_store):
    assert "search" not in chloroplast_store.manifest["index"]


def test_recall_target_is_checked():
    with pytest.raises(InputError, match="recall_target"):
        IndexSpec(recall_target=1.5)


class _FakeGpu:
    """Stands in for FAISS's GPU calls on a machine without one: 'cloning to the GPU' is a CPU clone whose
    searches are counted, and layouts listed in ``refuse`` raise as FAISS does for indexes without a GPU form."""

    def __init__(self, monkeypatch, refuse: tuple[str, ...] = ()):
        import faiss

        from genoembed import vector_index

        self.searched, self.refuse = 0, refuse
        monkeypatch.setattr(vector_index, "gpu_available", lambda: True)
        monkeypatch.setattr(vector_index, "gpu_resources", lambda: "resources")
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", self.clone, raising=False)

    def clone(self, resources, device, index):
        import faiss

        assert (resources, device) == ("resources", 0)
        if any(name in type(faiss.downcast_index(index.index)).__name__ for name in self.refuse):
            raise RuntimeError("Error in ... index_cpu_to_gpu: This index type is not implemented on GPU.")
        copy, fake = faiss.clone_index(index), self

        class Counted:
            d, ntotal = copy.d, copy.ntotal

            def search(self, queries, k):
                fake.searched += 1
                return copy.search(queries, k)

        return Counted()


def test_searches_run_on_the_gpu_copy_when_faiss_has_a_gpu(chloroplast_store, monkeypatch, caplog):
    """With a (faked) GPU, FaissIndex searches its GPU copy and answers as the CPU index does; k over FAISS's
    GPU limit and layouts without a GPU form (HNSW) search on the CPU."""
    from genoembed.vector_index import GPU_MAX_SELECT, FaissIndex

    cpu = build_index(chloroplast_store, IndexSpec(factory="Flat"))
    queries = stored_matrix(chloroplast_store)[::9]
    expected = FaissIndex(cpu, "ip").search(queries, 10)
    fake = _FakeGpu(monkeypatch, refuse=("HNSW",))
    index = FaissIndex(cpu, "ip")
    found = index.search(queries, 10)
    assert fake.searched == 1
    np.testing.assert_array_equal(found[1], expected[1])
    index.search(queries, GPU_MAX_SELECT + 1)
    assert fake.searched == 1  # beyond FAISS's GPU k-selection: the CPU index answered
    with caplog.at_level("INFO", logger="genoembed.vector_index"):
        hnsw = FaissIndex(build_index(chloroplast_store, IndexSpec(factory="HNSW16")), "ip")
    assert hnsw.gpu_index is None and "no GPU form" in caplog.text
    assert hnsw.search(queries, 10)[1].shape == (len(queries), 10) and fake.searched == 1


def test_gpu_use_follows_faiss_build_devices_and_the_switch(monkeypatch):
    """gpu_available: a faiss without GPU support, no visible GPU, or GENOEMBED_FAISS_GPU=0 mean the CPU."""
    import faiss

    from genoembed.vector_index import gpu_available

    monkeypatch.delenv("GENOEMBED_FAISS_GPU", raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    assert gpu_available()
    monkeypatch.setenv("GENOEMBED_FAISS_GPU", "0")
    assert not gpu_available()
    monkeypatch.delenv("GENOEMBED_FAISS_GPU")
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert not gpu_available()
    monkeypatch.delattr(faiss, "StandardGpuResources")
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    assert not gpu_available()


@pytest.mark.gpu
def test_gpu_search_equals_cpu_search(chloroplast_store):
    """On a machine with a GPU build of FAISS and a GPU: Flat and IVF searches on the GPU return the CPU's
    neighbours (IVF at the same nprobe), and the store's index is searched there."""
    from genoembed.vector_index import FaissIndex, gpu_available

    if not gpu_available():
        pytest.skip("no GPU build of FAISS or no visible GPU")
    queries = stored_matrix(chloroplast_store)[::7]
    for factory in ("Flat", "IVF4,Flat"):
        cpu = build_index(chloroplast_store, IndexSpec(factory=factory))
        index = FaissIndex(cpu, "ip")
        assert index.gpu_index is not None
        _, on_gpu = index.search(queries, 10, nprobe=4)
        _, on_cpu = search_index(cpu, queries, 10, "ip", nprobe=4)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(on_gpu, on_cpu)])
        assert recall >= 0.99, (factory, recall)
