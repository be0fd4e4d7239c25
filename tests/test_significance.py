"""E-values of embedding scores: a per-store null, calibrated on queries with no homolog, cached, and filtering."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import DATA, PLASMID_FASTA
from genoembed.cli import app
from genoembed.mapping import answer
from genoembed.search import Query
from genoembed.seqio import read_fasta
from genoembed.significance import NULL_QUERIES, Null, add_evalues, gc_bin, length_bin

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from genoembed.build import index
    from genoembed.tiles import TilingSpec

    return index(DATA / "mg1655_60k.fa.gz", tmp_path_factory.mktemp("stores") / "mg1655",
                 tiling=TilingSpec(window=1000, stride=500))


def _no_homolog_queries(count: int, length: int, seed: int) -> list[Query]:
    """Windows of a Yersinia plasmid with their bases shuffled: its composition, no homolog in E. coli."""
    (_, plasmid), = read_fasta(PLASMID_FASTA)
    rng = np.random.default_rng(seed)
    queries = []
    for number in range(count):
        start = int(rng.integers(0, len(plasmid) - length))
        queries.append(Query(f"null{number}", "".join(rng.permutation(list(plasmid[start:start + length].upper())))))
    return queries


def test_evalues_are_calibrated_on_queries_without_homolog(store):
    queries = _no_homolog_queries(150, 1000, seed=11)
    hits, _ = answer(store, queries, k=50, evalue=1e12, by_length=False)
    evalues = hits.column("score_evalue").to_numpy()
    for threshold in (1.0, 10.0):  # hits at or below E per query with no homolog: E itself
        assert 0.5 * threshold <= (evalues <= threshold).sum() / len(queries) <= 2 * threshold
    assert (evalues <= 0.01).sum() / len(queries) <= 0.05


def test_true_homologs_are_significant_and_the_null_is_cached(store):
    (_, reference), = read_fasta(DATA / "mg1655_60k.fa.gz")
    rng = np.random.default_rng(2)
    mutated = list(reference[30000:31000].upper())
    for position in rng.choice(1000, size=50, replace=False):  # 5 % substitutions
        mutated[position] = "ACGT"[("ACGT".index(mutated[position]) + 1) % 4]
    query = Query("homolog", "".join(mutated))
    hits, _ = answer(store, [query], k=3, evalue=10)
    assert hits.column("start").to_pylist()[0] in (29500, 30000, 30500)
    assert hits.column("score_evalue").to_pylist()[0] < 1e-3
    cached = sorted((store.root / "cache").glob("null-*.npy"))
    assert cached and not list((store.root / "cache").glob(".*partial*"))
    stamps = [path.stat().st_mtime_ns for path in cached]
    again = add_evalues(store, [query], hits.drop_columns(["score_evalue"]), store.embedder())
    assert again.column("score_evalue").to_pylist() == hits.column("score_evalue").to_pylist()
    assert [path.stat().st_mtime_ns for path in cached] == stamps  # read back, not recomputed


def test_null_counts_then_extrapolates_its_tail():
    rng = np.random.default_rng(0)
    null = Null(rng.normal(0.4, 0.05, size=NULL_QUERIES * 50), NULL_QUERIES)
    scores = np.array([0.3, 0.4, 0.5, 0.6, 0.8])
    evalues = null.evalue(scores)
    assert np.all(np.diff(evalues) < 0)  # higher score, smaller E
    assert evalues[1] == pytest.approx((null.scores >= 0.4).sum() / NULL_QUERIES)
    assert evalues[-1] < 1.0 / NULL_QUERIES  # beyond every null score: the fitted tail, not zero
    assert length_bin(150, 1000) == 128 and length_bin(5000, 1000) == 1000 and gc_bin("GGCCAT") == 0.65


def _tsv(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))


def test_cli_evalue_and_min_score_filter(store, tmp_path):
    queries = tmp_path / "q.fa"
    (_, reference), = read_fasta(DATA / "mg1655_60k.fa.gz")
    noise = _no_homolog_queries(20, 800, seed=5)
    queries.write_text(f">real\n{reference[40000:40800]}\n" + "".join(f">{q.name}\n{q.sequence}\n" for q in noise))
    every = _tsv(runner.invoke(app, ["search", str(store.root), "--fasta", str(queries), "-k", "5", "-f", "tsv",
                                     "--no-annotate", "--tiles", "--evalue", "1e9"]))
    kept = _tsv(runner.invoke(app, ["search", str(store.root), "--fasta", str(queries), "-k", "5", "-f", "tsv",
                                    "--no-annotate", "--tiles", "--evalue", "0.01"]))
    assert len(every) == 21 * 5
    assert [row["query"] for row in kept][:1] == ["real"] and all(float(row["score_evalue"]) <= 0.01 for row in kept)
    assert sum(row["query"] != "real" for row in kept) <= 2
    high = _tsv(runner.invoke(app, ["search", str(store.root), "--fasta", str(queries), "-k", "5", "-f", "tsv",
                                    "--no-annotate", "--evalue", "1e9", "--min-score", "0.9"]))
    assert high and all(float(row["score"]) >= 0.9 for row in high)


def test_aligned_evalue_filters_blast6_rows(store, tmp_path):
    pytest.importorskip("parasail")
    (_, reference), = read_fasta(DATA / "mg1655_60k.fa.gz")
    queries = tmp_path / "q.fa"
    queries.write_text(f">real\n{reference[12000:12700]}\n" + "".join(
        f">{q.name}\n{q.sequence}\n" for q in _no_homolog_queries(5, 700, seed=9)))
    result = runner.invoke(app, ["search", str(store.root), "--fasta", str(queries), "-k", "5", "-f", "blast6",
                                 "--evalue", "1e-5"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines() if not line.startswith("#")]
    assert rows and all(float(row[10]) <= 1e-5 for row in rows) and {row[0] for row in rows} == {"real"}
