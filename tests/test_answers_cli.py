"""Answers read the same everywhere: k and rank, formats that follow their specs, info's --format, .bed9 tracks."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from genoembed.cli import app

runner = CliRunner()
CHROM = "NC_000932.1"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _tsv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


def test_k_counts_loci_and_sql_ranks_are_the_screen_ranks(chloroplast_store):
    root = chloroplast_store.root
    result = invoke("search", root, "--region", f"{CHROM}:90001-91000", "--exclude-self", "-k", "5", "-f", "tsv",
                    "--no-annotate", "--evalue", "1e9")
    assert result.exit_code == 0, result.output
    shown = _tsv(result.stdout)
    assert [int(row["rank"]) for row in shown] == [1, 2, 3, 4, 5]  # five loci, not five tiles merged into fewer
    saved = invoke("sql", root, "SELECT rank, chrom, start, \"end\", strand FROM hits ORDER BY rank", "-f", "tsv")
    assert saved.exit_code == 0, saved.output
    assert [(r["rank"], r["start"], r["end"], r["strand"]) for r in _tsv(saved.stdout)] == \
        [(r["rank"], r["start"], r["end"], r["strand"]) for r in shown]
    tiles = _tsv(invoke("search", root, "--region", f"{CHROM}:90001-91000", "--exclude-self", "-k", "5", "-f", "tsv",
                        "--no-annotate", "--tiles", "--evalue", "1e9").stdout)
    assert len(tiles) == 5 and "tiles" not in tiles[0]


def test_small_evalues_print_in_scientific_notation(chloroplast_store):
    result = invoke("search", chloroplast_store.root, "--region", f"{CHROM}:90001-91000", "-k", "1", "-f", "tsv",
                    "--no-annotate", "--no-save")
    value = _tsv(result.stdout)[0]["score_evalue"]
    assert "e-" in value and float(value) > 0  # 3.45e-07, not 0.0000


def test_info_honours_format(chloroplast_store):
    root = chloroplast_store.root
    rows = _tsv(invoke("info", root, "-f", "tsv").stdout)
    fields = {row["field"]: row["value"] for row in rows}
    assert fields["tiles"] == str(chloroplast_store.num_tiles) and fields["provenance.tiling.window"] == "1000"
    line = invoke("info", root, "-f", "jsonl").stdout
    assert len(line.strip().splitlines()) == 1 and json.loads(line)["tiles"] == chloroplast_store.num_tiles
    refused = invoke("info", root, "-f", "parquet")
    assert refused.exit_code == 2 and "use --format json or tsv" in refused.output


def test_track_takes_bed9_from_the_suffix(chloroplast_store, tmp_path):
    out = tmp_path / "hits.bed9"
    result = invoke("track", chloroplast_store.root, "-r", f"{CHROM}:90001-91000", "-o", out)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in out.read_text().splitlines() if not line.startswith(("track", "#"))]
    assert rows and all(len(row) == 9 for row in rows)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_is_a_document_and_jsonl_lines_across_chunks(chloroplast_store, tmp_path, fmt, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["genoembed.cli.search"], "QUERY_BATCH", 1)  # two chunks of output
    result = invoke("search", chloroplast_store.root, "-r", f"{CHROM}:1-1000", "-r", f"{CHROM}:5001-6000", "-k", "2",
                    "--tiles", "-f", fmt, "--no-annotate", "--no-save", "--evalue", "1e9")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout) if fmt == "json" else [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["rank"] for row in rows] == [1, 2, 1, 2]


def test_gene_finder_gff3_features_are_named_by_their_id(tmp_path):
    from genoembed.gff import read_gff3

    gff = tmp_path / "prodigal.gff3"
    gff.write_text("##gff-version 3\n"
                   f"{CHROM}\tProdigal_v2.6.3\tCDS\t101\t400\t30.1\t+\t0\tID=1_1;partial=00;start_type=ATG\n"
                   f"{CHROM}\tx\tCDS\t501\t900\t.\t-\t0\tID=cds2;locus_tag=ATCG0001\n"
                   f"{CHROM}\tx\tgene\t1001\t1900\t.\t+\t.\tID=gene3;gene=psbA;Name=psbA-named\n")
    names = read_gff3(gff).column("name").to_pylist()
    assert names == ["1_1", "ATCG0001", "psbA-named"]


def test_search_aliases_query_contigs_like_annotate(chloroplast_store, tmp_path):
    bed = tmp_path / "peaks.bed"
    bed.write_text("chrC\t90000\t91000\tpeak\t0\t+\n")
    plain = invoke("search", chloroplast_store.root, "--bed", bed, "--no-save")
    assert plain.exit_code == 2 and "contig 'chrC'" in plain.output
    named = _tsv(invoke("search", chloroplast_store.root, "--bed", bed, "--alias", f"chrC={CHROM}", "-f", "tsv",
                        "--no-annotate", "--no-save", "--exclude-self", "-k", "2", "--evalue", "1e9").stdout)
    assert named and all(row["query_chrom"] == CHROM and not (int(row["start"]) < 91000 and 90000 < int(row["end"]))
                         for row in named)  # the store's name, so --exclude-self knew the query's own region
    auto = _tsv(invoke("search", chloroplast_store.root, "-r", "NC_000932:90001-91000", "--auto-alias", "-f", "tsv",
                       "--no-annotate", "--no-save", "-k", "1", "--tiles").stdout)
    assert auto[0]["query_chrom"] == CHROM and auto[0]["start"] == "90000"


def test_feature_type_that_matches_nothing_says_so(tmp_path):
    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.tiles import TilingSpec

    from conftest import CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK

    store = index(CHLOROPLAST_FASTA, tmp_path / "s", embedder=KmerEmbedder(k=4), tiling=TilingSpec(strands="+"),
                  annotations=[CHLOROPLAST_GENBANK])
    result = invoke("search", store.root, "-r", f"{CHROM}:90001-91000", "--feature-type", "exon_typo", "--no-save")
    assert result.exit_code == 2 and "matches no feature" in result.output and "gene" in result.output
    bare = invoke("search", tmp_path / "s", "-r", f"{CHROM}:90001-91000", "--feature-type", "gene", "--no-save")
    assert bare.exit_code == 0


def test_search_progress_on_request_after_two_seconds(chloroplast_store, monkeypatch):
    import itertools
    import sys
    import time

    ticks = itertools.count(0, 3)  # every clock reading 3 s after the last: each batch "takes" over 2 s
    monkeypatch.setattr(time, "monotonic", lambda: float(next(ticks)))
    monkeypatch.setattr(sys.modules["genoembed.cli.search"], "QUERY_BATCH", 1)
    args = ["search", chloroplast_store.root, "-r", f"{CHROM}:1-1000", "-r", f"{CHROM}:5001-6000", "-r",
            f"{CHROM}:9001-10000", "--no-save", "-f", "tsv"]
    shown = invoke(*args, "--progress")
    assert shown.exit_code == 0, shown.output
    assert "searched 1 queries" in shown.stderr and "searched 3 queries" in shown.stderr
    assert "searched" not in invoke(*args).stderr  # not a terminal, not asked: silent
    assert "searched" not in invoke(*args, "--progress", "--quiet").stderr


def test_rerunning_index_says_up_to_date_and_the_same_fasta_is_not_appended_twice(tmp_path):
    from conftest import PLASMID_FASTA

    out = tmp_path / "s"
    options = ["--output", out, "--model", "kmer:3", "--window", "500", "--stride", "250", "--strands", "+"]
    tiles = len(range(0, 9609 - 500 + 1, 250)) + 1  # a tile every 250 bp, and one ending at the contig's end
    first = invoke("index", "--fasta", PLASMID_FASTA, *options)
    assert first.exit_code == 0 and first.stdout.startswith(f"indexed {tiles} tiles into ")
    again = invoke("index", "--fasta", PLASMID_FASTA, *options)
    assert again.exit_code == 0 and "already indexed (same sha256): up to date" in again.stderr
    assert again.stdout.startswith("up to date: nothing indexed; ") and f"holds {tiles} tiles of NC_005816" in again.stdout
    summary = json.loads(invoke("index", "--fasta", PLASMID_FASTA, *options, "-f", "json").stdout)
    assert (summary["indexed"], summary["tiles"]) == (0, tiles)
    renamed = tmp_path / "other_name.fna"
    renamed.write_bytes(PLASMID_FASTA.read_bytes())
    copy = invoke("index", "--fasta", renamed, *options, "--append")
    assert copy.exit_code == 2 and "already present (same sha256) as genome 'NC_005816'" in copy.output
    import genoembed

    with _captured_log() as records:
        genoembed.index(PLASMID_FASTA, out, embedder=genoembed.get_embedder("kmer:3"),
                        tiling=genoembed.TilingSpec(window=500, stride=250, strands="+"))
    assert any("up to date" in record.getMessage() for record in records)


def _captured_log():
    import contextlib
    import logging

    @contextlib.contextmanager
    def capture():
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("genoembed")
        logger.addHandler(handler)
        try:
            yield records
        finally:
            logger.removeHandler(handler)

    return capture()


def test_extras_are_named_by_one_helper_and_help_keeps_brackets():
    import tomllib
    from pathlib import Path

    from genoembed.errors import MissingExtraError, missing_extra

    error = missing_extra("alignment evidence", "align", "parasail")
    assert isinstance(error, MissingExtraError)
    assert "pip install 'genoembed[align]'" in str(error) and "'genoembed[all]'" in str(error)
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = set(extras["all"][0].split("[")[1].rstrip("]").split(","))
    assert named == set(extras) - {"all", "test", "gpu"}  # every feature extra, nothing else
    index_help = " ".join(invoke("index", "--help").output.split())  # wrapped lines joined
    assert "pip install 'genoembed[dist]'" in index_help  # Rich markup ate "[dist]" before
    assert "[default: 1000" in index_help and "[default: 500" in index_help and "aa:K" in index_help
    assert "protein" in index_help


def test_explain_and_variant_outputs_honour_the_umask(chloroplast_store, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        result = invoke("explain", chloroplast_store.root, "-r", f"{CHROM}:20001-21000", "--hit", "1", "-o",
                        tmp_path / "why", "--no-plot")
        assert result.exit_code == 0, result.output
        written = sorted(tmp_path.glob("why.*"))
        assert written and all(stat.S_IMODE(path.stat().st_mode) == 0o644 for path in written)  # was 0600
    finally:
        os.umask(previous)


def test_api_takes_evalue_and_min_score(chloroplast_store):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genoembed.serve import ServedStore, create_app

    client = TestClient(create_app({"chloro": ServedStore("chloro", chloroplast_store.root)}))
    region = f"{CHROM}:90001-91000"
    every = client.post("/search", json={"regions": [region], "k": 10, "exclude_self": True, "annotate": False})
    assert every.status_code == 200, every.text
    assert len(every.json()["rows"]) == 10  # no cut-off unless asked: clients asking for k rows get k
    strict = client.post("/search", json={"regions": [region], "k": 10, "exclude_self": True, "annotate": False,
                                          "evalue": 1e-3}).json()["rows"]
    assert 0 < len(strict) < 10 and all(row["score_evalue"] <= 1e-3 for row in strict)  # the ycf2 copy stays
    high = client.post("/search", json={"regions": [region], "k": 10, "annotate": False, "min_score": 0.99}).json()
    assert high["rows"] and all(row["score"] >= 0.99 for row in high["rows"])


def test_annotations_and_hit_views_share_column_names(tmp_path):
    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.sql import run_sql
    from genoembed.tiles import TilingSpec

    from conftest import CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK

    store = index(CHLOROPLAST_FASTA, tmp_path / "s", embedder=KmerEmbedder(k=4), tiling=TilingSpec(strands="+"),
                  annotations=[CHLOROPLAST_GENBANK])
    assert invoke("search", store.root, "-r", f"{CHROM}:1-1000", "-k", "2", "-f", "tsv").exit_code == 0
    names = ("feature_type", "feature_name", "feature_id")
    for view in ("annotations", "hit_features", "hit_nearest"):
        assert set(names) <= set(run_sql(store, f"SELECT * FROM {view} LIMIT 1").column_names), view
    old = run_sql(store, "SELECT type, name, feature_id FROM annotations WHERE name = 'psbA' AND type = 'gene'")
    new = run_sql(store, "SELECT feature_type, feature_name, feature_id FROM annotations WHERE feature_name = 'psbA' "
                         "AND feature_type = 'gene'")
    assert old.num_rows == 1 and old.to_pylist()[0]["feature_id"] == new.to_pylist()[0]["feature_id"]
    joined = run_sql(store, "SELECT f.feature_id, f.feature_feature_id FROM hit_features f")
    assert joined.num_rows and joined.column(0).to_pylist() == joined.column(1).to_pylist()  # old name kept


def test_api_json_is_one_document_and_jsonl_lines(chloroplast_store):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genoembed.serve import ServedStore, create_app

    client = TestClient(create_app({"chloro": ServedStore("chloro", chloroplast_store.root)}))
    body = {"regions": [f"{CHROM}:1-1000", f"{CHROM}:5001-6000"], "k": 2, "annotate": False}
    document = client.post("/search?format=json", json=body)
    lines = client.post("/search?format=jsonl", json=body)
    assert lines.status_code == 200 and lines.headers["content-type"].startswith("application/jsonl")
    assert [json.loads(line) for line in lines.text.splitlines()] == document.json()["rows"]
    sql = client.post("/sql?format=jsonl", json={"query": "SELECT 1 AS one UNION ALL SELECT 2"})
    assert [json.loads(line)["one"] for line in sql.text.splitlines()] == [1, 2]


def test_track_api_and_screen_rank_the_same_loci(chloroplast_store, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genoembed.serve import ServedStore, create_app

    region = f"{CHROM}:90001-91000"
    screen = _tsv(invoke("search", chloroplast_store.root, "-r", region, "-k", "4", "--exclude-self", "-f", "tsv",
                         "--no-annotate", "--no-save", "--evalue", "1e9").stdout)
    want = [(row["rank"], row["start"], row["end"]) for row in screen]
    out = tmp_path / "hits.bed"
    assert invoke("track", chloroplast_store.root, "-r", region, "-k", "4", "--exclude-self", "-o", out).exit_code == 0
    track = [line.split("\t") for line in out.read_text().splitlines() if not line.startswith(("track", "#"))]
    assert sorted((f[3].split("#")[1], f[1], f[2]) for f in track) == sorted(want)
    client = TestClient(create_app({"chloro": ServedStore("chloro", chloroplast_store.root)}))
    rows = client.post("/search", json={"regions": [region], "k": 4, "exclude_self": True, "annotate": False}).json()
    assert [(str(r["rank"]), str(r["start"]), str(r["end"])) for r in rows["rows"]] == want
