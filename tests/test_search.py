import numpy as np
import pytest

from genoembed.embedders.kmer import KmerEmbedder
from genoembed.errors import InputError
from genoembed.seqio import reverse_complement
from genoembed.search import Query, bed_queries, check_sequence, fasta_queries, parse_region, region_queries, search
from genoembed.sql import run_sql
from genoembed.synthetic import mutate, write_fasta


def test_parse_region_is_one_based_closed():
    assert parse_region("chr1:1,001-2,000") == ("chr1", 1000, 2000, "+")
    assert parse_region("chr1:1001-2000:-") == ("chr1", 1000, 2000, "-")
    assert parse_region("HLA-A*01:01:01:01:5-10") == ("HLA-A*01:01:01:01", 4, 10, "+")
    assert parse_region("chrM") == ("chrM", None, None, "+")
    with pytest.raises(InputError, match="1 <= start <= end"):
        parse_region("chr1:0-10")


def test_region_queries_check_bounds(chloroplast_store):
    genome = chloroplast_store.genome()
    (query,) = region_queries(genome, ["NC_000932.1:101-200:-"])
    assert (query.start, query.end, query.strand) == (100, 200, "-")
    assert query.sequence == reverse_complement(genome.fetch("NC_000932.1", 100, 200)).upper()
    with pytest.raises(InputError, match="ends at 200000 but NC_000932.1 has 154478 bp"):
        region_queries(genome, ["NC_000932.1:1-200000"])
    with pytest.raises(InputError, match="contig 'chr1' is not in"):
        region_queries(genome, ["chr1:1-100"])


def test_each_tile_finds_itself_first(chloroplast_store):
    genome = chloroplast_store.genome()
    tiles = chloroplast_store.tiles(np.arange(0, chloroplast_store.num_tiles, 50)).to_pylist()
    queries = [Query(f"t{t['tile_id']}", genome.fetch(t["chrom"], t["start"], t["end"], t["strand"]))
               for t in tiles]
    hits = search(chloroplast_store, queries, k=3, save_as=None).to_pylist()
    top = {h["query"]: h for h in hits if h["rank"] == 1}
    for tile in tiles:
        best = top[f"t{tile['tile_id']}"]
        # canonical k-mers: the same locus on either strand scores 1.0
        assert (best["start"], best["end"]) == (tile["start"], tile["end"])
        assert best["score"] == pytest.approx(1.0, abs=1e-5)


def test_mutated_copy_finds_its_origin(chloroplast_store):
    genome = chloroplast_store.genome()
    source = genome.fetch("NC_000932.1", 30_000, 31_000)
    query = Query("mutated", mutate(source, substitution_rate=0.05, indel_rate=0.005, seed=3))
    hits = search(chloroplast_store, [query], k=5, save_as=None).to_pylist()
    assert any(h["start"] < 31_000 and h["end"] > 30_000 for h in hits[:2])


def test_exclude_self_drops_overlapping_tiles(chloroplast_store):
    genome = chloroplast_store.genome()
    queries = region_queries(genome, ["NC_000932.1:20001-21000"])
    hits = search(chloroplast_store, queries, k=10, exclude_self=True, save_as=None).to_pylist()
    assert len(hits) == 10 and [h["rank"] for h in hits] == list(range(1, 11))
    assert all(h["end"] <= 20_000 or h["start"] >= 21_000 for h in hits)


def test_search_errors(chloroplast_store):
    query = [Query("q", "ACGT" * 100)]
    with pytest.raises(InputError, match="larger than the store"):
        search(chloroplast_store, query, k=10**6)
    with pytest.raises(InputError, match="dim 64 but the store has dim 256"):
        search(chloroplast_store, query, k=5, embedder=KmerEmbedder(k=3))
    with pytest.raises(InputError, match="characters other than DNA"):
        check_sequence("ACGTXZ", "--sequence")
    with pytest.raises(InputError, match="replace U with T"):
        check_sequence("ACGU", "--sequence")


def test_saved_search_becomes_sql_view(chloroplast_store):
    search(chloroplast_store, [Query("q", "ACGT" * 100)], k=4, save_as="demo_hits")
    rows = run_sql(chloroplast_store, "SELECT count(*) AS n FROM hits_demo_hits").to_pylist()
    assert rows == [{"n": 4}]
    with pytest.raises(InputError, match="letters, digits"):
        search(chloroplast_store, [Query("q", "ACGT" * 100)], k=4, save_as="bad-name")


def test_bed_and_fasta_queries(chloroplast_store, tmp_path):
    genome = chloroplast_store.genome()
    bed = tmp_path / "q.bed"
    bed.write_text("track name=x\nNC_000932.1\t100\t600\tgeneA\t0\t-\nNC_000932.1\t1000\t1500\n")
    queries = bed_queries(genome, bed)
    assert [q.name for q in queries] == ["geneA", "NC_000932.1:1001-1500"]
    assert queries[0].sequence == reverse_complement(genome.fetch("NC_000932.1", 100, 600)).upper()
    bed.write_text("NC_000932.1\t100\n")
    with pytest.raises(InputError, match=r"q.bed:1: expected chrom"):
        bed_queries(genome, bed)
    fasta = write_fasta(tmp_path / "q.fa.gz", {"a": "ACGT" * 50, "b": "GGCC" * 50}, compression="gzip")
    assert [q.name for q in fasta_queries(fasta)] == ["a", "b"]
    (tmp_path / "bad.fa").write_text(">x\nACGT!!\n")
    with pytest.raises(InputError, match="bad.fa record 'x'"):
        fasta_queries(tmp_path / "bad.fa")


def test_region_strings_and_repeated_names(chloroplast_store):
    hits = search(chloroplast_store, ["NC_000932.1:1001-2000", "NC_000932.1:1001-2000"], k=2, save_as=None)
    assert hits.column("query").to_pylist() == ["NC_000932.1:1001-2000"] * 2 + ["NC_000932.1:1001-2000#2"] * 2
    assert hits.column("start").to_pylist()[0] == 1000


def test_contig_filter_returns_k_hits_on_that_contig(tmp_path):
    from genoembed.build import index
    from genoembed.synthetic import random_genome
    from genoembed.tiles import TilingSpec

    fasta = write_fasta(tmp_path / "two.fa", random_genome({"a": 30_000, "b": 6_000}, seed=5))
    store = index(fasta, tmp_path / "s", embedder=KmerEmbedder(k=4), tiling=TilingSpec(window=500, stride=250))
    query = Query("q", store.genome().fetch("a", 1000, 1500))
    hits = search(store, [query], k=8, chrom="b", save_as=None).to_pylist()
    assert len(hits) == 8 and {h["chrom"] for h in hits} == {"b"}
    vectors = np.concatenate([v for _, v in store.iter_embeddings()])
    on_b = store.tiles(np.arange(store.num_tiles)).column("chrom").to_numpy(zero_copy_only=False) == "b"
    scores = vectors @ KmerEmbedder(k=4).embed([query.sequence])[0]
    best_b = np.flatnonzero(on_b)[np.argsort(-scores[on_b], kind="stable")[:8]]
    assert sorted(h["tile_id"] for h in hits) == sorted(best_b.tolist())
    with pytest.raises(InputError):
        search(store, [query], k=8, chrom="nope", save_as=None)


def test_region_numbers_take_commas_not_underscores(chloroplast_store):
    assert parse_region("NC_000932.1:1,001-2,000") == ("NC_000932.1", 1000, 2000, "+")
    with pytest.raises(InputError, match="contig 'NC_000932.1:1_0-2_0' is not"):
        region_queries(chloroplast_store.genome(), ["NC_000932.1:1_0-2_0"])


def test_rna_genome_is_named_as_rna(tmp_path):
    from genoembed.build import index

    write_fasta(tmp_path / "rna.fa", {"r1": "ACGU" * 500})
    with pytest.raises(InputError, match="looks like RNA"):
        index(tmp_path / "rna.fa", tmp_path / "store", embedder=KmerEmbedder(k=3))
    assert not (tmp_path / "store").exists()


def test_a_search_that_finds_nothing_returns_no_rows(chloroplast_store, monkeypatch):
    """An index answering only -1 ids (probed lists all empty) gives an empty hits table, also with
    exclude_self, not an error."""
    from genoembed import schema

    index = chloroplast_store.vector_index()
    monkeypatch.setattr(index, "search", lambda vectors, k, **settings: (
        np.zeros((len(vectors), k), dtype=np.float32), np.full((len(vectors), k), -1, dtype=np.int64)))
    hits = search(chloroplast_store, ["NC_000932.1:1001-2000"], k=5, exclude_self=True)
    assert hits.num_rows == 0 and hits.schema.equals(schema.HITS)


def test_importing_genoembed_sets_thread_wait_defaults_but_keeps_the_users():
    """Idle OpenMP/OpenBLAS workers sleep (set before numpy loads) unless the user chose otherwise."""
    import os
    import subprocess
    import sys

    show = "import genoembed, os; print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    default = subprocess.run([sys.executable, "-c", show], env=environment, capture_output=True, text=True, check=True)
    assert default.stdout.split() == ["PASSIVE", "4"]
    chosen = subprocess.run([sys.executable, "-c", show], env={**environment, "OMP_WAIT_POLICY": "ACTIVE"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.split() == ["ACTIVE", "4"]
